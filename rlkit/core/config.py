"""Experiment files: a YAML merged over a dataclass schema with OmegaConf.

    experiment = load("experiments/quickstart.yaml", ["stages.rl.steps=10"])

`OmegaConf.merge(structured(Experiment), yaml, dotlist)` turns typos, wrong types and missing values into
errors; `load` rewrites each as one line naming the file and the full key. A plugin reference is
`{name, args}` (rewards add `weight`); `args` stay free-form here and are bound to the plugin's own
signature by rlkit.core.plugins.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.core.errors import RlkitError, first_line
from rlkit.core.overrides import apply_override
from rlkit.core.stage import bounded, check_fields, one_of
from rlkit.core.yamlfile import read_profile

@dataclass
class PluginRef:
    name: str = MISSING  # short name of a plugin (`rlkit plugins` lists them)
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the plugin


@dataclass
class RewardRef(PluginRef):
    weight: float = 1.0  # the total reward is the weighted sum


def plugin(kind: str, name: str = MISSING, ref: type = PluginRef):
    """A stage config field holding one plugin reference of `kind`; core checks its name and args up
    front. `name` is the plugin's default, MISSING to make the YAML choose one."""
    return field(default_factory=lambda: ref(name=name), metadata={"kind": kind})


def optional_plugin(kind: str):
    """A stage config field holding one plugin reference of `kind` or nothing (None: the stage decides)."""
    return field(default=None, metadata={"kind": kind})


def plugin_list(kind: str):
    """A stage config field holding a list of plugin references of `kind` (e.g. rewards, tasks)."""
    return field(default_factory=list, metadata={"kind": kind})


@dataclass
class ModelConfig:
    name: Optional[str] = None  # a model plugin; left out: the one plugin whose args the other keys are
    args: dict[str, Any] = field(default_factory=dict)  # the model plugin's own arguments (e.g. depth)
    seq_len: int = bounded(512, ge=1)  # context length
    dtype: str = one_of("auto", ("auto", "float32", "bfloat16"))  # auto: bf16 where fast
    compile: str = one_of("auto", ("auto", "true", "false"))  # torch.compile the training forward (auto: CUDA)


@dataclass
class ParallelConfig:  # how training spans the ranks (rlkit.lib.training.parallel); one process: no difference
    # ddp: a full replica per rank | fsdp: weights, gradients, optimizer sharded (FSDP2)
    strategy: str = one_of("ddp", ("ddp", "fsdp"))
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    cpu_offload: bool = False  # fsdp: shards and optimizer state in host memory


@dataclass
class TrackingConfig:
    repo: str = ".aim"  # Aim repository, relative to the directory rlkit runs in
    enabled: bool = True


@dataclass
class Experiment:
    name: str = MISSING
    seed: int = 42  # fixes data order, sampling and init
    device: str = one_of("auto", ("auto", "cpu", "cuda", "mps"))
    run_dir: str = "runs/${name}"  # where checkpoints, config and report go
    plugins: list[str] = field(default_factory=list)  # local plugin files, relative to the YAML
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mfu_peak_flops: Optional[float] = None  # MFU's peak FLOP/s; None: this device kind's recorded matmul peak
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # entry name -> {kind: <stage plugin> (default: the name), init: PATH, ...the stage's own keys};
    # run in this order; each entry is checked against its stage's config dataclass (entry_config)
    stages: dict[str, Any] = field(default_factory=dict)


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
ENTRY_KEYS = ("kind", "init")  # keys every stage entry may hold, besides its stage's own


def load(path: str | Path, overrides: list[str] = ()) -> DictConfig:
    """Read an experiment file, apply `key=value` overrides, validate the top level against the schema.
    Stage entries are checked against their stage's own dataclass once plugins are known (entry_config)."""
    path = Path(path)
    if not path.is_file():
        raise RlkitError(f"{path}: experiment file not found")
    user = read_profile(path)
    _check_shapes(Experiment, user, f"{path}: ")
    if isinstance(user.get("model"), dict):  # the flat form `model: {depth: 4}`: other keys are the args
        user["model"] = _nest_model_args(user["model"])
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Experiment), OmegaConf.create(user))
    except OmegaConfBaseException as e:
        raise RlkitError(f"{path}: {_explain(e, Experiment)}") from None
    OmegaConf.set_struct(cfg.stages, False)  # entries are free-form here: their stage's schema checks them
    for item in overrides:
        apply_override(cfg, item, lambda e: _explain(e, Experiment), MODEL_KEYS)
    if not 0 <= cfg.seed < 2**32:
        raise RlkitError(f"{path}: seed: {cfg.seed} is out of range; valid: 0 .. {2**32 - 1}")
    try:
        _check_missing(cfg, f"{path}: ")
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise RlkitError(f"{path}: {_explain(e, Experiment)}") from None
    typed = OmegaConf.to_object(cfg)
    typed.model.compile = typed.model.compile.lower()  # model.compile=true on the command line arrives as 'True'
    check_fields(typed, f"{path}: ")  # (the config keeps the value as given: a resumed run compares equal)
    cfg._set_flag("readonly", False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _nest_model_args(model: dict) -> dict:
    flat = {k: v for k, v in model.items() if k not in MODEL_KEYS}
    return {k: v for k, v in model.items() if k in MODEL_KEYS} | ({"args": {**model.get("args", {}), **flat}}
                                                                   if flat else {})


def stages_to_run(cfg: DictConfig) -> list[str]:
    """The configured stage entries in YAML order (an entry set to null is left out)."""
    return [name for name in cfg.stages if cfg.stages[name] is not None]


def entry_kind(cfg: DictConfig, name: str) -> str:
    """An entry's stage kind: its `kind:` key, else its name."""
    entry = cfg.stages[name]
    return str(entry.get("kind") or name) if isinstance(entry, DictConfig) else name


def entry_config(schema: type, name: str, entry, where: str, kinds: dict[str, dict]):
    """Check one stage entry against its stage's dataclass: (typed config object, merged DictConfig). `where`
    prefixes errors (file: stages.<name>); `kinds`: plugin kind -> installed names, listed for a missing choice."""
    raw = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry or {})
    if not isinstance(raw, dict):
        raise RlkitError(f"{where}: expected a mapping of the stage's keys, got {raw!r}")
    raw = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    _check_shapes(schema, raw, f"{where}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(raw))
    except OmegaConfBaseException as e:
        raise RlkitError(f"{where}.{_explain(e, schema, extra=ENTRY_KEYS)}") from None
    _check_choices(schema, merged, f"{where}.", kinds)
    try:
        _check_missing(merged, f"{where}.")
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise RlkitError(f"{where}.{_explain(e, schema)}") from None
    check_fields(typed, f"{where}.")
    return typed, merged


def plugin_refs(obj, prefix: str = ""):
    """(key, kind, PluginRef) for every plugin reference a typed stage config holds, nested ones included."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if "kind" in f.metadata:
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else \
                [(key, value)] if value is not None else []
            yield from ((at, f.metadata["kind"], ref) for at, ref in items)
        elif dataclasses.is_dataclass(value):
            yield from plugin_refs(value, key + ".")


def _check_choices(schema: type, node: DictConfig, prefix: str, kinds: dict[str, dict]) -> None:
    """A plugin reference left without a name: say which plugins could go there."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind, sub, sub_type = f.metadata.get("kind"), node.get(f.name), _unwrap_optional(hints[f.name])
        if kind and isinstance(sub, DictConfig) and OmegaConf.is_missing(sub, "name"):
            names = ", ".join(sorted(kinds.get(kind, ()))) or "none are installed"
            raise RlkitError(f"{prefix}{f.name}.name: missing; choose a {kind} plugin ({names})")
        if not kind and dataclasses.is_dataclass(sub_type) and isinstance(sub, DictConfig):
            _check_choices(sub_type, sub, f"{prefix}{f.name}.", kinds)


def _choices(schema: type, key: str) -> tuple:
    return next((f.metadata.get("choices", ()) for f in dataclasses.fields(schema) if f.name == key), ())


def _check_shapes(schema: type, data: dict, prefix: str) -> None:
    """Sections must be mappings and lists must be lists, checked on the raw YAML so the error names the
    full key (OmegaConf loses the path inside list items and for a scalar given where a section belongs)."""
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        if key not in hints or value is None or (isinstance(value, str) and value.startswith("${")):
            continue  # unknown keys and interpolations are reported by the merge itself
        kind, where = _unwrap_optional(hints[key]), f"{prefix}{key}"
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                keys = ", ".join(f.name for f in dataclasses.fields(kind))
                raise RlkitError(f"{where}: expected a mapping with keys ({keys}), got {value!r}")
            _check_shapes(kind, value, where + ".")
        elif typing.get_origin(kind) is list:
            if not isinstance(value, list):
                raise RlkitError(f"{where}: expected a list (- item per line, or [a, b]), got {value!r}")
            (item_kind,) = typing.get_args(kind)
            if dataclasses.is_dataclass(item_kind):
                for i, item in enumerate(value):
                    _check_item(item_kind, item, f"{where}[{i}]")
        elif kind is str and isinstance(value, bool):
            if str(value).lower() in _choices(schema, key):  # compile: true means the word true
                data[key] = str(value).lower()
                continue
            raise RlkitError(f"{where}: YAML reads this word as {str(value).lower()} (yes/no/on/off/true/false are "
                             f"booleans); quote it to mean the text, e.g. {key}: 'no'")
        elif typing.get_origin(kind) is dict and not isinstance(value, dict):
            raise RlkitError(f"{where}: expected a mapping of key: value, got {value!r}")


def _check_item(kind: type, item, where: str) -> None:
    """One list item against its dataclass, with the item's full path in the message."""
    if not isinstance(item, dict):
        keys = ", ".join(f.name for f in dataclasses.fields(kind))
        raise RlkitError(f"{where}: expected a mapping with keys ({keys}), got {item!r}")
    _check_shapes(kind, item, where + ".")
    try:
        OmegaConf.merge(OmegaConf.structured(kind), item)
    except OmegaConfBaseException as e:
        raise RlkitError(f"{where}.{_explain(e, kind)}") from None


def _unwrap_optional(kind):
    args = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) is typing.Union else ()
    return args[0] if len(args) == 1 else kind


def _check_missing(cfg: DictConfig, prefix: str) -> None:
    """OmegaConf only complains about '???' when a value is read; name the first one now."""
    if missing := OmegaConf.missing_keys(cfg):
        raise RlkitError(f"{prefix}{min(missing)}: missing required value")  # prefix: the file, the entry


def _explain(e: OmegaConfBaseException, schema: type, extra: tuple = ()) -> str:
    """One line: the full key and what is wrong, with a 'did you mean' for unknown keys of `schema`."""
    key = getattr(e, "full_key", None) or ""
    msg = first_line(e)
    if isinstance(e, RlkitError):
        return str(e)
    unknown = re.match(r"Key '([^']+)' not in '([^']+)'", msg)
    if unknown:
        bad = unknown.group(1)
        valid = _valid_keys(schema, key) + (list(extra) if "." not in key else [])
        close = difflib.get_close_matches(bad, valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return f"{key}: no such key ({hint})"
    wrong_type = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if wrong_type:
        valid = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}
        return f"{key}: {wrong_type.group(1)!r} is not {valid.get(wrong_type.group(2), wrong_type.group(2))}"
    if "Value '" in msg and ("could not be converted" in msg or "is not a valid" in msg):
        return f"{key}: {msg.split('    ')[0]}"
    if "Missing mandatory value" in msg:
        return f"{key}: missing required value"
    return f"{key}: {msg}" if key else msg


def _valid_keys(schema: type, full_key: str) -> list[str]:
    """The schema's keys at the parent of `full_key` (e.g. rollout.samplez -> Rollout's fields)."""
    node: Any = OmegaConf.structured(schema)
    for part in [p for p in re.split(r"\.|\[\d+\]", full_key) if p][:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            return []
    return list(node.keys()) if isinstance(node, DictConfig) else []

def config_diff(values: list, prefix: str = "") -> list[dict]:
    """[{key: dotted key, values: one per run}] where the runs' configs differ, descending into sections
    while every run has one (a section one run leaves out is a single row; absent and null are both None)."""
    if all(isinstance(v, dict) for v in values):
        keys = sorted({k for v in values for k in v})
        return [row for k in keys for row in config_diff([v.get(k) for v in values], f"{prefix}{k}.")]
    if len({repr(v) for v in values}) == 1:
        return []
    return [{"key": prefix.rstrip("."), "values": values}]
