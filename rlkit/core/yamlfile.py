"""Reading an experiment YAML as data only: no tags that build Python objects, no duplicate keys, and
1e-4 read as a float (as OmegaConf does; YAML 1.1 alone wants 1.0e-4). Errors name the file and line.

Bounded: a file over MAX_BYTES, nesting deeper than MAX_DEPTH, or aliases that expand to more than
MAX_NODES values (a 1 KB "billion laughs" file expands to 10^9) is refused before anything walks the data,
so no input can hang the loader or exhaust Python's stack.

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


class Unbounded(yaml.YAMLError):
    """A document past one of the bounds below."""


MAX_BYTES = 4 * 2**20
MAX_DEPTH = 64
MAX_NODES = 200_000


def load_bounded(text: str):
    """yaml.load(text, StrictLoader), refusing (yaml.YAMLError) a document too deep or too large once its
    aliases are expanded; the sizes are counted on the node graph, each shared node once."""
    loader = StrictLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise Unbounded(f"nests more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_size(root) -> None:
    """Depth and expanded size of a composed node graph, iteratively (post-order, memoised per node)."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values once expanded, depth)
    stack, open_ = [(root, False)], set()
    while stack:
        node, children_done = stack.pop()
        kids = _children(node)
        if children_done:
            open_.discard(id(node))
            size = 1 + sum(sizes[id(k)][0] for k in kids)
            depth = 1 + max((sizes[id(k)][1] for k in kids), default=0)
            if depth > MAX_DEPTH:
                raise Unbounded(f"nests more than {MAX_DEPTH} levels deep")
            if size > MAX_NODES:
                raise Unbounded(f"expands to more than {MAX_NODES} values through its aliases (*name)")
            sizes[id(node)] = (size, depth)
        elif id(node) not in sizes:
            if id(node) in open_:
                raise Unbounded("has an alias (*name) inside the value it names")
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def parse_override(item: str) -> tuple[str, object]:
    """A command-line `key=value` as (key, value): the value is YAML data (bounded), else the text itself;
    yes/no/on/off stay words, so name=no names a run 'no' (a boolean field still takes them)."""
    key, eq, text = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise RlkitError(f"command line: '{item}' is not an override; write key=value, e.g. seed=1")
    if not all(key.split(".")):
        raise RlkitError(f"command line: '{key}' has an empty part (two dots, or a dot at an end); write the full "
                         "key, e.g. stages.rl.steps=10")
    if not text.strip():
        raise RlkitError(f"command line: '{item}' gives {key} no value; write {key}=VALUE ({key}='' for an empty "
                         "string)")
    try:
        value = load_bounded(text)
    except yaml.YAMLError:
        return key, text
    return key, text.strip() if isinstance(value, bool) and text.strip().lower() not in ("true", "false") else value
StrictLoader.add_constructor("!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def read_yaml(path: Path) -> dict:
    if path.stat().st_size > MAX_BYTES:
        raise RlkitError(f"{path}: {path.stat().st_size} bytes; an experiment file may have at most {MAX_BYTES} "
                         "(data belongs in files its stages name)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise RlkitError(f"{path}: not UTF-8 text at line {line} (byte {raw[e.start]:#04x}); save the file as UTF-8") \
            from None
    try:
        data = load_bounded(text)
    except Unbounded as e:
        raise RlkitError(f"{path}: refused: the YAML {e}; an experiment needs far less (at most {MAX_DEPTH} "
                         f"levels, {MAX_NODES} values)") from None
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
