"""rlkit: train language models with reinforcement learning, one YAML file at a time.

A plugin needs only `hookimpl` from here:

    import rlkit

    @rlkit.hookimpl
    def rlkit_rewards():
        return {"short": short}

The layers (docs/architecture.md): rlkit.core is the pipeline and its contract, rlkit.lib what plugin
authors import (generation, training, evaluation, text), rlkit.plugins the built-ins and rlkit.cli the
commands. Arrows point down only: cli -> plugins -> lib -> core.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rlkit")

# Library modules that lived in rlkit.core before the layout split: a user's plugin that imports one by
# its old name keeps working (with a DeprecationWarning) and gets the very same module object.
MOVED = {
    "rlkit.core.sampling": "rlkit.lib.generation.sampling",
    "rlkit.core.engine": "rlkit.lib.generation.engine",
    "rlkit.core.optim": "rlkit.lib.training.optim",
    "rlkit.core.objectives": "rlkit.lib.training.objectives",
    "rlkit.core.algorithm": "rlkit.lib.training.algorithm",
    "rlkit.core.training": "rlkit.lib.training.loop",
    "rlkit.core.progress": "rlkit.lib.training.progress",
    "rlkit.core.scoring": "rlkit.lib.evaluation.scoring",
    "rlkit.core.evaluate": "rlkit.lib.evaluation.evaluate",
    "rlkit.core.choice": "rlkit.lib.evaluation.choice",
    "rlkit.core.corebench": "rlkit.lib.evaluation.corebench",
    "rlkit.core.sandbox": "rlkit.lib.evaluation.sandbox",
    "rlkit.core.task": "rlkit.lib.text.task",
    "rlkit.core.textdata": "rlkit.lib.text.textdata",
    "rlkit.core.tokenizer": "rlkit.lib.text.tokenizer",
    "rlkit.core.report": "rlkit.lib.tracking.report",
    "rlkit.core.aimrepo": "rlkit.lib.tracking.aimrepo",
    "rlkit.core.parallel": "rlkit.lib.training.parallel",
    "rlkit.core.memory": "rlkit.lib.training.memory",
    "rlkit.core.hostmem": "rlkit.lib.training.hostmem",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old rlkit.core.X name to its new module (the alias is the module itself, not a copy)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import it from there", DeprecationWarning,
                      stacklevel=3)
        module = importlib.import_module(MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass  # the real module is already executed


sys.meta_path.append(_MovedModules())
