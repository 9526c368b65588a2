"""Tracking and the report card: a tiny run of every stage lands in Aim, where the SDK finds it at once
(from a fresh process) with the metrics of every stage, equal to what the run printed; its report.md
holds every item of the card with those same values. Smaller checks: the tracker's statistics, the
gradient norm, resuming into the same Aim run, and the progress lines printed off a terminal.
"""
import json
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from rlkit.lib.training import progress as progress_lib
from rlkit.lib.tracking import aim as track
from rlkit.lib.training.loop import grad_norm

from experiments import MIDTRAIN, PRETRAIN, RL, SFT, TOKENIZER, adamw, data, experiment_text, task

TINY = experiment_text(
    {"tokenizer": {**TOKENIZER, "vocab_size": 512, "max_chars": 20000, "data": data(300)},
     "pretrain": {**PRETRAIN, "data": data(300), "steps": 3, "total_batch_tokens": 256, "device_batch_size": 2,
                  "optimizer": adamw(0.003), "eval_tokens": 512, "log_every": 1},
     "midtrain": {**MIDTRAIN, "tasks": [task(300)], "steps": 2, "total_batch_tokens": 256, "device_batch_size": 2,
                  "log_every": 1},
     "sft": {**SFT, "task": task(300), "examples_per_step": 4, "device_batch_size": 4, "init_lr_frac": 1.0,
             "eval_examples": 4, "eval_max_new_tokens": 8},
     "rl": {**RL, "task": task(300), "optimizer": adamw(0.001), "rollout": {"samples": 2, "max_new_tokens": 8}}},
    comment="tiny run of every stage, tracked: rlkit run tiny.yaml", name="tiny", seed=1, tracking=None)
STAGES = ("tokenizer", "pretrain", "midtrain", "sft", "rl")

# read back in a fresh process, as `rlkit compare` would: {metric@stage: [steps, values]}, params, texts
READ_BACK = """
import json, sys
from aim import Repo
repo = Repo.from_path(sys.argv[1])
runs = [r for r in repo.query_runs("run.name == 'tiny-a'", report_mode=0).iter_runs()]
run = runs[0].run
out = {"found": len(runs), "hash": run.hash, "experiment": run.experiment, "hparams": run["hparams"],
       "env": run["env"], "summary": run["summary"], "metrics": {}, "texts": []}
for name, ctx, _ in run.iter_metrics_info():
    steps, cols = run.get_metric(name, ctx).data.view("val").items_list()
    out["metrics"][f"{name}@{ctx.to_dict().get('stage')}"] = [steps, cols[0]]
for name, ctx, _ in run.iter_sequence_info_by_type("aim.text"):
    steps, cols = run.get_text_sequence(name, ctx).data.view("val").items_list()
    out["texts"].append([f"{name}@{ctx.to_dict().get('stage')}", steps, [t.data for t in cols[0]]])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """(folder, printed output, what Aim holds) for one tiny run named tiny-a of the YAML named tiny."""
    from rlkit.cli import app

    folder = tmp_path_factory.mktemp("tracked")
    (folder / "tiny.yaml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = CliRunner().invoke(app, ["run", "tiny.yaml", "name=tiny-a"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    read = subprocess.run([sys.executable, "-c", READ_BACK, str(folder / ".aim")], capture_output=True, text=True,
                          timeout=120)
    assert read.returncode == 0, read.stderr
    return folder, result.output, json.loads(read.stdout.strip().splitlines()[-1])


def printed(output: str, pattern: str) -> list[float]:
    return [float(x) for x in re.findall(pattern, output, re.M)]


def last(aim: dict, metric: str, stage: str) -> float:
    return aim["metrics"][f"{metric}@{stage}"][1][-1]


def test_the_run_is_in_aim_at_once_under_the_yamls_name(tracked):
    folder, _, aim = tracked
    assert aim["found"] == 1
    assert aim["experiment"] == "tiny"  # the YAML's name; the run is named after the resolved name
    assert (folder / "runs/tiny-a/aim_hash").read_text().strip() == aim["hash"]
    assert aim["hparams"]["seed"] == 1 and aim["hparams"]["name"] == "tiny-a"
    assert aim["hparams"]["stages"]["pretrain"]["steps"] == 3
    env = aim["env"]
    assert env["torch"] == str(torch.__version__) and env["world_size"] == 1 and env["device"].startswith("cpu")
    assert set(aim["summary"]) == set(STAGES) and all(aim["summary"][s]["wall_s"] > 0 for s in STAGES)


def test_every_stage_tracked_its_metrics(tracked):
    _, _, aim = tracked
    expected = {"tokenizer": ["vocab_size"], "pretrain": ["loss", "lr_mult", "grad_norm", "tokens_per_s", "mfu", "bpb"],
                "midtrain": ["loss", "lr_mult", "grad_norm", "tokens_per_s", "mfu"],
                "sft": ["loss", "lr_mult", "grad_norm", "tokens_per_s", "mfu", "accuracy"],
                "rl": ["reward", "reward/gsm8k", "adv_std", "completion_len", "loss", "grad_norm", "lr_mult",
                       "rollout_tok_s", "train_tok_s", "mfu", "pass@1", "pass@2"]}
    for stage, names in expected.items():
        for name in names:
            assert f"{name}@{stage}" in aim["metrics"], f"{name} not tracked in {stage}"
    assert aim["metrics"]["loss@pretrain"][0] == [1, 2, 3]  # one point a step, at the step number
    assert aim["metrics"]["pass@1@rl"][0] == [0, 2]  # before and after
    assert all(v > 0 for v in aim["metrics"]["grad_norm@pretrain"][1])
    texts = {name: (steps, values) for name, steps, values in aim["texts"]}
    assert set(texts) == {"samples@sft", "samples@rl"}
    steps, values = texts["samples@rl"]  # sample completions with their rewards at each eval
    assert set(steps) == {0, 2} and all(v.startswith("Q: ") and "\nreward: " in v for v in values)


def test_aim_holds_what_the_run_printed(tracked):
    _, out, aim = tracked
    for stage in ("pretrain", "midtrain", "sft"):
        losses = printed(out, rf"^\[{stage}\] step +\d+/\d+ \| [\d,]+ tok/s \| loss ([\d.]+)")
        assert losses and aim["metrics"][f"loss@{stage}"][1] == pytest.approx(losses, abs=6e-5)
    assert last(aim, "bpb", "pretrain") == pytest.approx(printed(out, r"held-out bits/byte ([\d.]+)")[-1], abs=6e-5)
    assert last(aim, "accuracy", "sft") == pytest.approx(printed(out, r"held-out accuracy .*: ([\d.]+)")[0], abs=6e-4)
    assert last(aim, "vocab_size", "tokenizer") == printed(out, r"\[tokenizer\] vocab (\d+)")[0]
    rewards = printed(out, r"^\[rl\] step +\d+/\d+ \| reward ([\d.-]+)")
    lengths = printed(out, r"^\[rl\] step .*\| len ([\d.]+)")
    assert aim["metrics"]["reward@rl"][1] == pytest.approx(rewards, abs=6e-4)
    assert aim["metrics"]["completion_len@rl"][1] == pytest.approx(lengths, abs=0.06)
    evals = re.findall(r"eval at step (\d+): pass@1 ([\d.]+)(?: \(([-+][\d.]+) ± [\d.]+ vs step 0\))? "
                       r"\| pass@2 ([\d.]+)", out)
    assert [int(s) for s, _, _, _ in evals] == aim["metrics"]["pass@1@rl"][0]
    assert aim["metrics"]["pass@2@rl"][1] == pytest.approx([float(p) for _, _, _, p in evals], abs=6e-4)
    # later evals show the paired change from step 0, which is the difference of the two pass@1 values
    (_, p0, no_change, _), (_, p1, change, _) = evals
    assert no_change == "" and float(change) == pytest.approx(float(p1) - float(p0), abs=1.5e-3)
    assert aim["metrics"]["delta@1@rl"][1] == pytest.approx([float(change)], abs=6e-4)


def test_report_card_has_every_item_with_the_run_values(tracked):
    folder, out, aim = tracked
    card = (folder / "runs/tiny-a/report.md").read_text()
    summary = json.loads((folder / "runs/tiny-a/summary.json").read_text())
    # environment and how to open the run
    for item in ("rlkit", "torch", "device", "world_size", "git_sha"):
        assert re.search(rf"^\| {item} \| .+ \|$", card, re.M), item
    assert f"| torch | {torch.__version__} |" in card
    assert aim["hash"] in card and "rlkit ui --repo" in card
    # the resolved config
    assert "## Resolved config" in card and "name: tiny-a" in card and "seed: 1" in card
    # one row per stage: tokens/s, steps, tokens, wall time, MFU, final loss, bits/byte
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in card.splitlines()
                                  if line.startswith("| ") and line.count("|") == 9)}
    assert set(STAGES) <= set(rows)
    speed, steps, tokens, wall, mfu, loss, bpb = rows["pretrain"]
    assert steps == "3" and tokens == "768"  # 3 steps x 256 tokens
    assert float(wall) == pytest.approx(summary["stages"]["pretrain"]["wall_s"], abs=0.051)
    assert float(speed.replace(",", "")) > 0 and mfu.endswith("%")
    assert float(loss) == pytest.approx(printed(out, r"^\[pretrain\] step +3/3 \| [\d,]+ tok/s \| loss ([\d.]+)")[0], abs=6e-4)
    assert float(bpb) == pytest.approx(last(aim, "bpb", "pretrain"), abs=6e-4)
    for stage in ("midtrain", "sft", "rl"):
        _, steps, tokens, wall, *_ = rows[stage]
        assert steps == "2" and int(tokens.replace(",", "")) > 0
        assert float(wall) == pytest.approx(summary["stages"][stage]["wall_s"], abs=0.051)
    assert rows["tokenizer"][1] == "-"
    assert re.search(r"^- tokens/s \(mean\): rollout [\d,.]+, train [\d,.]+$", card, re.M)  # rl's two phases (under 1,000: decimals)
    # rl: reward first -> last, pass@k before -> after, completion length
    reward = aim["metrics"]["reward@rl"][1]
    assert re.search(rf"- reward: {reward[0]:.4g} \(step 1\) -> {reward[-1]:.4g} \(step 2\)", card)
    assert f"- reward, mean of the first / last 1 steps: {reward[0]:.4g} -> {reward[-1]:.4g}" in card
    p2 = aim["metrics"]["pass@2@rl"][1]
    assert f"- held-out pass@2: {p2[0]:.4g} before -> {p2[-1]:.4g} after" in card
    change = aim["metrics"]["delta@1@rl"][1][-1]
    assert f"- pass@1 change: {change:+.4f} ± " in card
    length = aim["metrics"]["completion_len@rl"][1]
    assert f"- completion length (tokens): {length[0]:.4g} -> {length[-1]:.4g}" in card


def test_resume_continues_the_same_aim_run(tracked):
    folder, _, aim = tracked
    from omegaconf import OmegaConf

    from rlkit.core.dist import DistInfo

    cfg = OmegaConf.create({"name": "tiny-a", "experiment": "tiny", "tracking": {"repo": str(folder / ".aim"),
                                                                               "enabled": True}})
    tracker = track.open_run(cfg, folder / "runs/tiny-a", DistInfo(), resume=True)
    try:
        assert tracker.hash == aim["hash"]
    finally:
        tracker.close()
    assert isinstance(track.open_run(cfg, folder / "runs/tiny-a", DistInfo(rank=1, world_size=2)), track.Tracker)


def test_tracker_keeps_first_last_min_max_mean_per_stage():
    t = track.Tracker()  # what other ranks and untracked runs get: writes nowhere
    for step, (loss, reward) in enumerate([(3.0, 0.1), (2.0, 0.4), (2.5, 0.3)], start=1):
        t.metrics({"loss": torch.tensor(loss)}, step=step, stage="sft")
        t.metrics({"reward": reward}, step=step, stage="rl")
    s = t.stage_stats("sft")["loss"]
    assert (s["first"], s["last"], s["min"], s["max"], s["first_step"], s["last_step"]) == (3.0, 2.5, 2.0, 3.0, 1, 3)
    assert s["mean"] == pytest.approx(2.5)
    assert t.stage_stats("rl")["reward"]["max"] == 0.4 and t.stage_stats("pretrain") == {}
    assert t.hash is None


def test_grad_norm_is_the_l2_norm_of_all_gradients():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])
    model = torch.nn.Module()
    model.a, model.b = a, b
    model.c = torch.nn.Parameter(torch.ones(1))  # no gradient: left out
    assert grad_norm(model).item() == pytest.approx(13.0)  # sqrt(9 + 16 + 144)


def test_progress_prints_a_plain_line_each_tenth_off_a_terminal(capsys, monkeypatch):
    bar = progress_lib.progress("pretrain", total=100)  # pytest's stdout is not a terminal
    assert isinstance(bar, progress_lib.PlainBar)
    with bar:
        for step in range(1, 101):
            bar.update(step, loss=5.0 - step / 100)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[0].startswith("[pretrain] 10/100 (10%) | loss 4.9 | ")
    assert lines[-1].startswith("[pretrain] 100/100 (100%) | loss 4 | ") and lines[-1].endswith("ETA 0s")
    monkeypatch.setenv("RANK", "1")  # other ranks stay quiet
    assert isinstance(progress_lib.progress("pretrain", total=100), progress_lib.NoBar)
    assert not isinstance(progress_lib.progress("pretrain", total=100), progress_lib.PlainBar)


def test_progress_resumed_counts_from_the_start_step(capsys):
    bar = progress_lib.progress("rl", total=20, start=10)
    for step in range(11, 21):
        bar.update(step, reward=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[0].startswith("[rl] 12/20 (60%) | reward 0.5")
    assert lines[-1].startswith("[rl] 20/20 (100%)")


def test_progress_is_a_live_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    bar = progress_lib.progress("sft", total=4)
    assert isinstance(bar, progress_lib.LiveBar)
    with bar:
        for step in range(1, 5):
            bar.update(step, loss=1.0 / step)
    assert bar.bar.tasks[0].completed == 4 and bar.bar.tasks[0].fields["metrics"] == "loss 0.25"


def test_the_matmul_peak_uses_a_smaller_product_where_the_dtype_is_slow():
    """MFU's peak times an n^3 product; a 256^3 probe at 50 ms (bf16 on a CPU without bf16 instructions)
    would make 2048^3 take 25.6 s, so it halves n until the product fits in a second: 512^3 at 0.4 s."""
    from rlkit.lib.training.speed import affordable_size

    assert affordable_size(2048, 0.05) == 512
    assert affordable_size(2048, 0.0005) == 2048  # 0.26 s: fp32 here keeps the whole product
    assert affordable_size(2048, 2.0) == 256  # never below the probe's own size
