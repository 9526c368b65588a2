"""parallel: the strategy choice, its up-front checks and its one-process behaviour, without launching ranks
(tests/test_fsdp.py runs them)."""
import functools

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.checkpoint import checkpoint

from experiments import PRETRAIN, TOKENIZER, write_experiment

from rlkit.core import pipeline
from rlkit.core.errors import RlkitError
from rlkit.core.parallelism import Parallelism
from rlkit.lib.training import memory
from rlkit.lib.training.parallel import Strategy
from rlkit.plugins.models.gpt_model import GPT, GPTConfig


def experiment(tmp_path, optimizer="adamw"):
    pretrain = {**PRETRAIN, "optimizer": {"name": optimizer, "args": {}}}
    return write_experiment(tmp_path / "exp.yaml", {"tokenizer": TOKENIZER, "pretrain": pretrain})


def test_ddp_is_the_default_and_fsdp_is_chosen_per_run(tmp_path):
    cfg, _ = pipeline.prepare(experiment(tmp_path), [], [])
    assert dict(cfg.parallel) == {"strategy": "ddp", "activation_checkpointing": False, "cpu_offload": False}
    cfg, _ = pipeline.prepare(experiment(tmp_path), ["parallel.strategy=fsdp", "parallel.cpu_offload=true"], [])
    assert cfg.parallel.strategy == "fsdp" and cfg.parallel.cpu_offload is True


def test_an_unknown_strategy_is_one_line_naming_the_valid_ones(tmp_path):
    with pytest.raises(RlkitError, match=r"parallel.strategy: 'zero3' is not valid \(valid: ddp, fsdp\)"):
        pipeline.prepare(experiment(tmp_path), ["parallel.strategy=zero3"], [])


@pytest.mark.parametrize("override, line", [
    ("device=CPU", r"^\S+exp.yaml: device: 'CPU' is not valid \(valid: auto, cpu, cuda, mps\)$"),
    ("model.dtype=fp16", r"^\S+exp.yaml: model.dtype: 'fp16' is not valid \(valid: auto, float32, bfloat16\)$"),
    ("model.compile=maybe", r"^\S+exp.yaml: model.compile: 'maybe' is not valid \(valid: auto, true, false\)$"),
    ("model.seq_len=0", r"^\S+exp.yaml: model.seq_len: 0 must be at least 1$"),
])
def test_top_level_choices_and_bounds_are_one_line_at_load(tmp_path, override, line):
    """Declared on the experiment's own fields (one_of, bounded) and checked as the file loads, like a stage's."""
    with pytest.raises(RlkitError, match=line):
        pipeline.prepare(experiment(tmp_path), [override], [])


def test_compile_given_as_a_boolean_is_accepted_and_kept_as_given(tmp_path):
    """model.compile=True arrives as the text 'True': checked lower-cased, stored as given (so a run saved
    before resumes with the same override)."""
    cfg, _ = pipeline.prepare(experiment(tmp_path), ["model.compile=True"], [])
    assert cfg.model.compile == "True"


def test_muon_under_fsdp_is_refused_in_one_line_naming_adamw(tmp_path):
    pipeline.prepare(experiment(tmp_path, "muon"), [], [])  # fine under ddp
    with pytest.raises(RlkitError) as e:
        pipeline.prepare(experiment(tmp_path, "muon"), ["parallel.strategy=fsdp"], [])
    line = str(e.value)
    assert "\n" not in line and "stages.pretrain.optimizer.name: optimizer 'muon'" in line and "use adamw" in line


def test_the_memory_check_is_per_rank_under_fsdp(monkeypatch):
    """1e9 parameters need 16 GiB to train: refused on a 10 GiB device alone or under ddp, fits 1/2 of it."""
    monkeypatch.setattr(memory, "free_memory", lambda device: (10 * memory.GiB, "GPU 0"))
    factory = lambda: None  # noqa: E731
    factory.param_count = lambda vocab, seq_len: 10 ** 9
    with pytest.raises(RlkitError, match=r"about 14.9 GiB .* but GPU 0 has 10.0 GiB free; .*parallel.strategy=fsdp"):
        memory.check_fits_memory(factory, {}, 64, 512, "cuda", "model")
    memory.check_fits_memory(factory, {}, 64, 512, "cuda", "model", shards=2)
    with pytest.raises(RlkitError, match=r"about 7.5 GiB for weights, gradients and optimizer state per rank, "
                                         r"sharded over 2 ranks"):
        monkeypatch.setattr(memory, "free_memory", lambda device: (5 * memory.GiB, "GPU 0"))
        memory.check_fits_memory(factory, {}, 64, 512, "cuda", "model", shards=2)


def test_pipeline_run_without_a_strategy_refuses_what_only_a_strategy_does(tmp_path):
    """Core holds no sharding code: a caller of pipeline.run that passes no strategy gets plain ddp, and one
    line (before any work) when the `parallel:` section asks for more; `rlkit run` passes the library's."""
    for override in ("parallel.activation_checkpointing=true", "parallel.strategy=fsdp"):
        cfg, plugins = pipeline.prepare(experiment(tmp_path), [override], [])
        with pytest.raises(RlkitError, match=r"^parallel: no strategy was passed to pipeline.run .*"
                                             r"parallel=rlkit.lib.training.parallel.Strategy\(cfg.parallel\)"):
            pipeline.run(cfg, plugins)
        assert not (tmp_path / "runs").exists()


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(depth=2, vocab_size=64, seq_len=16))


def loss_and_grads(model, strategy):
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    strategy.prepare(model, optimizer, torch.float32, rollouts=True)
    loss = model(x, x)
    loss.backward()
    optimizer.step()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, optimizer


def test_activation_checkpointing_recomputes_each_block_under_ddp_with_the_same_gradients():
    """One process: fsdp is ddp (nothing sharded), and activation checkpointing wraps every block's forward
    in torch.utils.checkpoint, which changes no number."""
    plain = OmegaConf.create({"strategy": "fsdp", "activation_checkpointing": False, "cpu_offload": False})
    assert Strategy(plain).sharded is False and Strategy(plain).prepare(tiny_gpt(), None, torch.float32, True) is None
    model = tiny_gpt()
    base_loss, base_grads, _ = loss_and_grads(model, Parallelism())
    checkpointed = tiny_gpt()
    loss, grads, _ = loss_and_grads(checkpointed, Strategy(OmegaConf.merge(plain, {"activation_checkpointing": True})))
    assert all(isinstance(b.forward, functools.partial) and b.forward.func is checkpoint
               for b in checkpointed.blocks)
    assert not any(isinstance(b.forward, functools.partial) for b in model.blocks)
    assert loss == base_loss and all(torch.equal(grads[n], g) for n, g in base_grads.items())
