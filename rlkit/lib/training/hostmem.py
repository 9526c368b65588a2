"""CPU runs keep the memory they free, instead of handing it back to the OS after every step (glibc malloc).

glibc serves an allocation above its mmap threshold (32 MB at most) with a fresh mmap, and unmaps it on
free. A training step's large buffers (the logits and the loss's gradient: 512 MB each at 4096 tokens x
a 32768 vocabulary) are therefore new pages every step. The kernel zero-fills every page on its first
write, in a page fault, which costs several times the write itself; on a CPU that nearly doubled the time
of a compiled step (docs/performance.md, "Page faults").

Two mallopt settings make malloc keep freed memory in the process, so later steps reuse pages that are
already mapped:
- M_MMAP_MAX = 0: large blocks come from the heap, not from their own mappings.
- M_TRIM_THRESHOLD = SIZE_MAX: free never returns the heap's top to the OS.

The price is a process that keeps its peak memory until it exits, as a GPU's caching allocator does.
Allocation is all this changes: every number computed is bit for bit the same.

Applied by `rlkit run` and `rlkit eval` for a CPU device (on_cpu), before the run begins.
RLKIT_KEEP_FREED_MEMORY=0 leaves malloc as it is. It does nothing where the C library has no mallopt
(macOS, musl). Threads other than the main one keep glibc's usual per-thread arenas, which still map
their large blocks.
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
ENV = "RLKIT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Set the two mallopt options for this process (once is enough; repeating is harmless). Returns
    whether they were applied."""
    if os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's mallopt: other C libraries' options differ or do nothing
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt takes an int; glibc stores the trim threshold as a size_t, so -1 is SIZE_MAX: never trim
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def on_cpu(device_name: str) -> bool:
    """keep_freed_memory() when the run's `device:` is the CPU on this rank (as dist.init will pick it); a GPU
    run's host memory is left as it is. Returns whether the settings were applied."""
    from rlkit.core.dist import dist_info, pick_device

    if pick_device(device_name, dist_info().local_rank).type != "cpu":
        return False
    return keep_freed_memory()
