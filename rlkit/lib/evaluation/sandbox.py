"""Running model-written Python programs without letting them harm the run: one process per program.

    results = run_programs([code_a, code_b], timeout=5.0)   # in parallel over the cores
    results[0].passed                                        # it ran to its end, exit status 0

Each program runs in a fresh `python -I` process (no user site, no PYTHON* variables) that
  - has a new, empty temporary working directory, deleted afterwards, and an environment holding
    only PATH, LANG and HOME (that directory): the run's secrets are not passed on;
  - is in its own session (a kill of its process group never reaches the run) and is killed,
    group and all, after `timeout` seconds of wall clock;
  - is limited by rlimits: address space (`memory_mb`), CPU seconds, size of any file it writes,
    no core dumps, and no new processes (RLIMIT_NPROC 0, where not root);
  - before the program starts, has destructive and escaping functions disabled, as nanochat's and
    OpenAI human-eval's `reliability_guard` do (os.system, os.kill, os.fork, os.remove, shutil.rmtree,
    subprocess.Popen, ...), sockets refused (the socket modules cannot be imported), and `open`
    (builtins, io and os) refused for any path outside its working directory, reading included
    (so /proc/<parent>/environ and files elsewhere are out of reach).
A program passes only if it ran to its last line: the bootstrap writes a random token after the
program's code returns, so `sys.exit(0)`, `os._exit(0)` or a crash never count as a pass.

This is a guard against accidents and the usual escapes of generated code (the human-eval threat
model), not a security boundary against a determined attacker: code that digs the token out of the
interpreter's frames, or reaches the OS through ctypes, is not stopped. For untrusted users, run
rlkit inside a container or VM as well.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    output: str  # the last 2,000 characters of the program's stdout and stderr


def run_programs(programs: list[str], timeout: float = 5.0, memory_mb: int = 1024,
                 workers: int | None = None) -> list[Result]:
    """Run every program in its own sandboxed process, up to `workers` (default: the cores) at once."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(programs) or 1))
    if workers == 1:
        return [run_program(p, timeout, memory_mb) for p in programs]
    with ThreadPoolExecutor(workers) as pool:  # threads only wait on their child processes
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb), programs))


def run_program(code: str, timeout: float = 5.0, memory_mb: int = 1024) -> Result:
    """Run one program in a sandboxed process (see the module docstring)."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="rlkit-sandbox-") as work:
        log_path = os.path.join(work, ".output")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": work}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, str(memory_mb), str(max(1, int(timeout) + 1))],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env,
                start_new_session=True, close_fds=True)
            try:
                proc.communicate((token + "\n" + code).encode("utf-8", "replace"), timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        with open(log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            output = log.read().decode("utf-8", "replace")
    if timed_out:
        return Result(False, "timeout", output[-2000:])
    passed = proc.returncode == 0 and output.rstrip().endswith(token)
    return Result(passed, "passed" if passed else "failed", output.replace(token, "")[-2000:])


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program and anything it started (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# Runs in the child: argv = [memory_mb, cpu_seconds]; stdin = the token's line, then the program.
BOOTSTRAP = r'''
import sys
token, _, code = sys.stdin.read().partition("\n")
sys.stdin.close()
memory_mb, cpu_s = int(sys.argv[1]), int(sys.argv[2])

import builtins, io, os, resource, shutil, subprocess

def limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass

limit(resource.RLIMIT_AS, memory_mb * 2**20)
limit(resource.RLIMIT_CPU, cpu_s)
limit(resource.RLIMIT_FSIZE, 16 * 2**20)
limit(resource.RLIMIT_CORE, 0)
limit(resource.RLIMIT_NPROC, 0)

work = os.path.realpath(os.getcwd())
real_open, real_os_open = io.open, os.open

def inside(path, realpath=os.path.realpath, join=os.path.join, fsdecode=os.fsdecode, sep=os.sep):
    if isinstance(path, int):
        return path > 2  # a descriptor it already holds; not the standard streams' replacements
    full = realpath(join(work, fsdecode(path)))
    return full == work or full.startswith(work + sep)

def guarded_open(file, *args, **kwargs):
    if not inside(file):
        raise PermissionError(f"sandbox: {file!r} is outside the program's directory")
    return real_open(file, *args, **kwargs)

def guarded_os_open(path, *args, **kwargs):
    if not inside(path):
        raise PermissionError(f"sandbox: {path!r} is outside the program's directory")
    return real_os_open(path, *args, **kwargs)

builtins.open = io.open = guarded_open
os.open = guarded_os_open
os.environ.clear()

import posix
for name in ("kill", "killpg", "system", "putenv", "unsetenv", "remove", "removedirs", "rmdir", "unlink",
             "rename", "renames", "replace", "truncate", "ftruncate", "fork", "forkpty", "vfork", "setuid",
             "setgid", "seteuid", "setegid", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot",
             "chdir", "fchdir", "link", "symlink", "execv", "execve", "execvp", "execvpe", "execl", "execle",
             "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "posix_spawn",
             "posix_spawnp", "popen", "startfile", "register_at_fork"):
    for module in (os, posix):
        if hasattr(module, name):
            setattr(module, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = None
for name in ("socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "resource", "multiprocessing"):
    sys.modules[name] = None  # importing them now fails
builtins.exit = builtins.quit = None
del builtins, io, os, resource, shutil, subprocess, posix, limit, name, module

exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
sys.stdout.flush()
sys.stdout.write("\n" + token + "\n")
sys.stdout.flush()
'''
