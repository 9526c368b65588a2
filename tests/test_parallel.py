"""parallel: the strategy choice and its up-front checks, without launching ranks (tests/test_fsdp.py runs them)."""
import pytest

from experiments import PRETRAIN, TOKENIZER, write_experiment

from rlkit.core import memory, pipeline
from rlkit.core.errors import RlkitError


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
