"""`rlkit run EXP --sweep key=a,b [--sweep key2=x,y]`: the cross product of the values, one run after another.

Each point is a normal run of EXP with the point's overrides and a derived name (`<name>-<value>...`, a
key ending in `.name` shows its value alone, others as `<last key part><value>`: quickstart-grpo-seed1),
so it has its own run folder and Aim run. A point whose entries all finished is skipped; one that was
stopped part-way (or whose folder holds finished entries) is resumed (--resume), so rerunning the same command finishes the sweep. Leading entries
a point shares with an earlier point (the same config for them and everything before: only later entries
differ, as when only stages.rl.* is swept) are copied from that point's finished run, hard-linked where
the file system allows, so a sweep over the rl stage trains the stages before it once. At the end,
`rlkit compare` of every point is printed (when tracking is on).
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from rlkit.core import handoff
from rlkit.core.config import config_diff
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
        twice = next((v for i, v in enumerate(choices) if v in choices[:i]), None)
        if twice is not None:
            raise RlkitError(f"--sweep {item}: the value {twice} is given twice; each point runs once")
        if key.strip() in (k for k, _ in (a[0] for a in axes)):
            raise RlkitError(f"--sweep {item}: {key.strip()} is swept twice; give its values once, comma-separated")
        axes.append([(key.strip(), v) for v in choices])
    return [list(p) for p in itertools.product(*axes)]


def point_name(base: str, point: list[tuple[str, str]]) -> str:
    parts = [v if k.endswith(".name") else f"{k.split('.')[-1]}{v}" for k, v in point]
    return "-".join([base, *parts]).replace("/", "_")


def _distinct(names: list[str], grid: list) -> None:
    """Two points named alike would share one run folder: the second would be skipped, compared twice."""
    for i, name in enumerate(names):
        if name in names[:i]:
            first, second = (" ".join(f"{k}={v}" for k, v in grid[j]) for j in (names.index(name), i))
            raise RlkitError(f"--sweep: the points {first} and {second} are both named {name}; give values that "
                             "differ in more than '/' vs '_', or sweep a key whose values name the runs apart")


def _same_config(cfg, run_dir: Path) -> None:
    """A finished point is skipped only if its folder ran this point's config (tracking and folders aside)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():  # entries copied from a point with the same config for them: nothing to compare
        return
    before = OmegaConf.to_container(OmegaConf.load(saved))
    changed = [row["key"] for row in config_diff([before, OmegaConf.to_container(cfg)])
               if row["key"] != "base_dir" and not row["key"].startswith("tracking.")]
    if changed:
        raise RlkitError(f"--sweep: {run_dir} already holds a finished run with other settings ({', '.join(changed[:5])}"
                         f"); it is not this point's result: sweep under another name (name=<new name>) or move it")


def reuse(cfg, names: list[str], earlier: list) -> bool:
    """Copy into this point's run folder the leading entries an earlier, finished point ran with the same
    config (for them and all before); True if any was copied (the run then resumes past them)."""
    run_dir = Path(cfg.run_dir)
    for other in earlier:
        same = [e for k, e in enumerate(names) if _upto(cfg, names, k) == _upto(other, names, k)]
        lead = names[:next((k for k, e in enumerate(names) if e not in same), len(names))]
        lead = [e for e in lead if handoff.finished(Path(other.run_dir) / e) is not None]
        if lead and not (run_dir / "config.yaml").exists():
            for e in lead:
                if not (run_dir / e).exists():
                    shutil.copytree(Path(other.run_dir) / e, run_dir / e, copy_function=_link)
            print0(f"rlkit sweep: {', '.join(lead)} shared with {other.name}: copied from {other.run_dir}")
            return True
    return False


def _upto(cfg, names: list[str], k: int) -> dict:
    """The config that decides entries 0..k: everything but the name, the folders and later entries."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "run_dir", "base_dir"):
        c.pop(key, None)
    c["stages"] = {e: c["stages"][e] for e in names[:k + 1]}
    return c


def _link(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(path, overrides: list[str], extra_plugins: list[Path], sweeps: list[str], world_size: int) -> list[str]:
    """Run every point of the sweep (checked first, all of them); print the comparison; return the run names."""
    from rlkit.cli import comparison, running

    grid = points(sweeps)
    prepared = []
    for point in grid:  # every point is checked before the first one runs
        base = running.prepare(path, overrides + [f"{k}={v}" for k, v in point], extra_plugins, world_size)[0].name
        name = point_name(base, point)
        prepared.append((name, *running.prepare(path, overrides + [f"{k}={v}" for k, v in point] + [f"name={name}"],
                                                extra_plugins, world_size)))
    _distinct([name for name, *_ in prepared], grid)
    for i, (name, cfg, plugins, entries) in enumerate(prepared):
        run_dir = Path(cfg.run_dir)
        names = [e.name for e in entries]
        if all(handoff.finished(run_dir / e) is not None for e in names):
            _same_config(cfg, run_dir)  # a finished run of other settings is not this point's result
            print0(f"rlkit sweep: {name} ({i + 1}/{len(prepared)}) already finished: skipping")
            continue
        print0(f"rlkit sweep: {name} ({i + 1}/{len(prepared)}): {' '.join(f'{k}={v}' for k, v in grid[i])}")
        shared = reuse(cfg, names, [c for _, c, *_ in prepared[:i]])
        begun = (run_dir / "config.yaml").exists() or any(handoff.finished(run_dir / e) is not None for e in names)
        running.run(cfg, plugins, resume=begun or shared)
    cfg = prepared[-1][1]
    if cfg.tracking.enabled:
        result = comparison.compare(cfg.tracking.repo, [name for name, *_ in prepared], [])
        print0(comparison.render(result))
    else:
        print0("rlkit sweep: tracking is off, so there is no comparison (tracking.enabled=true to get one)")
    return [name for name, *_ in prepared]
