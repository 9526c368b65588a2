"""`rlkit run EXP --nproc-per-node N` relaunches itself through PyTorch's own launcher.

The same command line, minus the launch options, runs as `python -m rlkit` in every
worker; torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and the workers join a process
group (gloo on CPU, nccl on CUDA, see rlkit.core.dist). One node runs standalone
(a local rendezvous); several nodes meet at --rdzv-endpoint through c10d.

torchrun starts each worker in a session of its own, so a kill -9 of the launcher (or of its process group)
would leave the workers running, holding the run's lock and writing checkpoints. Each worker therefore asks
Linux to kill it when its parent, the launcher's agent, dies (prctl PR_SET_PDEATHSIG).
"""
from __future__ import annotations

from rlkit.core.errors import RlkitError

PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """In a torchrun worker on Linux: SIGKILL this process when its parent (torchrun's agent) dies."""
    import ctypes
    import os
    import signal
    import sys

    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call: nobody is left to kill us
        os.kill(os.getpid(), signal.SIGKILL)


LAUNCH_OPTIONS = {"--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--rdzv-endpoint": True}


def worker_args(argv: list[str]) -> list[str]:
    """argv without the launch options (each takes a value, as `--opt v` or `--opt=v`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def torchrun(argv: list[str], nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str) -> None:
    """Run `python -m rlkit <argv>` in nproc_per_node workers on this node; raise if any worker failed."""
    from torch.distributed.run import get_args_parser, run

    if nnodes > 1 and not rdzv_endpoint:
        raise RlkitError("--rdzv-endpoint: a multi-node run needs HOST:PORT of node 0 (e.g. 10.0.0.1:29500)")
    launch = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}"]
    if nnodes == 1:
        launch.append("--standalone")
    else:
        launch += [f"--node-rank={node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    args = get_args_parser().parse_args(launch + ["-m", "rlkit", *worker_args(argv)])
    try:
        run(args)
    except Exception as e:  # torchrun's ChildFailedError: the workers printed their own errors already
        raise RlkitError(f"a worker process failed ({type(e).__name__}); see the lines above") from None
