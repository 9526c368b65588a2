"""Reliability, third pass: servers, child processes and whole commands, each a real `python -m rlkit`
subprocess: `rlkit serve` binds before it loads and refuses bad input with 4xx, `rlkit ui`'s server dies with
it even under kill -9, `rlkit export` is all or nothing, and a sweep never skips or doubles a point silently.
docs/reliability.md lists each promise.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from rlkit.lib.tracking import aim as track

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rlkit(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "rlkit", *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def one_line(result, *parts):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def wait_for(predicate, timeout=120.0, what=""):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- rlkit serve -----------------------------------------------------------------------------------------

def test_serve_on_a_busy_port_says_so_before_loading_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = rlkit("serve", tmp_path / "no-such-run", "--port", port, cwd=tmp_path)  # the port is found first
    one_line(result, f"--host 127.0.0.1 --port {port}", "cannot listen there")


def test_serve_refuses_an_empty_api_key(tmp_path, tiny_run):
    one_line(rlkit("serve", tiny_run, "--port", 0, "--api-key", "", cwd=tmp_path), "--api-key is empty")


def test_a_request_nested_too_deep_is_a_400_and_the_server_goes_on(tmp_path, tiny_run):
    log = tmp_path / "log.txt"
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "serve", str(tiny_run), "--port", "0"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: proc.poll() is not None or re.search(PORT, log.read_text()), what="the server")
        url = f"http://127.0.0.1:{re.search(PORT, log.read_text()).group(1)}/v1/chat/completions"
        wait_for(lambda: _answers(url), what="health")
        for depth in (40, 100_000):
            body = '{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + "[" * depth + "]" * depth + "}"
            r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert r.status_code == 400 and "more than 32 deep" in r.json()["error"]["message"], r.text
        ok = httpx.post(url, json={"messages": [{"role": "user", "content": "2 + 5?"}], "max_tokens": 2}, timeout=60)
        assert ok.status_code == 200, ok.text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()


PORT = r":(\d+) \(API"


def _answers(url) -> bool:
    try:
        return httpx.get(url.replace("/v1/chat/completions", "/health"), timeout=5).status_code == 200
    except httpx.TransportError:
        return False


# --- rlkit ui ----------------------------------------------------------------------------------------------

def test_kill_9_of_rlkit_ui_takes_aims_server_down_too(tmp_path):
    tracker = track.AimTracker(tmp_path / ".aim", experiment="ui-test", name="ui-run")
    tracker.metrics({"reward": 0.5}, step=1, stage="rl")
    tracker.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "rlkit", "ui", "--repo", str(tmp_path / ".aim"), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    for line in ui.stdout:
        if "Ctrl-C stops it" in line:
            break
    server = psutil.Process(ui.pid).children(recursive=True)
    assert server and _listening(port)
    ui.kill()  # SIGKILL: rlkit runs no cleanup of its own
    ui.wait()
    wait_for(lambda: not _listening(port) and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                      for p in server), timeout=30, what="the UI to go")


def _listening(port) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- rlkit export ------------------------------------------------------------------------------------------

HOLD_RENAME = """\
import os, pathlib, time
_rename = os.rename

def held(src, dst):
    if ".tmp-export-" in str(src):
        pathlib.Path(os.environ["MARKER"]).write_text("held")
        time.sleep(600)
    _rename(src, dst)

os.rename = held
"""


@pytest.fixture(scope="module")
def exportable(tmp_path_factory):
    """A finished tiny run whose gpt transformers' NanoChat can hold (no learned lambdas)."""
    from conftest import TINY_RUN
    from experiments import write_experiment

    folder = tmp_path_factory.mktemp("exportable")
    write_experiment(folder / "tiny.yaml", TINY_RUN)
    result = rlkit("run", "tiny.yaml", "model.lambdas=false", cwd=folder, timeout=600)
    assert result.returncode == 0, result.stderr
    return folder / "runs" / "tiny"


def test_export_to_a_file_is_one_line(tmp_path, exportable):
    (tmp_path / "model").write_text("mine")
    one_line(rlkit("export", exportable, "model", cwd=tmp_path), "export: model is a file")
    one_line(rlkit("export", exportable, "model/sub", cwd=tmp_path), "is a file", "cannot be made")
    assert (tmp_path / "model").read_text() == "mine"


def test_an_export_killed_before_it_is_complete_leaves_no_model(tmp_path, exportable):
    (tmp_path / "hold.py").write_text(HOLD_RENAME)
    env = {**ENV, "MARKER": str(tmp_path / "marker")}
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "export", str(exportable), "out", "--plugin", "hold.py"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: proc.poll() is not None or (tmp_path / "marker").exists(), what="the export's last step")
    assert proc.poll() is None, proc.stdout.read()
    proc.kill()
    proc.wait()
    assert not (tmp_path / "out").exists()  # only the hidden, incomplete folder
    assert [p.name for p in tmp_path.glob(".out.tmp-export-*")]
    result = rlkit("export", exportable, "out", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] > 0
    assert not list(tmp_path.glob(".out.tmp-export-*"))  # the killed export's leftover is gone


# --- rlkit run --sweep -------------------------------------------------------------------------------------

TOKENIZER = """\
name: tk
tracking: {enabled: false}
stages:
  tokenizer: {vocab_size: 280, max_chars: 5000, data: {source: a_b.txt}}
"""


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    (tmp_path / "a").mkdir()
    for name in ("a/b.txt", "a_b.txt"):
        (tmp_path / name).write_text("The cat sat on the mat. " * 200)
    (tmp_path / "tk.yaml").write_text(TOKENIZER)
    return tmp_path


def test_sweep_points_whose_names_collide_are_refused_before_any_runs(sweep_dir):
    one_line(rlkit("run", "tk.yaml", "--sweep", "stages.tokenizer.data.source=a/b.txt,a_b.txt", cwd=sweep_dir),
             "stages.tokenizer.data.source=a/b.txt", "stages.tokenizer.data.source=a_b.txt", "both named tk-source")
    one_line(rlkit("run", "tk.yaml", "--sweep", "seed=1,1", cwd=sweep_dir), "--sweep seed=1,1", "given twice")
    assert not (sweep_dir / "runs").exists()


def test_a_sweep_never_skips_a_point_whose_folder_ran_other_settings(sweep_dir):
    assert rlkit("run", "tk.yaml", "--sweep", "seed=1,2", cwd=sweep_dir).returncode == 0
    before = (sweep_dir / "runs/tk-seed1/tokenizer/output.json").read_bytes()
    again = rlkit("run", "tk.yaml", "--sweep", "seed=1,2", cwd=sweep_dir)
    assert again.returncode == 0 and again.stdout.count("already finished: skipping") == 2
    one_line(rlkit("run", "tk.yaml", "stages.tokenizer.vocab_size=290", "--sweep", "seed=1,2", cwd=sweep_dir),
             "runs/tk-seed1 already holds a finished run with other settings", "stages.tokenizer.vocab_size")
    assert (sweep_dir / "runs/tk-seed1/tokenizer/output.json").read_bytes() == before


def test_rlkit_compare_runs_as_a_command(tmp_path):
    """`compare` the command once shadowed rlkit.cli.compare the module: every `rlkit compare` was a traceback."""
    one_line(rlkit("compare", "--repo", "nowhere", cwd=tmp_path), "--repo: no Aim repository at nowhere")
