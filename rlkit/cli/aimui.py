"""`rlkit ui`: Aim's web UI on the runs' repository, stopped cleanly on Ctrl-C.

    serve(".aim", host="127.0.0.1", port=43800)   # blocks; prints the URL once it answers

`aim up` spawns children (a database migration, then uvicorn and its
workers), so it is started in a process group of its own: Ctrl-C (or SIGTERM)
reaches rlkit only, and rlkit stops the whole group — SIGTERM, then SIGKILL
for anything still alive after a grace period — so no server is left behind.
The group's leader (SUPERVISE) also stops it if rlkit itself is killed (kill -9).
`aim up` also indexes new and running runs in the background.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from rlkit.cli import hosts
from rlkit.lib.tracking.aimrepo import probe
from rlkit.core.errors import RlkitError

AIM_UP = "import sys; from aim.cli.cli import cli_entry_point; sys.exit(cli_entry_point())"
# The leader of the UI's process group: runs the command after argv[1] (rlkit's pid) and takes the whole group
# down (SIGTERM, then SIGKILL after 10 s) when it gets SIGTERM, or when rlkit dies, even by SIGKILL: Linux's
# PR_SET_PDEATHSIG sends it SIGTERM then, and elsewhere it notices its parent changed within half a second.
SUPERVISE = """
import ctypes, os, signal, subprocess, sys, time
def down(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    end = time.monotonic() + 10
    while child.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, down)
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
child = subprocess.Popen(sys.argv[2:])
while child.poll() is None:
    if os.getppid() != int(sys.argv[1]):
        down()
    time.sleep(0.5)
sys.exit(child.returncode)
"""


def serve(repo: str | Path, host: str = "127.0.0.1", port: int = 43800, ready_timeout: float = 120.0) -> int:
    """Run the UI until Ctrl-C/SIGTERM or until it exits by itself; returns an exit code."""
    hosts.addresses(host, port)  # a name that does not resolve: one line, before anything starts
    if not hosts.is_loopback(host):
        print(f"warning: --host {host} makes the Aim UI reachable from the network: anyone who can reach this "
              "address can read every run's metrics and config (the UI has no login)", file=sys.stderr, flush=True)
    # Ctrl-C (even where a shell started us with SIGINT ignored) and `kill` both stop the server
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc = None
    try:
        proc = start(repo, host, port)
        if not wait_ready(proc, host, port, ready_timeout):
            raise RlkitError(f"rlkit ui: Aim's server did not answer on {host}:{port} within {ready_timeout:.0f}s "
                             f"(exit code {proc.poll()}); is the port in use? try --port")
        print(f"Aim UI for {Path(repo).resolve()}: {url(host, port)}  (Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start(repo: str | Path, host: str, port: int) -> subprocess.Popen:
    """`aim up` on `repo` in a new session (its own process group, led by SUPERVISE, so it dies with rlkit),
    bound to host:port."""
    from aim import Repo

    if not Repo.exists(str(repo)):
        raise RlkitError(f"--repo: no Aim repository at {repo}; run an experiment first (tracking.repo in its "
                         f"YAML says where it goes, default .aim)")
    probe(repo, "--repo")  # a damaged repository: one line here, not aim up's traceback
    if _in_use(host, port):
        raise RlkitError(f"--port: {host}:{port} is already in use; pick another, e.g. --port {port + 1}")
    cmd = [sys.executable, "-c", AIM_UP, "up", "--repo", str(Path(repo).resolve()), "--host", host, "--port", str(port),
           "--workers", "1", "--yes"]
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(os.getpid()), *cmd], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    threading.Thread(target=_forward, args=(proc.stdout,), daemon=True).start()
    return proc


# the lines of `aim up`'s banner: the first shows a Repo object's repr, and rlkit prints the URL itself
AIM_BANNER = ("Running Aim UI on repo", "Aim UI running on", "Open http", "Proxy http", "Press Ctrl+C to exit")


def _forward(stream) -> None:
    """Pass on what `aim up` prints (its warnings and errors) to stderr, less its banner."""
    for line in stream:
        if not any(part in line for part in AIM_BANNER):
            sys.stderr.write(line)
            sys.stderr.flush()


def wait_ready(proc: subprocess.Popen, host: str, port: int, timeout: float) -> bool:
    """Poll until the server accepts connections; False if it exited or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _in_use(host, port):
            return True
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    pgid = proc.pid  # start_new_session: the group id is the leader's pid, even after the leader exits
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        proc.poll()  # reap the leader so it does not linger as a zombie
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


url = hosts.url


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still alive (zombies of other parents don't count)."""
    import psutil

    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _in_use(host: str, port: int) -> bool:
    family, kind, proto, _, addr = hosts.addresses(host, port)[0]  # IPv4 or IPv6, as the host resolves
    with socket.socket(family, kind, proto) as s:
        s.settimeout(0.5)
        return s.connect_ex(addr) == 0
