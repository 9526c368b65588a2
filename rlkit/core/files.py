"""Small files a later step trusts (config.yaml, aim_hash, tokenizer files, output.json), written so that a
crash leaves the old file or the new one, never half of one; and their sha256, to tell a damaged one.

`writing(path)` is the one place a failed write (a full disk, a read-only or foreign folder) becomes one
line naming the file: every write of a run's files goes through it (atomic_write here, checkpoints).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

from rlkit.core.errors import RlkitError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def writing(path: Path):
    """Turn a failed write of `path` into one RlkitError naming it: "no space left" (including the errors
    libraries raise without an errno, e.g. safetensors' or torch.save's, when the disk is found full), or
    "not writable". Other errors pass as they are. Whatever was saved before is not touched."""
    try:
        yield
    except RlkitError:
        raise
    except Exception as e:
        error = write_error(e, Path(path))
        if error is None:
            raise
        raise error from e


def write_error(e: BaseException, path: Path) -> RlkitError | None:
    """The one-line error for a write of `path` that failed with `e`, or None if it is not about the disk."""
    code = getattr(e, "errno", None)
    if code in NO_SPACE or (code is None and _disk_full(path, e)):
        return RlkitError(f"no space left on device writing {path}; free some space (the checkpoints saved before "
                          "are intact), then continue with --resume")
    if code in NOT_WRITABLE:
        return RlkitError(f"cannot write {path}: {os.strerror(code)}; make {_existing(path)} writable, or run "
                          "elsewhere (run_dir=<folder> or name=<new name>)")
    return None


def _disk_full(path: Path, e: BaseException) -> bool:
    if "No space left" in str(e) or "os error 28" in str(e):
        return True
    try:
        return shutil.disk_usage(_existing(path)).free < 1 << 20  # under 1 MiB: the write failed for want of space
    except OSError:
        return False


def _existing(path: Path) -> Path:
    """The nearest folder of `path` that exists (the one to make writable)."""
    path = Path(path).parent
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a hidden temporary sibling, fsync it, rename it over `path` (one atomic step on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written leftover
            raise


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a temporary folder named after it may still be in use)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(stage_dir: Path) -> None:
    """Delete `.tmp-*-<pid>` folders left by crashed checkpoint saves (not those of another live process)."""
    for p in stage_dir.glob(".tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and not (pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
