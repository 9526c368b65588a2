"""Command-line overrides of an experiment: `key=value`, `key=!replace {...}` and `~key`.

    seed=1                                    set a value (parsed as YAML); a mapping merges into the one there
    stages.rl.optimizer=!replace {name: adamw}   replace a mapping whole: keys it leaves out are gone
    ~stages.pretrain.data.args.name           delete a key (a free-form one: stage entries, plugin args)

`model.depth=4` is short for `model.args.depth=4`. Errors are one line naming the key and what is valid.
"""
from __future__ import annotations

import re
from typing import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.core.errors import RlkitError, first_line
from rlkit.core.yamlfile import Replace, parse_override, plain


def apply_override(cfg: DictConfig, item: str, explain: Callable, model_keys: tuple) -> None:
    """Apply one override (see the top) onto the loaded config; `explain` words OmegaConf's errors."""
    if item.startswith("~"):
        return _delete(cfg, _full_key(item[1:].strip(), model_keys), item)
    key, value = parse_override(item)
    key = _full_key(key, model_keys)
    text = item.partition("=")[2]
    try:
        OmegaConf.update(cfg, key, plain(value), merge=not isinstance(value, Replace))
    except (OmegaConfBaseException, TypeError, ValueError, IndexError) as e:
        none_parent = re.search(r"because '([^']+)' is None", str(e))
        if none_parent:
            raise RlkitError(f"command line: {key}: '{none_parent.group(1)}' is not in the experiment file; "
                             "add it there first") from None
        if isinstance(e, OmegaConfBaseException):
            raise RlkitError(f"command line: {explain(e)}") from None
        raise RlkitError(f"command line: {key}: cannot set to {text!r} ({first_line(e)})") from None


def _full_key(key: str, model_keys: tuple) -> str:
    parts = key.split(".")
    if parts[0] == "model" and len(parts) > 1 and parts[1] not in model_keys:  # model.depth: a model arg
        return ".".join(["model", "args", *parts[1:]])
    return key


def _delete(cfg: DictConfig, key: str, item: str) -> None:
    """`~key`: remove the key from its mapping (or the item from its list)."""
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, ListConfig) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
        return
    if not isinstance(parent, DictConfig) or last not in parent:
        raise RlkitError(f"command line: {item}: there is no '{key}' in the experiment to delete")
    try:
        del parent[last]
    except OmegaConfBaseException:
        raise RlkitError(f"command line: {item}: '{key}' is part of the schema and cannot be deleted; "
                         f"set it instead ({key}=...)") from None
