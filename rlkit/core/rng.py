"""Random generator states as JSON (for a checkpoint's meta.json): Python's, numpy's, torch's CPU, CUDA and MPS.

    meta["rng"] = rng_state()      # at save
    set_rng_state(meta["rng"])     # at resume: the run continues with the same random numbers
"""
import base64
import random

import torch

from rlkit.core.errors import RlkitError


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA/MPS generator states as a JSON-serialisable dict (for meta.json)."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": _b64(torch.get_rng_state())}
    try:
        import numpy as np
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]  # one per visible device
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        state["mps"] = _b64(torch.mps.get_rng_state())
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned; generators absent here (no CUDA now, say) are skipped."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(_unb64(state["torch"]))
        if "numpy" in state:
            import numpy as np
            kind, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "cuda" in state and torch.cuda.is_available():
            for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(_unb64(s), i)
        if "mps" in state and hasattr(torch, "mps") and torch.backends.mps.is_available():
            torch.mps.set_rng_state(_unb64(state["mps"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RlkitError(f"set_rng_state: not a state from rng_state() ({type(e).__name__}: {e})") from None
