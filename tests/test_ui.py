"""`rlkit ui`: Aim's UI on a temporary repo, bound to 127.0.0.1 on a free port, serving its page and its
API (which lists the run); after Ctrl-C no process of the server is left. Only 127.0.0.1 is contacted.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from rlkit.lib.tracking import aim as track

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=30) as response:
        assert response.status == 200
        return response.read()


@pytest.fixture
def repo(tmp_path) -> tuple[Path, str]:
    """A repo holding one closed, indexed run with a reward curve; returns (repo path, run hash)."""
    tracker = track.AimTracker(tmp_path / ".aim", experiment="ui-test", name="ui-run")
    for step in range(1, 6):
        tracker.metrics({"reward": step / 10}, step=step, stage="rl")
    tracker.close()
    return tmp_path / ".aim", tracker.hash


def test_ui_serves_page_and_api_on_localhost_and_leaves_nothing_behind(repo):
    path, run_hash = repo
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "rlkit", "ui", "--repo", str(path), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = []
    try:
        lines = []
        for line in ui.stdout:  # blocks until the server answers (rlkit prints the URL then) or ui exits
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert f"http://{HOST}:{port}" in lines[-1], "".join(lines)
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "aim up should run as a child process"
        assert b"<html" in get(port, "/").lower()  # the UI's page
        assert run_hash.encode() in get(port, "/api/runs/search/run/?q=")  # the runs API lists the run
        assert b'"ui-test"' in get(port, "/api/experiments/")
        listening = [c.laddr for p in server for c in _connections(p) if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == HOST for addr in listening)  # bound to this machine only
        groups = {os.getpgid(p.pid) for p in server}
        assert os.getpgid(ui.pid) not in groups  # a group of its own, so rlkit can stop all of it

        ui.send_signal(signal.SIGINT)  # what Ctrl-C does
        assert ui.wait(timeout=60) == 0
        printed = "".join(lines) + ui.stdout.read()
        assert "Repo" not in printed and "Running Aim UI" not in printed, printed  # no banner with a repr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in server):
            time.sleep(0.1)
        assert not [p.pid for p in server if _alive(p)]
        left = [p for p in psutil.process_iter() if _pgid(p.pid) in groups and _alive(p)]
        assert not left, [(p.pid, p.status(), p.cmdline()) for p in left]
        with socket.socket() as s:
            assert s.connect_ex((HOST, port)) != 0  # nothing listens any more
    finally:  # a failed test must not leave a server either
        if ui.poll() is None:
            ui.kill()
        for p in server:
            if _alive(p):
                p.kill()


def test_ui_on_a_missing_repo_is_a_one_line_error(cli, tmp_path):
    result = cli("ui", "--repo", tmp_path / "nothing" / ".aim", "--port", free_port())
    assert result.exit_code == 1 and "no Aim repository" in result.output


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _connections(p: psutil.Process):
    try:
        return p.net_connections(kind="tcp")
    except psutil.Error:
        return []
