"""`rlkit run EXP --sweep key=a,b [--sweep key2=x,y]`: the cross product of the values, one run after another.

Each point is a normal run of EXP with the point's overrides and a derived name (`<name>-<value>...`, a
key ending in `.name` shows its value alone, others as `<last key part><value>`: quickstart-grpo-seed1),
so it has its own run folder and Aim run. A point whose entries all finished is skipped; one that was
stopped part-way is resumed (--resume), so rerunning the same command finishes the sweep. At the end,
`rlkit compare` of every point is printed (when tracking is on).
"""
from __future__ import annotations

import itertools
from pathlib import Path

from rlkit.core import handoff
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError


def points(sweeps: list[str]) -> list[list[tuple[str, str]]]:
    """['a=1,2', 'b=x'] -> [[('a', '1'), ('b', 'x')], [('a', '2'), ('b', 'x')]]: the cross product."""
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not choices:
            raise RlkitError(f"--sweep {item}: expected key=value1,value2 (e.g. stages.rl.algorithm.name=grpo,rloo)")
        if key.strip() in (k for k, _ in (a[0] for a in axes)):
            raise RlkitError(f"--sweep {item}: {key.strip()} is swept twice; give its values once, comma-separated")
        axes.append([(key.strip(), v) for v in choices])
    return [list(p) for p in itertools.product(*axes)]


def point_name(base: str, point: list[tuple[str, str]]) -> str:
    parts = [v if k.endswith(".name") else f"{k.split('.')[-1]}{v}" for k, v in point]
    return "-".join([base, *parts]).replace("/", "_")


def run(path, overrides: list[str], extra_plugins: list[Path], sweeps: list[str], world_size: int) -> list[str]:
    """Run every point of the sweep (checked first, all of them); print the comparison; return the run names."""
    from rlkit.core import compare, pipeline

    grid = points(sweeps)
    prepared = []
    for point in grid:  # every point is checked before the first one runs
        base = pipeline.prepare(path, overrides + [f"{k}={v}" for k, v in point], extra_plugins, world_size)[0].name
        name = point_name(base, point)
        prepared.append((name, *pipeline.prepare(path, overrides + [f"{k}={v}" for k, v in point] + [f"name={name}"],
                                                 extra_plugins, world_size)))
    for i, (name, cfg, plugins) in enumerate(prepared):
        run_dir = Path(cfg.run_dir)
        names = pipeline.entries(cfg, plugins)
        if all(handoff.finished(run_dir / e.name) is not None for e in names):
            print0(f"rlkit sweep: {name} ({i + 1}/{len(prepared)}) already finished: skipping")
            continue
        print0(f"rlkit sweep: {name} ({i + 1}/{len(prepared)}): {' '.join(f'{k}={v}' for k, v in grid[i])}")
        pipeline.run(cfg, plugins, resume=(run_dir / "config.yaml").exists())
    cfg = prepared[-1][1]
    if cfg.tracking.enabled:
        result = compare.compare(cfg.tracking.repo, [name for name, _, _ in prepared], [])
        print0(compare.render(result))
    else:
        print0("rlkit sweep: tracking is off, so there is no comparison (tracking.enabled=true to get one)")
    return [name for name, _, _ in prepared]
