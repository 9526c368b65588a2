"""An Aim repository that cannot be read is one line naming it and what to do, for `rlkit run`, `compare`
and `ui` alike.

Aim raises whatever its storage raises on a damaged repository (sqlite's DatabaseError, RocksDB's
Corruption, a UnicodeDecodeError from its VERSION file, ...), from the first open or only when a run's
data is read. `reading(repo, key)` wraps every such access and turns any of them into the same line;
`probe(repo, key)` opens the repository and reads its run list, index and metadata once, so the damage
shows before any work.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from rlkit.core.errors import RlkitError


@contextlib.contextmanager
def reading(repo: str | Path, key: str):
    """Any failure inside (other than an RlkitError) is blamed on the repository, in one line."""
    try:
        yield
    except RlkitError:
        raise
    except Exception as e:  # noqa: BLE001 -- Aim's storage raises many kinds; the repo is what to name
        raise damaged(repo, key, e) from e


def damaged(repo: str | Path, key: str, e: BaseException) -> RlkitError:
    text = str(e).strip()
    first = text.splitlines()[0][:160] if text else ""
    return RlkitError(f"{key}: the Aim repository {repo} cannot be read, it is damaged ({type(e).__name__}: {first}); "
                      f"move it aside (mv {repo} {repo}.damaged) and the next run starts a fresh one, or track "
                      "elsewhere with tracking.repo=<folder> (tracking.enabled=false turns tracking off)")


def probe(repo: str | Path, key: str) -> None:
    """Open an existing repository and read its runs' list, index and metadata (nothing if it does not exist)."""
    from aim import Repo

    with reading(repo, key):
        if not Repo.exists(str(repo)):
            return
        opened = Repo.from_path(str(repo))
        list(opened.list_all_runs())
        list(opened.structured_db.experiments())  # the metadata database (sqlite)
        for run in opened.iter_runs():  # the index
            run.name
            break
