"""Reading an experiment YAML as data only: no tags that build Python objects, no duplicate keys, and
1e-4 read as a float (as OmegaConf does; YAML 1.1 alone wants 1.0e-4). Errors name the file and line.

Profiles. A file may start from others: `defaults: gsm8k.yaml` (or a list, relative to the file) reads
those first and merges this file's keys over them, mapping by mapping. A mapping tagged `!replace`
takes the place of the one below instead of merging into it, so a key it leaves out is gone:
    data: {source: gsm8k, args: !replace {path: ../shared/data/gsm8k}}   # drops the base's args.name
"""
import re
from pathlib import Path

import yaml

from rlkit.core.errors import RlkitError


class Replace(dict):
    """A mapping tagged `!replace`: merged over another, it takes that one's place whole."""


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load (data only: no tags that build Python objects) that rejects duplicate keys and, like
    OmegaConf's loader, reads 1e-4 as a float (YAML 1.1 alone wants 1.0e-4)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


StrictLoader.add_constructor("!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def read_yaml(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise RlkitError(f"{path}: not UTF-8 text at line {line} (byte {raw[e.start]:#04x}); save the file as UTF-8") \
            from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RlkitError(f"{path}: YAML syntax error{line}: {problem}") from None
    if data is None:
        raise RlkitError(f"{path}: the file is empty; it needs at least `name:` and `stages:`")
    if not isinstance(data, dict):
        raise RlkitError(f"{path}: expected a mapping of keys (name, seed, model, stages, ...) at the top")
    return data


def read_profile(path: Path, seen: tuple = ()) -> dict:
    """The experiment file with its `defaults:` merged under it (see the top); a cycle is an error."""
    path = Path(path)
    if path.resolve() in seen:
        raise RlkitError(f"{path}: defaults: includes itself (through {' -> '.join(p.name for p in seen)})")
    data = read_yaml(path)
    bases = data.pop("defaults", None)
    if bases is None:
        return plain(data)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RlkitError(f"{path}: defaults: expected a file name or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        file = path.parent / base
        if not file.is_file():
            raise RlkitError(f"{path}: defaults: {base}: no such file (relative to {path.parent})")
        merged = merge(merged, read_profile(file, (*seen, path.resolve())))
    return merge(merged, data)


def merge(below: dict, above: dict) -> dict:
    """`above` over `below`, mapping by mapping; an `above` mapping tagged !replace (or a non-mapping) wins whole."""
    out = dict(below)
    for key, value in above.items():
        if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = plain(value)
    return out


def plain(value):
    """A value with its Replace tags turned back into plain dicts (what OmegaConf takes)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
