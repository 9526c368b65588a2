"""Reading an experiment YAML as data only: no tags that build Python objects, no duplicate keys, and
1e-4 read as a float (as OmegaConf does; YAML 1.1 alone wants 1.0e-4). Errors name the file and line."""
import re
from pathlib import Path

import yaml

from rlkit.core.errors import RlkitError


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
