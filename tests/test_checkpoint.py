"""Checkpoints: exact round trips, atomic saves, damage detection with fallback, pruning, RNG state."""
import json
import os
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from rlkit.core import checkpoint as ckpt
from rlkit.core.checkpoint import (
    latest_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint,
)
from rlkit.core.errors import RlkitError
from rlkit.core.rng import rng_state, set_rng_state


def tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, opt


def train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)  # (B, in), (B, out)
    loss = ((model(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_tensors_and_meta_round_trip_exactly(tmp_path):
    w = torch.randn(5, 3)
    state = {
        "w": w, "tied": w,                       # shared storage
        "wt": w.t(), "row": w[2],                # non-contiguous view, partial view
        "bf16": torch.randn(7).to(torch.bfloat16), "long": torch.arange(6).view(2, 3),
        "scalar": torch.tensor(3.5), "empty": torch.empty(0, 4),
    }
    meta = {"config": {"depth": 4, "lr": 0.02, "name": "x"}, "step": 7, "data": {"epoch": 1, "index": 42},
            "nested": [1, 2.5, None, True]}
    path = save_checkpoint(tmp_path / "pretrain", 7, state, None, meta)
    assert path == tmp_path / "pretrain" / "step_000007"
    assert sorted(os.listdir(path)) == ["meta.json", "model.safetensors"]
    loaded, opt_state, meta2 = load_checkpoint(path)
    assert opt_state is None and meta2 == meta
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(loaded[k], v), k
    record = json.loads((path / "meta.json").read_text())["checkpoint"]
    assert record["step"] == 7
    assert record["files"]["model.safetensors"]["bytes"] == (path / "model.safetensors").stat().st_size
    assert len(record["files"]["model.safetensors"]["sha256"]) == 64


def test_reloaded_linear_gives_identical_outputs(tmp_path):
    model, _ = tiny(0)
    path = save_checkpoint(tmp_path, 1, model.state_dict(), None, {})
    other, _ = tiny(1)
    x = torch.randn(3, 8)
    assert not torch.equal(other(x), model(x))
    state, _, _ = load_checkpoint(path)
    other.load_state_dict(state)
    assert torch.equal(other(x), model(x))


def test_adamw_state_round_trips_and_next_step_is_identical(tmp_path):
    model, opt = tiny(0)
    train_step(model, opt, seed=1)
    path = save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {"step": 1})
    train_step(model, opt, seed=2)                     # the run that never stopped

    resumed, ropt = tiny(5)                            # a fresh process: different init
    state, opt_state, meta = load_checkpoint(path)
    resumed.load_state_dict(state)
    ropt.load_state_dict(opt_state)
    assert meta == {"step": 1}
    assert opt_state["param_groups"][0]["betas"] == (0.9, 0.999)
    train_step(resumed, ropt, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), ropt.state.values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and torch.equal(a["step"], b["step"])
    _, none_opt, _ = load_checkpoint(path, load_optimizer=False)
    assert none_opt is None


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, None, {"step": 1})

    def crash(src, dst):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(ckpt.os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, None, {"step": 2})
    monkeypatch.undo()
    assert not (tmp_path / "step_000002").exists()
    assert latest_checkpoint(tmp_path) == good

    # a hard crash (kill -9) leaves a tmp folder behind: it is ignored, then cleaned by the next save
    leftover = tmp_path / ".tmp-step_000003-999999999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path) == good
    state, _, meta = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(state["w"], torch.ones(3)) and meta == {"step": 1}
    newer = save_checkpoint(tmp_path, 4, {"w": torch.full((3,), 4.0)}, None, {"step": 4})
    assert not leftover.exists()
    assert latest_checkpoint(tmp_path) == newer
    assert sorted(os.listdir(tmp_path)) == ["step_000001", "step_000004"]


def test_truncated_newest_is_detected_and_skipped(tmp_path):
    old = save_checkpoint(tmp_path, 10, {"w": torch.randn(64)}, None, {"step": 10})
    new = save_checkpoint(tmp_path, 20, {"w": torch.randn(64)}, None, {"step": 20})
    f = new / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-17])
    with pytest.raises(RlkitError, match=r"step_000020/model\.safetensors is damaged: .* bytes, expected"):
        load_checkpoint(new)
    messages = []
    assert latest_checkpoint(tmp_path, warn=messages.append) == old
    assert len(messages) == 1
    assert "step_000020" in messages[0] and "model.safetensors" in messages[0] and "using" in messages[0]
    assert str(old) in messages[0]
    with pytest.warns(RuntimeWarning, match="is damaged"):
        assert latest_checkpoint(tmp_path) == old
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path, verify=False) == new  # cheap mode only checks completeness


def test_same_size_corruption_and_bad_meta_are_detected(tmp_path):
    model, opt = tiny()
    train_step(model, opt, 0)
    path = save_checkpoint(tmp_path, 3, model.state_dict(), opt.state_dict(), {})
    f = path / "optimizer.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    load_checkpoint(path, load_optimizer=False)  # the weights alone are fine
    with pytest.raises(RlkitError, match=r"optimizer\.pt is damaged: its sha256"):
        load_checkpoint(path)
    (path / "meta.json").write_text('{"checkpoint": {"fi')
    with pytest.raises(RlkitError, match=r"meta\.json is damaged"):
        load_checkpoint(path)
    messages = []
    assert latest_checkpoint(tmp_path, warn=messages.append) is None
    assert "no complete checkpoint left" in messages[0]
    assert latest_checkpoint(tmp_path / "nowhere") is None
    with pytest.raises(RlkitError, match="stage folder"):
        load_checkpoint(tmp_path)


def test_loading_refuses_pickled_objects(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"state": {}, "param_groups": []}, {})
    torch.save({"evil": Evil()}, path / "optimizer.pt")   # forge a matching record, so only the unpickler stands
    meta = json.loads((path / "meta.json").read_text())
    meta["checkpoint"]["files"]["optimizer.pt"] = ckpt.file_record(path / "optimizer.pt")
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RlkitError, match=r"optimizer\.pt is refused: it holds something other than tensors and "
                                         r"plain values, which rlkit never unpickles \(Weights only load failed\)"):
        load_checkpoint(path)


class Evil:
    pass


def test_bad_inputs_are_refused_before_writing(tmp_path):
    with pytest.raises(RlkitError, match=r"optimizer_state\['param_groups'\]\[0\]\['hook'\] is a Evil"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"param_groups": [{"hook": Evil()}]}, {})
    with pytest.raises(RlkitError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, None, {"t": torch.ones(1)})
    with pytest.raises(RlkitError, match="reserved"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, None, {"checkpoint": 1})
    with pytest.raises(RlkitError, match="step must be an int"):
        save_checkpoint(tmp_path, -1, {"w": torch.ones(1)}, None, {})
    assert not tmp_path.exists() or os.listdir(tmp_path) == []


def test_resaving_a_step_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 5, {"w": torch.zeros(2)}, None, {"v": 1})
    path = save_checkpoint(tmp_path, 5, {"w": torch.ones(2)}, None, {"v": 2})
    state, _, meta = load_checkpoint(path)
    assert torch.equal(state["w"], torch.ones(2)) and meta == {"v": 2}
    assert os.listdir(tmp_path) == ["step_000005"]


def test_rng_state_round_trips_through_json():
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = json.loads(json.dumps(rng_state()))

    def draw():
        return random.random(), random.gauss(0, 1), torch.rand(5), torch.randn(3), np.random.rand(2)
    first = draw()
    draw()
    set_rng_state(state)
    again = draw()
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
    assert np.array_equal(first[4], again[4])
    with pytest.raises(RlkitError, match="set_rng_state"):
        set_rng_state({"torch": "AAAA"})


def test_verify_checkpoint_returns_record(tmp_path):
    path = save_checkpoint(tmp_path, 2, {"w": torch.ones(1)}, None, {"a": 1})
    meta = verify_checkpoint(path)
    assert meta["a"] == 1 and meta["checkpoint"]["step"] == 2
