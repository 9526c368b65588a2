"""The DCLM eval bundle that CORE (rlkit.lib.evaluation.corebench) is computed on: a local folder, or
nanochat's published copy, downloaded once into ~/.cache/rlkit. No torch here: the eval stage's check finds
the bundle before any model is built.
"""
from __future__ import annotations

import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from rlkit.core.errors import RlkitError

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat's published copy
CACHE = Path.home() / ".cache" / "rlkit" / "eval_bundle"


def bundle(path: str | None) -> Path:
    """The eval bundle folder: `path` (it must hold core.yaml), else a cached download of BUNDLE_URL."""
    folder = Path(path).expanduser() if path else CACHE
    if path and not (folder / "core.yaml").is_file():
        raise RlkitError(f"core.path: {folder} holds no core.yaml; give the DCLM eval bundle's folder "
                         "(core.yaml, eval_meta_data.csv, eval_data/)")
    if not (folder / "core.yaml").is_file():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                zipped = Path(tmp) / "eval_bundle.zip"
                urllib.request.urlretrieve(BUNDLE_URL, zipped)
                with zipfile.ZipFile(zipped) as z:
                    z.extractall(tmp)
                folder.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(tmp) / "eval_bundle"), str(folder))
        except Exception as e:  # offline, or the download moved
            raise RlkitError(f"core: could not download the eval bundle from {BUNDLE_URL} ({type(e).__name__}: "
                             f"{e}); offline? give core.path: a local copy of it") from None
    return folder
