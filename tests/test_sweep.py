"""`rlkit run EXP --sweep ...`: the cross product runs one after another, named after its values, done
points are skipped on a second call, and the lot is compared at the end."""
import pytest

from rlkit.core.errors import RlkitError
from rlkit.cli.sweep import point_name, points

from experiments import RL, TOKENIZER, adamw, data, experiment_text, without

EXPERIMENT = experiment_text(
    {"tokenizer": {**TOKENIZER, "data": data(300)},
     "rl": {**without(RL, "device_batch_size"), "algorithm": {"name": "grpo"}, "optimizer": adamw(0.01),
            "rollout": {"samples": 2, "max_new_tokens": 4}, "eval": {"every": 0, "examples": 2, "k": 1}}},
    comment="tokenizer -> rl on a depth-1 model, swept over algorithms (tests)", name="sw", tracking={"repo": ".aim"})


def test_points_are_the_cross_product_with_derived_names():
    grid = points(["stages.rl.algorithm.name=grpo,rloo", "seed=1,2"])
    name = "stages.rl.algorithm.name"
    assert grid == [[(name, "grpo"), ("seed", "1")], [(name, "grpo"), ("seed", "2")],
                    [(name, "rloo"), ("seed", "1")], [(name, "rloo"), ("seed", "2")]]
    assert point_name("qs", grid[1]) == "qs-grpo-seed2"
    with pytest.raises(RlkitError, match="key=value1,value2"):
        points(["seed"])


def test_sweep_runs_each_point_skips_done_ones_and_compares(cli, write_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(EXPERIMENT)
    result = cli("run", path, "--sweep", "stages.rl.algorithm.name=grpo,rloo", "stages.rl.steps=1")
    assert result.exit_code == 0, result.output + str(result.exception)
    for name in ("sw-grpo", "sw-rloo"):
        assert (tmp_path / "runs" / name / "rl" / "output.json").is_file()
        assert f"{name} (" in result.output  # a column of the comparison: "<name> (<hash>)"
    assert "rlkit sweep: tokenizer shared with sw-grpo" in result.output  # trained once, copied to sw-rloo
    assert (tmp_path / "runs" / "sw-rloo" / "tokenizer" / "output.json").is_file()
    assert "config differences:" in result.output and "stages.rl.algorithm.name" in result.output
    again = cli("run", path, "--sweep", "stages.rl.algorithm.name=grpo,rloo", "stages.rl.steps=1")
    assert again.exit_code == 0
    assert again.output.count("already finished: skipping") == 2


def test_a_bad_point_fails_before_any_runs(cli, write_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("run", write_yaml(EXPERIMENT), "--sweep", "stages.rl.algorithm.name=grpo,nosuch")
    assert result.exit_code == 1 and "nosuch" in (result.output + (result.stderr or ""))
    assert not (tmp_path / "runs").exists()
