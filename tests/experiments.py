"""Tiny experiments for the tests, written from Python dicts instead of inline YAML.

A test names the stage entries it runs, starting from the tiny entries below and overriding what it needs:

    experiment_text({"tokenizer": TOKENIZER, "pretrain": {**PRETRAIN, "steps": 3}}, name="t", seed=1)

Top-level keys default to a depth-1 float32 model on the CPU with tracking off (TOP); a key given as None is
left out of the file, so the experiment's own default applies (e.g. seed=None: the config's seed).
The `experiment` fixture in conftest.py writes such a file under the test's tmp_path.
"""
from pathlib import Path

import yaml


def data(size: int = 500, **args) -> dict:
    """The arithmetic text source with `size` problems (and any further args)."""
    return {"source": "arithmetic", "args": {"size": size, **args}}


def task(size: int = 500, **args) -> dict:
    """The arithmetic task with `size` problems (and any further args, e.g. operands=3)."""
    return {"name": "arithmetic", "args": {"size": size, **args}}


def adamw(lr: float) -> dict:
    """AdamW at learning rate `lr`."""
    return {"name": "adamw", "args": {"lr": lr}}


TOKENIZER = {"vocab_size": 300, "max_chars": 100000, "data": data(500)}

PRETRAIN = {"data": data(500), "steps": 4, "total_batch_tokens": 1024, "device_batch_size": 8,
            "optimizer": adamw(0.005), "eval_every": 0, "eval_tokens": 1024}

MIDTRAIN = {"tasks": [task(500)], "steps": 10, "total_batch_tokens": 1024, "device_batch_size": 8,
            "optimizer": adamw(0.003), "log_every": 5}

SFT = {"task": task(500), "steps": 2, "examples_per_step": 8, "device_batch_size": 8, "optimizer": adamw(0.003),
       "eval_examples": 0, "log_every": 1}

RL = {"task": task(100), "rewards": [{"name": "gsm8k"}], "optimizer": adamw(0.003),
      "rollout": {"samples": 2, "max_new_tokens": 16}, "steps": 2, "examples_per_step": 2, "device_batch_size": 4,
      "save_every": 0, "eval": {"every": 0, "examples": 4, "k": 2}}

EVAL = {"kind": "eval", "examples": 6, "tasks": [{**task(300), "max_new_tokens": 8}]}

TOP = {"name": "tiny", "seed": 0, "device": "cpu", "model": {"depth": 1, "seq_len": 128, "dtype": "float32"},
       "tracking": {"enabled": False}}


def without(entry: dict, *keys: str) -> dict:
    """A copy of a stage entry (or any dict) with `keys` left out."""
    return {k: v for k, v in entry.items() if k not in keys}


def experiment_dict(stages: dict, **top) -> dict:
    """The experiment as a dict: TOP updated by `top` (None drops a key), then `stages` in the order given."""
    merged = {**TOP, **top}
    return {**{k: v for k, v in merged.items() if v is not None}, "stages": stages}


def experiment_text(stages: dict, comment: str = "", **top) -> str:
    """The experiment's YAML text; `comment` becomes a first line `# comment` saying what the run is for."""
    text = yaml.safe_dump(experiment_dict(stages, **top), sort_keys=False, default_flow_style=None, width=120)
    return f"# {comment}\n{text}" if comment else text


def write_experiment(path: Path, stages: dict, comment: str = "", **top) -> Path:
    """Write experiment_text(stages, comment, **top) to `path` (its folder made if needed) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(experiment_text(stages, comment, **top))
    return path


def builtin_tools() -> dict:
    """The built-in tools ({name: tool}), through the real plugin manager and their entry points."""
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables["tool"]


def builtin_envs() -> dict:
    """The built-in envs ({name: factory}), through the real plugin manager and their entry points."""
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables["env"]
