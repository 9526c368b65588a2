"""The environment a run meets: a read-only run folder, a full disk, an Aim repository deleted before --resume
or damaged, and `rlkit ui` hosts (one that does not resolve, IPv6, one reachable from the network). Every case
runs the real CLI in a subprocess and checks the exit code, the one line, and that what was saved before is
byte-identical after.
"""
import errno
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlkit.core.checkpoint import latest_checkpoint

from experiments import PRETRAIN, TOKENIZER, experiment_text

HOLD = '''\
"""Test-only: after checkpoint RLKIT_TEST_HOLD (stage/step_N) is committed, write RLKIT_TEST_MARKER and wait
for RLKIT_TEST_RELEASE to exist; with RLKIT_TEST_ENOSPC=stage/step_N, that checkpoint's write fails as a
full disk would (OSError ENOSPC)."""
import errno
import os
import pathlib
import time

from rlkit.core import checkpoint

_commit, _write = checkpoint.commit, checkpoint._write_files


def held_commit(tmp, final):
    _commit(tmp, final)
    if os.environ.get("RLKIT_TEST_HOLD") == f"{final.parent.name}/{final.name}":
        pathlib.Path(os.environ["RLKIT_TEST_MARKER"]).write_text("held")
        while not pathlib.Path(os.environ["RLKIT_TEST_RELEASE"]).exists():
            time.sleep(0.05)


def full_write(folder, step, *args):
    if os.environ.get("RLKIT_TEST_ENOSPC") == f"{folder.parent.name}/step_{step:06d}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    _write(folder, step, *args)


checkpoint.commit, checkpoint._write_files = held_commit, full_write
'''

EXPERIMENT = experiment_text({"tokenizer": TOKENIZER, "pretrain": {**PRETRAIN, "steps": 6, "save_every": 2}},
                             name="f", plugins=["./hold.py"])


def folder_with(path: Path, text: str = EXPERIMENT) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "exp.yaml").write_text(text)
    (path / "hold.py").write_text(HOLD)
    return path


def env(folder: Path, **extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RLKIT_TEST_MARKER": str(folder / "held"),
            "RLKIT_TEST_RELEASE": str(folder / "release"), **extra}


def rlkit(folder: Path, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlkit", *map(str, args)], cwd=folder, env=env(folder, **extra),
                          capture_output=True, text=True, timeout=300)


def start_held(folder: Path, hold: str, *args, logs: Path | None = None) -> subprocess.Popen:
    """Start `rlkit ARGS` and return once it is held right after checkpoint `hold` was committed; its output
    goes to held.log and held.err in `logs` (default: folder)."""
    logs = logs or folder
    for name in ("held", "release"):
        (folder / name).unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", *args], cwd=folder, env=env(folder, RLKIT_TEST_HOLD=hold),
                            stdout=open(logs / "held.log", "w"), stderr=open(logs / "held.err", "w"))
    deadline = time.time() + 300
    while not (folder / "held").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"never held at {hold}:\n{(logs / 'held.log').read_text()}"
                                 f"{(logs / 'held.err').read_text()}")
        time.sleep(0.05)
    return proc


def one_line_error(out, *parts: str, stderr: str | None = None) -> str:
    err = out.stderr if stderr is None else stderr
    assert out.returncode == 1, out.stdout + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out.stdout + err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


# --------------------------------------------------------------------------- the run folder and the disk

@pytest.fixture
def read_only():
    """make(folder): the folder becomes read-only for this process's children, even as root (chmod; as root,
    the immutable attribute); undone at teardown. Skips where neither holds."""
    made = []

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        made.append(folder)
        if _writable(folder) and shutil.which("chattr"):
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if _writable(folder):
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")

    yield make
    for folder in made:
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_read_only_run_folder_is_one_line_naming_it(read_only, tmp_path):
    """A fresh run under a read-only runs/ folder, and --resume of a run whose folder became read-only: one
    line naming the folder, before any work; what was saved is unchanged."""
    folder = folder_with(tmp_path)
    (folder / "runs").mkdir()
    read_only(folder / "runs")
    out = rlkit(folder, "run", "exp.yaml")
    one_line_error(out, "cannot write runs/f/.lock: ", "; make runs writable, or run elsewhere")
    assert "[tokenizer]" not in out.stdout


def test_resume_in_a_run_folder_made_read_only_is_one_line(read_only, tmp_path):
    folder = folder_with(tmp_path)
    proc = start_held(folder, "pretrain/step_000002", "run", "exp.yaml")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = digest(folder / "runs/f")
    read_only(folder / "runs/f")
    out = rlkit(folder, "run", "exp.yaml", "--resume")
    one_line_error(out, "cannot write runs/f/", "; make runs/f writable, or run elsewhere")
    assert "[pretrain] step" not in out.stdout
    assert digest(folder / "runs/f") == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk (root with mount rights); skips where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with mount rights)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_says_no_space_left_naming_the_checkpoint_and_keeps_the_earlier_one(small_disk):
    """A real full disk: the run is held after pretrain's step 2, the disk is filled, then step 4's save fails.
    One line says "no space left" and names the checkpoint; step 2 is byte-identical and whole, and the failed
    save left nothing behind. After space is freed, --resume finishes the run."""
    folder, logs = folder_with(small_disk / "work"), small_disk.parent  # the output goes to another disk
    proc = start_held(folder, "pretrain/step_000002", "run", "exp.yaml", logs=logs)
    saved = digest(folder / "runs/f")
    filler = folder / "filler"
    with open(filler, "wb") as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    (folder / "release").write_text("")  # 0 bytes: creating a file still works on a full tmpfs
    proc.wait(timeout=300)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, (logs / "held.log").read_text(),
                                      (logs / "held.err").read_text())
    one_line_error(out, "no space left on device writing runs/f/pretrain/step_000004; free some space",
                   "then continue with --resume")
    stage = folder / "runs/f/pretrain"
    assert sorted(p.name for p in stage.iterdir()) == ["step_000002"]  # no half-written leftover
    assert latest_checkpoint(stage) == stage / "step_000002"
    assert {k: v for k, v in digest(folder / "runs/f").items() if k in saved} == saved
    filler.unlink()
    done = rlkit(folder, "run", "exp.yaml", "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from runs/f/pretrain/step_000002" in done.stdout


def test_a_write_failing_with_enospc_is_one_line_anywhere(tmp_path):
    """The same, without a mount: the checkpoint write of pretrain's step 4 fails with ENOSPC (injected)."""
    folder = folder_with(tmp_path)
    out = rlkit(folder, "run", "exp.yaml", RLKIT_TEST_ENOSPC="pretrain/step_000004")
    one_line_error(out, "no space left on device writing runs/f/pretrain/step_000004")
    stage = folder / "runs/f/pretrain"
    assert sorted(p.name for p in stage.iterdir()) == ["step_000002"]
    assert latest_checkpoint(stage) == stage / "step_000002"


# --------------------------------------------------------------------------- the Aim repository

TRACKED = EXPERIMENT.replace("tracking: {enabled: false}", "tracking: {repo: .aim}")


def test_an_aim_repo_deleted_before_resume_continues_in_a_new_aim_run(tmp_path):
    folder = folder_with(tmp_path, TRACKED)
    proc = start_held(folder, "pretrain/step_000002", "run", "exp.yaml")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    old = (folder / "runs/f/aim_hash").read_text().strip()
    shutil.rmtree(folder / ".aim")
    out = rlkit(folder, "run", "exp.yaml", "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"[track] Aim run {old} is not in .aim (deleted or moved?); tracking continues in a new Aim run" \
           in out.stdout
    new = (folder / "runs/f/aim_hash").read_text().strip()
    import aim

    assert new != old and list(aim.Repo.from_path(str(folder / ".aim")).list_all_runs()) == [new]


@pytest.fixture
def damaged_repo(tmp_path) -> Path:
    """tmp_path/.aim holding one closed run, then garbage written over its metadata database and index."""
    from rlkit.lib.tracking import aim as track

    tracker = track.AimTracker(tmp_path / ".aim", experiment="e", name="r")
    tracker.metrics({"loss": 1.0}, step=1, stage="pretrain")
    tracker.close()
    garbage = bytes(range(256)) * 20
    (tmp_path / ".aim/run_metadata.sqlite").write_bytes(garbage)
    for f in (tmp_path / ".aim/meta/index").iterdir():
        if f.is_file():
            f.write_bytes(garbage[:300])
    return tmp_path / ".aim"


@pytest.mark.parametrize("command", [["run", "exp.yaml"], ["compare"], ["ui", "--port", "43999"]],
                         ids=["run", "compare", "ui"])
def test_a_damaged_aim_repo_is_one_line_naming_it(command, damaged_repo):
    folder = folder_with(damaged_repo.parent, TRACKED)
    before = digest(damaged_repo)
    out = rlkit(folder, *command)
    key = "tracking.repo" if command[0] == "run" else "--repo"
    one_line_error(out, f"{key}: the Aim repository .aim cannot be read, it is damaged (",
                   "move it aside (mv .aim .aim.damaged)", "tracking.repo=<folder>")
    assert digest(damaged_repo) == before
    assert not (folder / "runs/f/tokenizer").exists()  # nothing ran


def test_tracking_continues_to_a_fresh_repo_on_resume(damaged_repo):
    """The documented way past a damaged repository: tracking.repo=<new folder>, also with --resume (tracking
    keys change no result, so --resume takes them)."""
    folder = folder_with(damaged_repo.parent, TRACKED)
    proc = start_held(folder, "pretrain/step_000002", "run", "exp.yaml", "tracking.repo=.aim-first")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = rlkit(folder, "run", "exp.yaml", "--resume", "tracking.repo=.aim-fresh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--resume: tracking.repo changed; it changes no result, so the new value is used" in out.stdout
    assert "[track] Aim run" in out.stdout and (folder / ".aim-fresh").is_dir()


# --------------------------------------------------------------------------- rlkit ui hosts

def test_ui_on_a_host_that_does_not_resolve_is_one_line(tmp_path):
    out = rlkit(folder_with(tmp_path), "ui", "--host", "no-such-host.invalid")
    one_line_error(out, "--host no-such-host.invalid: does not resolve to an address", "use 127.0.0.1 or ::1")


def test_ui_on_a_network_host_warns_that_it_is_reachable(tmp_path):
    """The warning comes first, before anything is bound (here the repo is missing, so nothing starts)."""
    out = rlkit(folder_with(tmp_path), "ui", "--host", "0.0.0.0", "--repo", "missing")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 2, out.stderr
    assert lines[0].startswith("warning: --host 0.0.0.0 makes the Aim UI reachable from the network")
    assert lines[1].startswith("error: --repo: no Aim repository at missing")


def test_ui_serves_on_ipv6_loopback(tmp_path):
    from rlkit.lib.tracking import aim as track

    tracker = track.AimTracker(tmp_path / ".aim", experiment="e", name="r")
    tracker.close()
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "rlkit", "ui", "--host", "::1", "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=open(tmp_path / "ui.err", "w"), text=True)
    try:
        lines = []
        for line in ui.stdout:  # until rlkit prints the URL (the server answers) or ui exits
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert lines and f"http://[::1]:{port}" in lines[-1], "".join(lines) + (tmp_path / "ui.err").read_text()
        with urllib.request.urlopen(f"http://[::1]:{port}/", timeout=30) as response:
            assert b"<html" in response.read().lower()
    finally:
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
    assert "warning" not in (tmp_path / "ui.err").read_text()


# --------------------------------------------------------------------------- the device's memory

def test_a_model_too_big_for_the_device_is_one_line_with_the_estimate_before_any_work(tmp_path):
    """depth 64 is a 12.9B-parameter GPT even with a byte vocabulary: over 180 GiB to train, more than this
    machine (or one GPU) has free. `rlkit check` and `rlkit run` both say so in one line, before any work."""
    folder = folder_with(tmp_path)
    for command in ("check", "run"):
        out = rlkit(folder, command, "exp.yaml", "model.depth=64")
        line = one_line_error(out, "exp.yaml: model: this model has at least 12.", "B parameters, about ",
                              "GiB for weights, gradients and optimizer state (16 bytes a parameter",
                              "use a smaller model (model.args), parallel.strategy=fsdp over more ranks, or a device with more memory")
        assert float(line.split("about ")[1].split(" GiB")[0]) > 180
    assert not (folder / "runs").exists()
