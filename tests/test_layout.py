"""The layout is the architecture: core never imports a plugin, and every built-in plugin is
registered the way a user's would be, through an entry point in group `rlkit`.
"""
import ast
import re
import importlib.metadata as metadata
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "rlkit" / "core"
PLUGINS = ROOT / "rlkit" / "plugins"
FORBIDDEN = "rlkit.plugins"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every dotted module name an import statement in `source` can bind, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from rlkit import plugins`
    return found


def named_plugin_strings(source: str) -> list[str]:
    """String constants that are dotted plugin paths (e.g. for importlib.import_module)."""
    return [n.value for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith(FORBIDDEN)]


def is_plugin_import(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


@pytest.mark.parametrize("source, module, bad", [
    ("import rlkit.plugins.rewards.gsm8k", "rlkit.core.x", True),
    ("from rlkit.plugins.rewards import gsm8k", "rlkit.core.x", True),
    ("from rlkit import plugins", "rlkit.core.x", True),
    ("from ..plugins import rewards", "rlkit.core.x", True),
    ("from ...plugins.rewards import gsm8k", "rlkit.core.stages.rl", True),
    ("from .. import plugins", "rlkit.core.x", True),
    ("from . import plugins", "rlkit.core.x", False),  # rlkit.core.plugins: the loader, part of core
    ("from ..core import plugins", "rlkit.core.stages.rl", False),
    ("from .plugins import load_plugins", "rlkit.core.pipeline", False),
    ("from . import plugins", "rlkit.core", False),  # inside rlkit/core/__init__.py
])
def test_import_checker_resolves_relative_imports(source, module, bad):
    names = imported_names(source, module, is_package=module == "rlkit.core")
    assert any(is_plugin_import(n) for n in names) is bad, names


def test_core_imports_no_plugin():
    files = sorted(CORE.rglob("*.py"))
    assert files, CORE
    offences = []
    for path in files:
        source = path.read_text()
        names = imported_names(source, module_name(path), is_package=path.name == "__init__.py")
        offences += [f"{path.relative_to(ROOT)} imports {n}" for n in sorted(names) if is_plugin_import(n)]
        offences += [f"{path.relative_to(ROOT)} names {s!r}" for s in named_plugin_strings(source)]
    assert not offences, "rlkit/core must not import or name plugins:\n" + "\n".join(offences)


# the layers, top to bottom: a module may import its own layer and the layers below it, never one above
LAYERS = ["rlkit.cli", "rlkit.plugins", "rlkit.lib", "rlkit.core"]


def layer_of(name: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if name == layer or name.startswith(layer + ".")), None)


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    return sorted(n for n in imported_names(source, module, is_package)
                  if (other := layer_of(n)) is not None and other < own)


@pytest.mark.parametrize("source, module, bad", [
    ("from rlkit.lib.generation import sampling", "rlkit.core.policy", True),
    ("from rlkit.cli import compare", "rlkit.core.pipeline", True),
    ("from ...cli.compare import render", "rlkit.lib.evaluation.evaluate", True),
    ("from rlkit.plugins.tasks import rows", "rlkit.lib.text.task", True),
    ("from rlkit.cli import inference", "rlkit.plugins.stages.rl", True),
    ("from rlkit.core import dist", "rlkit.lib.training.loop", False),
    ("from rlkit.lib.text import task", "rlkit.plugins.tasks.gsm8k", False),
    ("from rlkit.plugins.stages import rl", "rlkit.cli.evalrun", False),
    ("from . import sampling", "rlkit.lib.generation.engine", False),
])
def test_upward_import_checker(source, module, bad):
    assert bool(upward_imports(source, module)) is bad


def test_arrows_point_down_only():
    """cli -> plugins -> lib -> core: no module imports a layer above its own (lazy imports included)."""
    offences, seen = [], set()
    for path in sorted((ROOT / "rlkit").rglob("*.py")):
        module = module_name(path)
        if layer_of(module) is None:
            continue  # rlkit/__init__.py and __main__.py sit above the layers
        seen.add(LAYERS[layer_of(module)])
        offences += [f"{path.relative_to(ROOT)} imports {n}"
                     for n in upward_imports(path.read_text(), module, path.name == "__init__.py")]
    assert seen == set(LAYERS), seen  # the walk finds every layer
    assert not offences, "an import points up a layer:\n" + "\n".join(offences)


def test_old_core_names_still_import():
    """A user's plugin that imports a library module by its pre-split rlkit.core name gets the same module."""
    import importlib
    import warnings

    import rlkit

    for old, new in rlkit.MOVED.items():
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert importlib.import_module(old) is importlib.import_module(new), old


def hook_modules() -> set[str]:
    """Modules under rlkit/plugins that define a top-level rlkit_* function decorated with hookimpl."""
    modules = set()
    for path in sorted(PLUGINS.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("rlkit_") and any(
                    ast.unparse(d).split("(")[0].endswith("hookimpl") for d in node.decorator_list):
                modules.add(module_name(path))
    return modules


def declared_entry_points() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project.get("entry-points", {}).get("rlkit", {})


def test_every_built_in_plugin_is_an_entry_point():
    declared = declared_entry_points()
    modules = hook_modules()
    assert "rlkit.plugins.rewards.gsm8k" in modules  # the walk finds real plugins
    missing = sorted(modules - set(declared.values()))
    assert not missing, f"add to [project.entry-points.rlkit] in pyproject.toml: {missing}"
    stale = sorted(v for v in declared.values() if v not in modules)
    assert not stale, f"entry points naming no plugin module under rlkit/plugins: {stale}"


def test_installed_metadata_matches_pyproject():
    """An editable install keeps the entry points of the day it was installed: refresh it when they change."""
    installed = {ep.name: ep.value for ep in metadata.distribution("rlkit").entry_points if ep.group == "rlkit"}
    assert installed == declared_entry_points(), "run `pip install -e . --no-deps` to refresh the entry points"


def built_in_names() -> set[str]:
    """Every name rlkit's own plugins register, of every kind (stages, models, rewards, ...)."""
    from rlkit.core.plugins import load_plugins

    found = load_plugins()
    own = {i.name for i in found.infos if i.source.startswith("rlkit ")}
    return {n for i in found.infos if i.name in own for names in i.provides.values() for n in names}


# core's own vocabulary that a built-in plugin is also named after: the tokenizer stage trains core's
# tokenizer (rlkit/lib/text/tokenizer.py), which checkpoints and model factories refer to by that word
CORE_WORDS = {"tokenizer", "python"}  # python: the Python RNG's state in a checkpoint (core/rng.py), not the tool


def test_core_names_no_plugin_even_as_a_string():
    """Not even a default: a plugin's name in core's code (a string constant equal to it, or one that starts
    with it and a space or a dot, as in an error text) means core knows that plugin."""
    names = built_in_names() - CORE_WORDS
    assert {"gpt", "rl", "muon", "gsm8k", "arithmetic"} <= names  # the walk finds real plugins
    offences = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = set(re.findall(r"[A-Za-z_][\w-]*", node.value)) if len(node.value) < 40 else set()
                hit = sorted((words if node.value.strip() == node.value and " " not in node.value else set())
                             & names) or sorted({node.value} & names)
                offences += [f"{path.relative_to(ROOT)}:{node.lineno} names {h!r} in {node.value!r}" for h in hit]
    assert not offences, "rlkit/core must not name plugins:\n" + "\n".join(offences)


def decode_calls(source: str) -> list[str]:
    """What a decode loop must call, as written in `source`: a Decoder's step/step_join/prefill/join (on a
    receiver named like a decoder), the sampler's draw, or torch.multinomial."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in {"step", "step_join", "prefill", "join"} \
                and "decoder" in ast.unparse(f.value).lower():
            found.append(ast.unparse(f))
        elif isinstance(f, ast.Attribute) and f.attr == "multinomial":
            found.append(ast.unparse(f))
        elif isinstance(f, ast.Name) and f.id in {"draw", "multinomial"}:
            found.append(f.id)
    return found


@pytest.mark.parametrize("source,calls", [
    ("for t in range(n):\n    logits = decoder.step(tok)\n    tok = draw(logits, k, t, s)", ["decoder.step", "draw"]),
    ("tok = torch.multinomial(p, 1)", ["torch.multinomial"]),
    ("self.decoder.step_join(t, i, l, s, m)", ["self.decoder.step_join"]),
    ("env.step(text)\nopt.step()", []),
])
def test_decode_calls_are_found(source, calls):
    assert sorted(decode_calls(source)) == sorted(calls)


def test_one_decode_loop_in_the_codebase():
    """Only rlkit/lib/generation/loop.py steps a decoder or draws tokens: rollouts, evals, chat and serve all
    run that one loop (through sampling.generate or engine.Engine)."""
    where = {str(p.relative_to(ROOT)): calls for p in sorted((ROOT / "rlkit").rglob("*.py"))
             if (calls := decode_calls(p.read_text()))}
    assert set(where) == {"rlkit/lib/generation/loop.py"}, where


def test_files_fit_300_lines_and_functions_a_screen():
    """Small, readable files: none in rlkit/ over 300 lines, no function over 60."""
    long_files, long_functions = [], []
    for path in sorted((ROOT / "rlkit").rglob("*.py")):
        source = path.read_text()
        if source.count("\n") > 300:
            long_files.append(str(path.relative_to(ROOT)))
        long_functions += [f"{path.relative_to(ROOT)}:{node.name}" for node in ast.walk(ast.parse(source))
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and node.end_lineno - node.lineno + 1 > 60]
    assert not long_files and not long_functions, (long_files, long_functions)
