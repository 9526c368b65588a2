"""The layout is the architecture: core never imports a plugin, and every built-in plugin is
registered the way a user's would be, through an entry point in group `rlkit`.
"""
import ast
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
