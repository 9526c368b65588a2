"""`rlkit compare`: two tiny runs of one YAML with different seeds, side by side from Aim.

The table shows both runs (name and hash), the final/best of their metrics per stage (equal to what
each run printed), wall times per stage, and the seed as a config difference; --json holds the same
content (rendering it gives the very same table). With no run named, the last two runs of the newest
run's experiment are compared.
"""
import json
import re

import pytest
from typer.testing import CliRunner

from rlkit.cli import comparison as compare_lib

from experiments import PRETRAIN, RL, TOKENIZER, adamw, data, experiment_text, task

TINY = experiment_text(
    {"tokenizer": {**TOKENIZER, "max_chars": 20000, "data": data(300)},
     "pretrain": {**PRETRAIN, "data": data(300), "steps": 3, "total_batch_tokens": 256, "device_batch_size": 2,
                  "optimizer": adamw(0.003), "eval_tokens": 512, "log_every": 1},
     "rl": {**RL, "task": task(300), "optimizer": adamw(0.001), "rollout": {"samples": 2, "max_new_tokens": 6},
            "eval": {"every": 0, "examples": 2, "k": 2}}},
    comment="two-stage tiny run for compare tests: rlkit run tiny.yaml seed=2 name=cmp-s2",
    name="cmp", seed=1, tracking=None)


def invoke(*args):
    from rlkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """(folder, {run name: printed output}) after runs cmp-s1 (seed 1) and cmp-s2 (seed 2) of one YAML."""
    folder = tmp_path_factory.mktemp("compare")
    (folder / "tiny.yaml").write_text(TINY)
    printed = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for seed in (1, 2):
            result = invoke("run", "tiny.yaml", f"seed={seed}", f"name=cmp-s{seed}")
            assert result.exit_code == 0, result.output + repr(result.exception)
            printed[f"cmp-s{seed}"] = result.output
    return folder, printed


def compare_cli(folder, *args):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return invoke("compare", *args)


def final_loss(output: str) -> float:
    return float(re.findall(r"^\[pretrain\] step +\d+/\d+ \| [\d,]+ tok/s \| loss ([\d.]+)", output, re.M)[-1])


def test_table_shows_both_runs_their_metrics_and_the_seed_difference(two_runs):
    folder, printed = two_runs
    result = compare_cli(folder, "cmp-s1", "cmp-s2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    hashes = [(folder / f"runs/{n}/aim_hash").read_text().strip() for n in ("cmp-s1", "cmp-s2")]
    assert lines[0].split() == ["cmp-s1", f"({hashes[0][:8]})", "cmp-s2", f"({hashes[1][:8]})"]
    seed = [line for line in lines if line.split()[:1] == ["seed"]]
    assert len(seed) == 1 and seed[0].split()[1:] == ["1", "2"]
    loss_row = next(line for line in lines if line.startswith("pretrain loss (final / best)"))
    cells = loss_row.removeprefix("pretrain loss (final / best)").split()  # final / best, twice
    assert float(cells[0]) == pytest.approx(final_loss(printed["cmp-s1"]), abs=6e-4)
    assert float(cells[3]) == pytest.approx(final_loss(printed["cmp-s2"]), abs=6e-4)
    assert cells[0] != cells[3]  # different seeds, different runs
    for row in ("pretrain bpb", "rl reward", "rl pass@1", "rl pass@2", "rl delta@1 (final)", "rl completion_len",
                "pretrain wall time (s)", "rl wall time (s)"):
        assert any(line.startswith(row) for line in lines), row
    assert "config differences:" in result.output and re.search(r"^  name +cmp-s1 +cmp-s2$", result.output, re.M)


def test_json_holds_the_same_content(two_runs):
    folder, printed = two_runs
    table = compare_cli(folder, "cmp-s1", "cmp-s2")
    as_json = compare_cli(folder, "cmp-s1", "cmp-s2", "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert compare_lib.render(data) == table.output.rstrip("\n")
    assert [r["name"] for r in data["runs"]] == ["cmp-s1", "cmp-s2"]
    assert {"key": "seed", "values": [1, 2]} in data["config"]
    loss = next(r for r in data["metrics"] if (r["stage"], r["metric"]) == ("pretrain", "loss"))
    assert [v["last_step"] for v in loss["values"]] == [3, 3]
    assert loss["values"][0]["final"] == pytest.approx(final_loss(printed["cmp-s1"]), abs=6e-5)
    assert loss["values"][0]["best"] <= loss["values"][0]["final"]  # best loss = the lowest seen
    assert all(v > 0 for row in data["wall_s"] for v in row["values"])


def test_default_is_the_last_two_runs_of_the_experiment_and_metric_narrows_rows(two_runs):
    folder, _ = two_runs
    data = json.loads(compare_cli(folder, "--json", "--metric", "reward").output)
    assert [r["name"] for r in data["runs"]] == ["cmp-s1", "cmp-s2"]
    assert [r["experiment"] for r in data["runs"]] == ["cmp", "cmp"]  # the YAML's name groups them
    assert [(r["stage"], r["metric"]) for r in data["metrics"]] == [("rl", "reward")]
    by_hash = json.loads(compare_cli(folder, data["runs"][1]["hash"][:10], "cmp-s1", "--json").output)
    assert [r["name"] for r in by_hash["runs"]] == ["cmp-s2", "cmp-s1"]  # a hash prefix names a run too


def test_unknown_run_or_metric_is_one_line_error(two_runs):
    folder, _ = two_runs
    result = compare_cli(folder, "cmp-s1", "cmp-s3")
    assert result.exit_code == 1
    assert result.output.startswith("error: rlkit compare: no run named or hashed 'cmp-s3' (did you mean ")
    assert "'cmp-s1'" in result.output and "'cmp-s2'" in result.output and len(result.output.splitlines()) == 1
    result = compare_cli(folder, "cmp-s1", "cmp-s2", "--metric", "rewardz")
    assert result.exit_code == 1 and "--metric: rewardz not tracked by these runs" in result.output
    result = compare_cli(folder, "--repo", folder / "nowhere")
    assert result.exit_code == 1 and "no Aim repository" in result.output


PICKY_REWARD = '''
import rlkit


def picky(completion, example):
    """Fine on a reference answer (what `rlkit check` tries), raises on a completion without '####'."""
    if "####" not in completion:
        raise ValueError("picky: no '####' in the completion")
    return 1.0


@rlkit.hookimpl
def rlkit_rewards():
    return {"picky": picky}
'''


def test_a_failed_run_is_marked_in_aim_and_on_its_card_and_a_bare_compare_skips_it(two_runs):
    """Runs last in this module: it adds a failed run (the newest) to the shared repository."""
    from aim import Repo

    folder, _ = two_runs
    (folder / "picky.py").write_text(PICKY_REWARD)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = invoke("run", "tiny.yaml", "seed=3", "name=cmp-bad", "stages.rl.rewards=[{name: picky}]",
                        "--plugin", "picky.py")
    assert result.exit_code != 0, result.output
    runs = {r.name: r for r in Repo.from_path(str(folder / ".aim")).iter_runs()}
    assert "cmp-bad" in runs, result.output
    assert runs["cmp-bad"]["status"] == "failed" and "no '####'" in runs["cmp-bad"]["error"]
    assert runs["cmp-s1"]["status"] == runs["cmp-s2"]["status"] == "finished"
    summary = json.loads((folder / "runs/cmp-bad/summary.json").read_text())
    assert summary["status"] == "failed" and "no '####'" in summary["error"]
    assert "**FAILED**" in (folder / "runs/cmp-bad/report.md").read_text()
    bare = compare_cli(folder)
    assert bare.exit_code == 0, bare.output
    assert [w for w in bare.output.splitlines()[0].split() if not w.startswith("(")] == ["cmp-s1", "cmp-s2"]
    assert re.search(r"^status +finished +finished$", bare.output, re.M)
    named = compare_cli(folder, "cmp-s2", "cmp-bad")
    assert re.search(r"^status +finished +failed$", named.output, re.M), named.output
