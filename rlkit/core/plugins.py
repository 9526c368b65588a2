"""Finding plugins and turning them into name tables.

Plugins are registered, in order, from:
  1. rlkit's own entry points (group `rlkit`, distribution `rlkit`): core names no plugin;
  2. other installed packages' entry points in group `rlkit`, narrowed by
     RLKIT_LOAD_PLUGINS="pkg_a,pkg_b" (an empty string loads none);
  3. local .py files: the YAML's `plugins:` list (relative to the YAML) and `--plugin PATH`.
Then `pm.check_pending()` rejects hooks that match no spec (a misspelled hook).

`collect(pm)` calls each registration hook once per plugin and builds one
`{name: callable}` table per kind; a name defined twice is an error naming both
plugins. RLKIT_TRACE_PLUGINS=1 prints every hook call and what it returned.
"""
from __future__ import annotations

import difflib
import importlib.metadata as metadata
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from rlkit.core import hookspecs
from rlkit.core.errors import RlkitError

GROUP = "rlkit"
KINDS = {  # kind -> (hook name, the leading arguments core passes before **args)
    "stage": ("rlkit_stages", ()),
    "model": ("rlkit_models", ("tokenizer", "seq_len")),
    "algorithm": ("rlkit_algorithms", ()),
    "reward": ("rlkit_rewards", ("completion", "example")),
    "optimizer": ("rlkit_optimizers", ("model",)),
    "task": ("rlkit_tasks", ("split",)),
    "tool": ("rlkit_tools", ("call",)),
    "env": ("rlkit_envs", ("example",)),
    "tokenizer": ("rlkit_tokenizers", ("folder",)),
}


@dataclass
class PluginInfo:
    name: str  # the name pluggy knows it by
    source: str  # "rlkit 0.1.0", "my-pkg 1.2 (entry point)", or a file path
    provides: dict[str, list[str]] = field(default_factory=dict)  # kind -> names


@dataclass
class Plugins:
    """What start-up found: one table per kind, and where each plugin came from."""
    tables: dict[str, dict[str, Callable]]
    infos: list[PluginInfo]

    def get(self, kind: str, name: str, where: str) -> Callable:
        """The callable registered as `name`, or an error listing the valid names."""
        table = self.tables[kind]
        if name in table:
            return table[name]
        valid = sorted(table)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        listing = ", ".join(valid) if valid else "none are installed"
        raise RlkitError(f"{where}: no {kind} plugin named '{name}' ({hint}available: {listing})")


def load_plugins(local_files: list[Path] = ()) -> Plugins:
    """Every plugin (installed packages' entry points, then `local_files`) registered with a fresh plugin
    manager, and their tables collected: what the CLI calls."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    sources: dict[str, str] = {}
    for ep, dist in _entry_points():
        module = _load_entry_point(ep, dist)
        _register(pm, module, f"{dist.name}:{ep.name}")
        sources[f"{dist.name}:{ep.name}"] = f"{dist.name} {dist.version}"
    for path in dict.fromkeys(Path(p).resolve() for p in local_files):  # the same file named twice loads once
        module = _import_file(path)
        _register(pm, module, str(path))
        sources[str(path)] = "file"
    _check_pending(pm)
    return collect(pm, sources)


def collect(pm: pluggy.PluginManager, sources: dict[str, str]) -> Plugins:
    """Call every registration hook once and merge the tables; a name defined twice is an error."""
    tables: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}
    owner: dict[tuple[str, str], str] = {}
    infos = {name: PluginInfo(name, source) for name, source in sources.items()}
    trace = bool(os.environ.get("RLKIT_TRACE_PLUGINS"))
    for kind, (hook, _) in KINDS.items():
        # Call per implementation (not pm.hook.X()) so each name is traced back to its plugin.
        for impl in getattr(pm.hook, hook).get_hookimpls():  # registration order: built-ins first
            table = _call_hook(impl, hook) or {}
            if trace:
                print(f"rlkit: {hook}() from {impl.plugin_name} -> {sorted(table) if isinstance(table, dict) else table!r}",
                      file=sys.stderr)
            if not isinstance(table, dict):
                getattr(table, "close", lambda: None)()  # an async hook's coroutine: no 'never awaited' warning
                raise RlkitError(f"plugin {impl.plugin_name}: {hook}() must return a dict {{name: callable}}, "
                                 f"got {type(table).__name__}")
            for name, fn in table.items():
                if not isinstance(name, str) or not name.strip():
                    raise RlkitError(f"plugin {impl.plugin_name}: {hook}() returned the name {name!r}; a name is a "
                                     "non-empty string, the one an experiment's `name:` gives")
                if (kind, name) in owner:
                    raise RlkitError(f"{kind} '{name}' is defined by two plugins: {owner[kind, name]} and "
                                     f"{impl.plugin_name}; rename one of them")
                if not _valid(kind, fn):
                    what = "a Stage (with config and run)" if kind == "stage" else "callable"
                    raise RlkitError(f"plugin {impl.plugin_name}: {kind} '{name}' is not {what}")
                owner[kind, name] = impl.plugin_name
                tables[kind][name] = fn
                infos[impl.plugin_name].provides.setdefault(kind, []).append(name)
    for kind, table in tables.items():  # `Short` and `short` are two plugins, which a reader may not expect
        lower = {}
        for name in table:
            if name.lower() in lower:
                print(f"rlkit: warning: {kind} plugins '{lower[name.lower()]}' and '{name}' differ only in case",
                      file=sys.stderr)
            lower.setdefault(name.lower(), name)
    return Plugins(tables, list(infos.values()))


def _call_hook(impl, hook: str):
    try:
        return impl.function()
    except BaseException as e:  # noqa: BLE001 -- sys.exit() or KeyboardInterrupt in a plugin is its fault too
        raise RlkitError(f"plugin {impl.plugin_name}: {hook}() raised {type(e).__name__}: {e}") from None


def _valid(kind: str, fn) -> bool:
    if kind == "stage":  # a Stage is a record, not a callable: it needs its config dataclass and run
        return callable(getattr(fn, "run", None)) and isinstance(getattr(fn, "config", None), type)
    return callable(fn)


def check_examples(task, where: str) -> None:
    """Every example must hold what stages read: "messages", a list of {"role", "content": str}; checked
    when the task is built, so a bad row deep in the data is one line before any work, not a traceback later."""
    for i in range(len(task)):
        example = task[i]
        messages = example.get("messages") if isinstance(example, dict) else None
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages)):
            raise RlkitError(f"{where}: example {i} is {str(example)[:80]!r}; an example is a dict with \"messages\": "
                             "[{\"role\": \"user\" | \"assistant\", \"content\": str}, ...] (see make_example)")


def call_plugin(where: str, name: str, fn, *args, **kwargs):
    """Call a plugin's factory; an exception from it (bad arg values, missing data) becomes one line."""
    try:
        return fn(*args, **kwargs)
    except RlkitError as e:
        raise RlkitError(f"{where}: {e}") from e  # the plugin's own message, with the key it came from
    except Exception as e:
        raise RlkitError(f"{where}: plugin '{name}' failed: {type(e).__name__}: {e}") from e


def bind_args(kind: str, name: str, fn: Callable, args: dict[str, Any], where: str) -> dict[str, Any]:
    """Check `args` against the plugin's signature before any model is built; returns them as a dict."""
    leading = KINDS[kind][1]
    sig = inspect.signature(getattr(fn, "score_batch", fn) if kind == "reward" else fn)  # a batched reward's args
    try:
        sig.bind(*[None] * len(leading), **dict(args))
    except TypeError as e:
        params = [p for p in list(sig.parameters.values())[len(leading):]
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        accepted = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
        raise RlkitError(f"{where}: {kind} '{name}' does not accept these args ({e}); "
                         f"it takes: {accepted or 'no arguments'}") from None
    return dict(args)


def _entry_points():
    """(entry point, distribution) pairs: rlkit's own first, then others allowed by RLKIT_LOAD_PLUGINS. (A
    distribution visible twice on sys.path counts once: importlib.metadata keeps the first.)"""
    allowed = os.environ.get("RLKIT_LOAD_PLUGINS")
    allowed_set = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    own, others = [], []
    for ep in metadata.entry_points(group=GROUP):
        if ep.dist.name == "rlkit":
            own.append((ep, ep.dist))
        elif allowed_set is None or ep.dist.name in allowed_set:
            others.append((ep, ep.dist))
    return sorted(own, key=lambda p: p[0].name) + sorted(others, key=lambda p: (p[1].name, p[0].name))


def _register(pm: pluggy.PluginManager, module, name: str) -> None:
    """pm.register, with a hook whose signature pluggy refuses (it takes arguments) as one line."""
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as e:
        hook = getattr(e, "hook_name", None) or next((h for h, _ in KINDS.values() if h in str(e)), "a hook")
        raise RlkitError(f"plugin {name}: {hook}() must take no arguments (def {hook}(): return {{name: ...}}); "
                         f"pluggy says: {str(e).strip().splitlines()[-1]}") from None


def _load_entry_point(ep, dist):
    try:
        return ep.load()
    except BaseException as e:  # a broken installed plugin (even one calling sys.exit): name it, no traceback
        raise RlkitError(f"plugin {dist.name}:{ep.name} (entry point {ep.value}) failed to import: "
                         f"{type(e).__name__}: {e}") from None


def _import_file(path: Path):
    """Import a local plugin file under its own module name, so tracebacks name the user's file."""
    if not path.is_file():
        raise RlkitError(f"plugin file {path}: not found")
    if path.suffix != ".py":
        raise RlkitError(f"plugin file {path}: not a .py file; a local plugin is a Python module ending in .py")
    module_name = f"rlkit_local_plugin_{abs(hash(str(path.resolve())))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 -- sys.exit() or KeyboardInterrupt at import: the file's fault
        del sys.modules[module_name]
        raise RlkitError(f"plugin file {path}: failed to import: {type(e).__name__}: {e}") from None
    return module


def _check_pending(pm: pluggy.PluginManager) -> None:
    """A hookimpl that matches no hookspec is almost always a typo: say which name was meant."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        bad = [name for name in vars(pm.hook) if not getattr(pm.hook, name).has_spec()]
        valid = [hook for hook, _ in KINDS.values()]
        for name in bad:
            impls = getattr(pm.hook, name).get_hookimpls()
            plugin = impls[0].plugin_name if impls else "?"
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid hooks: {', '.join(valid)}"
            raise RlkitError(f"plugin {plugin}: unknown hook '{name}' ({hint})") from None
        raise RlkitError(f"plugin validation failed: {e}") from None
