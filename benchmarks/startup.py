"""Startup time of the light commands: wall and CPU (user+sys) seconds of `rlkit --help`, `rlkit plugins` and
`rlkit check experiments/quickstart.yaml`, alternating this tree and a baseline tree (e.g. /work/base), so
both see the same machine load. Targets (a 2-core CPU): --help < 1 s, plugins and check < 3 s.

    python benchmarks/startup.py --baseline /work/base --repeats 3

Each command runs as `python -m rlkit ...` with PYTHONPATH set to the tree measured (its own code, whatever
is installed), offline. Prints one line per (command, tree): the minimum and median wall s, the minimum CPU s,
and the runs. On a shared machine the minimum is the figure to quote: other work only ever adds time.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "plugins": ["plugins"], "check": ["check", "experiments/quickstart.yaml"]}


def timed(tree: Path, args: list[str]) -> tuple[float, float]:
    """(wall s, user+sys CPU s) of one `python -m rlkit ARGS` in `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rlkit", *args], cwd=tree, env=env, capture_output=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: rlkit {' '.join(args)} failed:\n{done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another tree to alternate with (e.g. /work/base)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", nargs="*", default=list(COMMANDS), choices=list(COMMANDS))
    opts = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parents[1]}
    if opts.baseline:
        trees["baseline"] = opts.baseline.resolve()
    runs = {(c, t): [] for c in opts.commands for t in trees}
    for _ in range(opts.repeats):
        for command in opts.commands:
            for label, tree in trees.items():  # alternate: both trees see the same load
                runs[(command, label)].append(timed(tree, COMMANDS[command]))
    for (command, label), values in runs.items():
        walls, cpus = [w for w, _ in values], [c for _, c in values]
        print(f"rlkit {command:<8} {label:<8} wall min {min(walls):5.2f} s, median {statistics.median(walls):5.2f} s  "
              f"cpu min {min(cpus):5.2f} s  (wall {', '.join(f'{w:.2f}' for w in walls)})")


if __name__ == "__main__":
    main()
