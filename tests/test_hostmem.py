"""lib/training/hostmem.py, through on_cpu (what `rlkit run` and `rlkit eval` call) on a CPU: a loop that
allocates, writes and frees a 64 MB block (as a training step does its logits) settles on pages it already
has, where glibc's default maps fresh pages and faults every one in again, each time. The count is the process's minor page faults (getrusage). Each case
runs in a child process, so the malloc settings do not carry over into the test run, and
RLKIT_KEEP_FREED_MEMORY=0 gives the default case."""
import os
import subprocess
import sys

import pytest

from rlkit.lib.training import hostmem

CHILD = """
import resource, torch
from rlkit.lib.training import hostmem

hostmem.on_cpu("cpu")

def faults_of_a_64mb_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)  # 64 MB of float32: above glibc's largest mmap threshold (32 MB)
    x.fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
    return faults

counts = [faults_of_a_64mb_block() for _ in range(40)]
print(sum(counts[:1]), sum(counts[-10:]))  # the first block's faults; the last ten blocks' together
"""


def faults(keep: bool) -> tuple[int, int]:
    """(page faults of the first block, of the last ten blocks together)"""
    env = dict(os.environ, **{hostmem.ENV: "1" if keep else "0"})
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    first, second = map(int, out.stdout.split())
    return first, second


def test_cpu_runs_reuse_freed_pages_and_the_env_var_turns_it_off():
    env = dict(os.environ, **{hostmem.ENV: "1"})
    probe = "from rlkit.lib.training import hostmem; print(hostmem.keep_freed_memory())"
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip() != "True":
        pytest.skip("this C library has no glibc mallopt")
    first, last_ten = faults(keep=True)
    assert first > 0 and last_ten < first / 10, (first, last_ten)  # (glibc's heap takes a few blocks to settle)
    first, last_ten = faults(keep=False)
    assert last_ten > 5 * first, (first, last_ten)  # glibc's default: unmapped on free, faulted in again
