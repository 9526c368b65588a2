"""Shared fixtures. Tests never download: Hugging Face is forced offline before anything imports it."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Tests use tiny models: one OpenMP thread a process (the rlkit runs they start included). Threads of several
# processes spinning against each other on a small machine cost 4-30x; one each lets pytest-xdist's workers
# share the cores. What is computed is unchanged.
os.environ["OMP_NUM_THREADS"] = "1"

import inspect  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from experiments import PRETRAIN, SFT, TOKENIZER, adamw, data, task, write_experiment  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny models: one intra-op thread avoids OpenMP threads spinning against other processes
    on a small shared machine (measured 4-30x faster under load); what is computed is unchanged."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_file(tmp_path):
    """write_file("sub/x.py", text) -> Path under tmp_path; the text is dedented."""
    def write(name, text):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path
    return write


@pytest.fixture
def write_yaml(write_file):
    """write_yaml(text, name="experiment.yaml") -> Path of the experiment file under tmp_path."""
    def write(text, name="experiment.yaml"):
        return write_file(name, text)
    return write


@pytest.fixture
def experiment(tmp_path):
    """experiment(stages, file="experiment.yaml", comment="", **top) -> Path of a tiny experiment YAML under
    tmp_path, written from dicts by tests/experiments.py (e.g. stages={"tokenizer": TOKENIZER, ...}, seed=1)."""
    def write(stages, file="experiment.yaml", comment="", **top):
        return write_experiment(tmp_path / file, stages, comment, **top)
    return write


@pytest.fixture
def cli():
    """cli("check", path, ...) -> click Result of the real `rlkit` app, stdout and stderr kept apart."""
    from rlkit.cli import app

    # click < 8.2 mixes stderr into output unless told not to; 8.2+ always keeps result.stderr
    separate = "mix_stderr" in inspect.signature(CliRunner.__init__).parameters
    runner = CliRunner(mix_stderr=False) if separate else CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env=env)
    return invoke


@pytest.fixture
def stage_ctx():
    """stage_ctx(experiment_path, entry, run_dir) -> a real StageContext for that entry on CPU in float32
    (autocast is then a no-op), its typed config checked by the real pipeline."""
    import torch

    from rlkit.core import pipeline
    from rlkit.core.context import StageContext
    from rlkit.core.dist import DistInfo
    from rlkit.core.track import Tracker

    def make(path, entry, run_dir):
        cfg, plugins = pipeline.prepare(path, [], [])
        found = {e.name: (i, e) for i, e in enumerate(pipeline.entries(cfg, plugins))}
        index, e = found[entry]
        return StageContext(entry, e.cfg, cfg, index, plugins, run_dir, torch.device("cpu"), torch.float32,
                            DistInfo(), Tracker())
    return make


@pytest.fixture(scope="session")
def doc_example():
    """doc_example("rlkit_stages") -> the first python block of that hook's section in docs/plugins.md: the
    example plugins the docs show are the ones the tests run."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()

    def find(hook):
        start = text.index(f"## `{hook}(")
        end = text.find("\n## ", start + 1)
        return re.findall(r"^```python\n(.*?)^```", text[start:end], re.M | re.S)[0]
    return find


# a tiny chat model for the serving tests: tokenizer, a few pretrain steps, two sft steps
TINY_RUN = {"tokenizer": {**TOKENIZER, "vocab_size": 320, "max_chars": 50000, "data": data(300)},
            "pretrain": {**PRETRAIN, "data": data(300), "optimizer": adamw(0.01), "eval_tokens": 512, "log_every": 2},
            "sft": {**SFT, "task": task(300)}}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run folder of a depth-1 chat model (seq_len 128: 1280 positions to sample), made in-process."""
    from rlkit.core import pipeline

    folder = tmp_path_factory.mktemp("tiny")
    write_experiment(folder / "tiny.yaml", TINY_RUN)
    cfg, plugins = pipeline.prepare(folder / "tiny.yaml", [f"run_dir={folder / 'runs' / 'tiny'}"], [])
    pipeline.run(cfg, plugins)
    return folder / "runs" / "tiny"
