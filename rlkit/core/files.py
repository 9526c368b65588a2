"""Small files a later step trusts (config.yaml, aim_hash, tokenizer files, output.json), written so that a
crash leaves the old file or the new one, never half of one; and their sha256, to tell a damaged one."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a hidden temporary sibling, fsync it, rename it over `path` (one atomic step on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
