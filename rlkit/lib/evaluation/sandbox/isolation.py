"""The operating system's side of the sandbox: bubblewrap's command line, and whether this host can run it.

A program gets new mount, PID, network, IPC and UTS namespaces (bubblewrap, `bwrap`). Its file system
is a fresh tmpfs holding only read-only binds of the system's /usr (and /bin, /lib... as on the host),
the Python installation, and a few files of /etc that the dynamic loader and `time` read; /proc is the
new PID namespace's own (the parent's processes are not in it), /dev a minimal one, /tmp a tmpfs capped
at `disk_mb`. The environment is cleared. Run as root, bwrap keeps only the capabilities to change user
and the child drops to a uid of its own; run as another user, bwrap adds a user namespace and the child
already is that unprivileged user.

`RLKIT_BWRAP` names the bwrap executable (default: `bwrap` on PATH); tests point it at a missing file
to see the refusal.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

from rlkit.core.errors import RlkitError

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC = ("/etc/ld.so.cache", "/etc/localtime")
HOW = ("install bubblewrap (apt-get install -y bubblewrap) and allow unprivileged user namespaces "
       "(sysctl kernel.unprivileged_userns_clone=1 user.max_user_namespaces=10000), or set `sandbox: weak` "
       "in the humaneval task's args in the YAML to run model-written code uncontained")
_checked: set[str] = set()
_lock = threading.Lock()


def bwrap_path() -> str:
    """The bwrap executable to use: $RLKIT_BWRAP, else bwrap on PATH (empty when there is none)."""
    return os.environ.get("RLKIT_BWRAP") or shutil.which("bwrap") or ""


def bwrap_argv(bwrap: str, disk_bytes: int, info_fd: int | None = None) -> list[str]:
    """bwrap's options up to the command: the namespaces, the read-only view, a capped /tmp, no environment.

    bwrap writes {"child-pid": N} to `info_fd`: N is the new PID namespace's init, whose death kills all in it.
    """
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if os.geteuid() == 0:  # keep only what the child needs to become its own user; it then loses these too
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # an unprivileged user's bwrap needs a user namespace; the program may not make more of them
        argv += ["--unshare-user", "--disable-userns"]
    for name, value in ENV.items():
        argv += ["--setenv", name, value]
    argv += read_only_view()
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--size", str(disk_bytes), "--tmpfs", "/tmp",
             "--chdir", "/tmp"]
    return argv


def read_only_view() -> list[str]:
    """Binds for the system directories (symlinks stay symlinks), /etc's few files, and Python's prefixes."""
    argv = []
    for path in SYSTEM:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in ETC:
        argv += ["--ro-bind-try", path, path]
    made = set()
    for prefix in sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}):
        if prefix.startswith("/usr/") or prefix == "/usr":
            continue
        # bwrap would copy a parent's mode (root's home is 0700): make each parent traversable instead
        parent = os.path.dirname(prefix)
        parents = []
        while parent not in ("/", "") and parent not in made:
            parents.insert(0, parent)
            parent = os.path.dirname(parent)
        for path in parents:
            argv += ["--perms", "0755", "--dir", path]
            made.add(path)
        argv += ["--ro-bind", prefix, prefix]
    return argv


def python_path() -> str:
    """The interpreter to run inside: this one, by a path the read-only view contains."""
    return os.path.realpath(sys.executable)


def require_isolation(bwrap: str) -> None:
    """Raise one RlkitError line unless this host can run a sandbox with `bwrap` (tried once per path)."""
    with _lock:
        if bwrap in _checked:
            return
    if not bwrap or not os.access(bwrap, os.X_OK):
        raise RlkitError(f"sandbox: cannot isolate model-written code: no bubblewrap executable "
                         f"({bwrap or 'bwrap'} not found; RLKIT_BWRAP chooses another); {HOW}")
    argv = bwrap_argv(bwrap, 2**20) + [python_path(), "-I", "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RlkitError(f"sandbox: cannot isolate model-written code: {bwrap} failed to start ({exc}); "
                         f"{HOW}") from None
    if done.returncode != 0:
        why = (done.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        raise RlkitError(f"sandbox: cannot isolate model-written code: {bwrap} refused ({why}); {HOW}")
    with _lock:
        _checked.add(bwrap)
