"""Profiles and overrides that replace or delete: `defaults:` + `!replace` in a file, `key=!replace {...}` and
`~key` on the command line, and the headline experiment run offline from its header, verbatim."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from experiments import PRETRAIN, TOKENIZER, experiment_text

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"  # what the profile's ../shared/data/gsm8k means from ROOT

BASE = experiment_text({"tokenizer": TOKENIZER,
                        "pretrain": {**PRETRAIN, "data": {"source": "arithmetic", "args": {"size": 500, "operands": 3}}}},
                       name="base")


def checked(cli, *args) -> dict:
    """`rlkit check ARGS`'s resolved experiment, as data."""
    result = cli("check", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def one_line_error(result, start: str) -> None:
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(f"error: {start}"), \
        result.stderr


def test_a_profile_merges_over_its_defaults_and_replace_drops_the_keys_it_leaves_out(cli, write_yaml):
    write_yaml(BASE, "base.yaml")
    profile = write_yaml("""\
        defaults: base.yaml
        name: small
        stages:
          pretrain:
            steps: 2
            data: {source: arithmetic, args: !replace {size: 100}}
        """, "small.yaml")
    cfg = checked(cli, profile)
    assert cfg["name"] == "small" and cfg["experiment"] == "small"
    assert cfg["stages"]["pretrain"]["steps"] == 2  # merged: the base's other keys stay
    assert cfg["stages"]["pretrain"]["total_batch_tokens"] == PRETRAIN["total_batch_tokens"]
    assert cfg["stages"]["pretrain"]["data"]["args"] == {"size": 100}  # replaced: operands is gone
    assert cfg["stages"]["tokenizer"]["data"]["args"] == TOKENIZER["data"]["args"]


def test_overrides_replace_a_mapping_or_delete_a_key(cli, write_yaml):
    path = write_yaml(BASE)
    merged = checked(cli, path, "stages.pretrain.data.args={size: 100}")
    assert merged["stages"]["pretrain"]["data"]["args"] == {"size": 100, "operands": 3}  # `=` merges, as before
    replaced = checked(cli, path, "stages.pretrain.data.args=!replace {size: 100}")
    assert replaced["stages"]["pretrain"]["data"]["args"] == {"size": 100}
    deleted = checked(cli, path, "~stages.pretrain.data.args.operands", "~stages.tokenizer")
    assert deleted["stages"]["pretrain"]["data"]["args"] == {"size": 500}
    assert list(deleted["stages"]) == ["pretrain"]


@pytest.mark.parametrize("files, args, error", [
    ({"p.yaml": "defaults: nowhere.yaml\nname: p\n"}, [], "p.yaml: defaults: nowhere.yaml: no such file"),
    ({"p.yaml": "defaults: q.yaml\nname: p\n", "q.yaml": "defaults: p.yaml\nname: q\n"}, [],
     "p.yaml: defaults: includes itself"),
    ({"p.yaml": "defaults: {file: base.yaml}\nname: p\n"}, [], "p.yaml: defaults: expected a file name or a list"),
    ({}, ["~stages.pretrain.nope"], "command line: ~stages.pretrain.nope: there is no 'stages.pretrain.nope'"),
    ({}, ["~seed"], "command line: ~seed: 'seed' is part of the schema and cannot be deleted; set it instead"),
])
def test_profile_and_override_mistakes_are_one_line(cli, write_yaml, files, args, error):
    base = write_yaml(BASE, "base.yaml")
    for name, text in files.items():
        write_yaml(text, name)
    path = base.parent / next(iter(files), "base.yaml")
    result = cli("check", path, *args)
    one_line_error(result, f"{path.parent}/{error}" if files else error)


def test_the_headline_experiment_runs_offline_from_its_header(cli, monkeypatch, tmp_path):
    """gsm8k.yaml's header names its offline command; that command, copied verbatim, runs every stage on the
    shared GSM8K files (tiny sizes and step counts appended). The hub's error line names the same command."""
    header = [line for line in (ROOT / "experiments/gsm8k.yaml").read_text().splitlines() if line.startswith("#")]
    (command,) = [line.strip("# ").split("  #")[0].strip() for line in header if "offline" in line and "rlkit run" in line]
    assert GSM8K.is_dir()
    monkeypatch.chdir(ROOT)  # paths in the profile are relative to where rlkit runs, as the header says
    hub = cli("run", "experiments/gsm8k.yaml", f"run_dir={tmp_path / 'hub'}", "tracking.enabled=false")
    assert hub.exit_code == 1 and f"offline? {command} " in hub.stderr, hub.stderr
    tiny = ["model.depth=1", "model.seq_len=1024", "stages.tokenizer.vocab_size=300", "stages.tokenizer.max_chars=50000",
            "stages.pretrain.steps=1", "stages.pretrain.total_batch_tokens=1024", "stages.pretrain.device_batch_size=1",
            "stages.pretrain.eval_tokens=1024", "stages.midtrain.steps=1", "stages.midtrain.total_batch_tokens=1024",
            "stages.midtrain.device_batch_size=1", "stages.sft.steps=1",
            "stages.sft.examples_per_step=4", "stages.sft.eval_examples=2", "stages.rl.steps=1",
            "stages.rl.examples_per_step=1", "stages.rl.rollout.samples=2", "stages.rl.rollout.max_new_tokens=8",
            "stages.rl.eval.examples=2", "stages.rl.eval.k=2", "stages.eval_rl.examples=2",
            "stages.eval_rl.tasks.0.max_new_tokens=8", f"run_dir={tmp_path / 'run'}", "tracking.enabled=false"]
    result = cli(*shlex.split(command)[1:], *tiny)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert re.search(r"\[pretrain\] 1 steps x 1,024 tokens", result.stdout)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == \
        ["eval_rl", "midtrain", "pretrain", "rl", "sft", "tokenizer"]
