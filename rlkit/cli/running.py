"""An experiment as `rlkit run`, `rlkit check` and a sweep handle it: the pipeline, with what the library adds
around it.

    cfg, plugins, entries = prepare("exp.yaml", ["seed=1"], [], world_size=2)   # pipeline's, then: does it fit?
    run(cfg, plugins, resume=False)      # the CPU's malloc setting, then pipeline.run with tracking and strategy

Core checks the experiment against its schema and plugins and runs it with what it is handed; the parts that
know a device's memory, malloc or FSDP2 live in the library (rlkit.lib.training: memory, hostmem, parallel)
and are brought in here, so every command that runs an experiment runs it the same way.
"""
from __future__ import annotations

import os
from pathlib import Path


def prepare(path, overrides: list[str], extra_plugins: list[Path], world_size: int | None = None):
    """pipeline.prepare_entries, then whether the model's training state fits this device (for `world_size`
    processes; default: torchrun's WORLD_SIZE, else 1); returns (config, plugins, the checked entries)."""
    from rlkit.core import pipeline
    from rlkit.lib.training.memory import check_model_fits

    cfg, plugins, entries = pipeline.prepare_entries(path, overrides, extra_plugins, world_size)
    check_model_fits(cfg, plugins, f"{path}: model", world_size or int(os.environ.get("WORLD_SIZE", 1)))
    return cfg, plugins, entries


def run(cfg, plugins, resume: bool) -> None:
    """Run a prepared experiment: on a CPU, malloc keeps freed memory (hostmem); the run is tracked in Aim with
    a report card, and each training model spans the ranks as `parallel:` says."""
    from rlkit.core import pipeline
    from rlkit.lib.tracking.aim import RunTracking
    from rlkit.lib.training import hostmem
    from rlkit.lib.training.parallel import Strategy

    hostmem.on_cpu(cfg.device)
    pipeline.run(cfg, plugins, resume=resume, tracking=RunTracking(), parallel=Strategy(cfg.parallel))
