"""Sharded checkpoints (rlkit.lib.training.sharded_checkpoint) in one process: the layout, whole weights through
core's load_checkpoint, the optimizer through DCP, damage found, and no pickle ever loaded. Two fsdp ranks
(pieces at real offsets, resumes across world sizes and strategies) are in tests/test_fsdp.py."""
import json
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from rlkit.core import checkpoint as ckpt
from rlkit.core.errors import RlkitError
from rlkit.core.parallelism import Parallelism
from rlkit.lib.training import sharded_checkpoint
from rlkit.lib.training.parallel import Strategy
from rlkit.plugins.models.gpt_model import GPT, GPTConfig

DDP = OmegaConf.create({"strategy": "ddp", "activation_checkpointing": False, "cpu_offload": False})
SHARD = "shard-00001-model-00001-of-00001.safetensors"


def trained(seed=0):
    """A tiny GPT after two AdamW steps (betas a tuple, a weight decay), and the batch it trained on."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(depth=1, vocab_size=64, seq_len=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        model(x, x).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer, x


@pytest.fixture
def saved(tmp_path):
    model, optimizer, x = trained()
    sharded_checkpoint.save(tmp_path / "stage", 2, model, optimizer, {"step": 2})
    return tmp_path / "stage/step_000002", model, optimizer, x


def test_layout_whole_weights_and_optimizer_state_continue_a_run(saved):
    path, model, optimizer, x = saved
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == \
        ["meta.json", f"model/{SHARD}", f"optimizer/{SHARD}"]  # no .metadata pickle, no optimizer.pt
    record = json.loads((path / "meta.json").read_text())["checkpoint"]
    assert set(record["files"]) == {f"model/{SHARD}", f"optimizer/{SHARD}"}
    assert record["optimizer"]["param_groups.lm_head.weight.betas"] == [0.8, 0.95]
    assert ckpt.latest_checkpoint(path.parent) == path and sharded_checkpoint.is_sharded(path)

    state, _, meta = ckpt.load_checkpoint(path)  # what export, eval, chat, serve and the next stage read
    assert meta == {"step": 2} and state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    fresh, _, _ = trained(seed=1)  # other weights, a fresh optimizer with other values
    fresh.load_state_dict(state)
    resumed = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    Strategy(DDP).load_optimizer(path, fresh, resumed, verify=True)
    assert resumed.param_groups[0]["betas"] == (0.8, 0.95) and resumed.param_groups[0]["lr"] == 1e-2
    for a, b in zip(optimizer.param_groups[0]["params"], resumed.param_groups[0]["params"]):
        assert all(torch.equal(optimizer.state[a][k], resumed.state[b][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    for m, opt in ((model, optimizer), (fresh, resumed)):  # one more step: the same weights, bit for bit
        m(x, x).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_a_damaged_shard_is_named_and_latest_checkpoint_skips_it(saved, tmp_path):
    path, model, optimizer, _ = saved
    sharded_checkpoint.save(tmp_path / "stage", 3, model, optimizer, {"step": 3})
    newest = tmp_path / "stage/step_000003"
    with open(newest / "model" / SHARD, "r+b") as f:
        f.truncate(100)
    with pytest.raises(RlkitError, match=rf"^{newest}/model/{SHARD} is damaged: 100 bytes, expected \d+"):
        ckpt.load_checkpoint(newest)
    warned = []
    assert ckpt.latest_checkpoint(tmp_path / "stage", warn=warned.append) == path
    assert "step_000003" in warned[0] and f"model/{SHARD}" in warned[0]


class Payload:
    """What a hostile pickle runs when unpickled: it writes a marker file."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_no_pickle_in_a_sharded_checkpoint_is_ever_loaded(saved, tmp_path):
    """A `.metadata` pickle (what DCP's own FileSystemWriter writes) beside the shards is never opened; a shard
    replaced by a pickle, its hash rewritten to match, is refused with one line; nothing runs either way."""
    path, model, optimizer, _ = saved
    marker = tmp_path / "unpickled"
    for part in ("model", "optimizer"):
        (path / part / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    state, _, _ = ckpt.load_checkpoint(path)
    Strategy(DDP).load_optimizer(path, model, optimizer, verify=True)
    assert state.keys() == model.state_dict().keys() and not marker.exists()

    for part in ("model", "optimizer"):
        shard = path / part / SHARD
        shard.write_bytes(pickle.dumps(Payload(marker)))
        meta = json.loads((path / "meta.json").read_text())
        meta["checkpoint"]["files"][f"{part}/{SHARD}"] = ckpt.file_record(shard)
        (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RlkitError, match=rf"^{path}/model/{SHARD} cannot be read \(") as e:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(e.value)
    with pytest.raises(RlkitError, match=rf"^{path}/optimizer cannot be read into this optimizer \(") as e:
        Strategy(DDP).load_optimizer(path, model, optimizer, verify=True)
    assert "\n" not in str(e.value) and not marker.exists()


def test_a_sharded_optimizer_state_is_refused_by_the_whole_state_reader(saved):
    """Core's own strategy (a pipeline.run caller that passed none) reads whole checkpoints only: one line,
    not a resume that silently drops the optimizer state."""
    path, model, optimizer, _ = saved
    with pytest.raises(RlkitError, match=rf"^{path} holds a sharded optimizer state; load it with "
                                         r"ctx.parallel.load_optimizer"):
        Parallelism().load_optimizer(path, model, optimizer, verify=True)


def test_a_model_state_with_a_non_tensor_is_refused_before_writing(tmp_path):
    """DCP would pickle it (a BYTE_IO item, read back with torch.load(weights_only=False))."""
    model, optimizer, _ = trained()
    state = {**model.state_dict(), "note": "not a tensor"}
    model.state_dict = lambda: state
    with pytest.raises(RlkitError, match=r"holds 'note', a str; a sharded save stores tensors only"):
        sharded_checkpoint.save(tmp_path / "stage", 1, model, optimizer, {})
    assert not (tmp_path / "stage").exists()
