"""Experiment files: a YAML merged over a dataclass schema with OmegaConf.

    experiment = load("experiments/quickstart.yaml", ["stages.rl.steps=10"])

`OmegaConf.merge(structured(Experiment), yaml, dotlist)` turns typos, wrong
types and missing values into errors; `load` rewrites each as one line naming
the file and the full key. A plugin reference is `{name, args}` (rewards add
`weight`); `args` stay free-form here and are bound to the plugin's own
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

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlkit.core.errors import RlkitError

STAGE_ORDER = ("tokenizer", "pretrain", "midtrain", "sft", "rl")


@dataclass
class PluginRef:
    name: str = MISSING  # short name of a plugin (`rlkit plugins` lists them)
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the plugin


@dataclass
class RewardRef(PluginRef):
    weight: float = 1.0  # the total reward is the weighted sum


@dataclass
class TextData:
    source: str = MISSING  # a task name, a local path (relative to the YAML), or a hub dataset id
    args: dict[str, Any] = field(default_factory=dict)  # task args, or load_dataset kwargs
    text_field: str = "text"  # the column holding text in JSONL/parquet/hub data
    split: str = "train"


@dataclass
class ModelConfig:
    depth: int = 4  # the one dial: width = depth*64, heads = width/64
    seq_len: int = 512  # context length
    dtype: str = "auto"  # auto (bf16 where fast) | float32 | bfloat16
    compile: str = "auto"  # torch.compile the training forward: auto (on CUDA, where it pays) | true | false


@dataclass
class TrackingConfig:
    repo: str = ".aim"  # Aim repository, relative to the directory rlkit runs in
    enabled: bool = True


@dataclass
class TokenizerStage:
    vocab_size: int = 32768  # includes the special tokens
    data: TextData = field(default_factory=TextData)
    max_chars: int = 2_000_000_000  # stop reading text after this many characters


@dataclass
class PretrainStage:
    data: TextData = field(default_factory=TextData)
    steps: int = 1000  # optimizer steps
    total_batch_tokens: int = 524288  # tokens per optimizer step, all ranks; accumulation is derived
    device_batch_size: int = 32  # rows per forward pass
    optimizer: PluginRef = field(default_factory=lambda: PluginRef(name="muon"))
    warmup_steps: int = 0
    warmdown_frac: float = 0.2  # fraction of steps at the end where lr falls linearly
    final_lr_frac: float = 0.0
    eval_every: int = 250  # bits-per-byte on held-out text every N steps (0: only at the end)
    eval_tokens: int = 65536
    log_every: int = 10
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    init: Optional[str] = None  # start from this checkpoint instead of the previous stage


@dataclass
class MidtrainStage:
    tasks: list[PluginRef] = field(default_factory=list)  # conversation mixture, packed
    steps: int = 200
    total_batch_tokens: int = 524288
    device_batch_size: int = 32
    optimizer: PluginRef = field(default_factory=lambda: PluginRef(name="muon"))
    warmup_steps: int = 0
    warmdown_frac: float = 0.2
    final_lr_frac: float = 0.0
    init_lr_frac: float = 1.0  # scale every group's lr by this
    log_every: int = 10
    save_every: int = 0
    init: Optional[str] = None


@dataclass
class SFTStage:
    task: PluginRef = field(default_factory=PluginRef)
    steps: int = 200
    examples_per_step: int = 32  # conversations per optimizer step, all ranks
    device_batch_size: int = 8
    optimizer: PluginRef = field(default_factory=lambda: PluginRef(name="muon"))
    init_lr_frac: float = 0.02
    warmdown_frac: float = 1.0  # nanochat's sft ramps lr down linearly over the whole stage
    eval_examples: int = 200  # greedy accuracy on held-out problems at the end (0: skip)
    eval_reward: PluginRef = field(default_factory=lambda: PluginRef(name="gsm8k"))  # scores that accuracy
    eval_max_new_tokens: int = 128
    log_every: int = 10
    save_every: int = 0
    init: Optional[str] = None


@dataclass
class Rollout:
    samples: int = 16  # completions per prompt (the group size G)
    temperature: float = 1.0
    top_k: int = 50  # 0 keeps the whole vocabulary
    max_new_tokens: int = 256


@dataclass
class RLEval:
    every: int = 60  # pass@k on held-out problems every N steps (0: only before and after)
    examples: int = 400
    k: int = 8  # samples per problem: pass@1..k
    reward: PluginRef = field(default_factory=lambda: PluginRef(name="gsm8k"))  # decides "correct"


@dataclass
class RLStage:
    task: PluginRef = field(default_factory=PluginRef)
    algorithm: PluginRef = field(default_factory=lambda: PluginRef(name="grpo"))
    rewards: list[RewardRef] = field(default_factory=list)
    optimizer: PluginRef = field(default_factory=lambda: PluginRef(name="muon"))
    rollout: Rollout = field(default_factory=Rollout)
    steps: int = 500
    examples_per_step: int = 16  # prompts per step, all ranks
    device_batch_size: int = 8  # sequences per forward/backward micro-batch
    init_lr_frac: float = 0.05
    reward_timeout: float = 10.0  # seconds one reward call may take on one completion (0: no limit)
    log_every: int = 1
    save_every: int = 60
    eval: RLEval = field(default_factory=RLEval)
    init: Optional[str] = None


@dataclass
class Stages:
    tokenizer: Optional[TokenizerStage] = None
    pretrain: Optional[PretrainStage] = None
    midtrain: Optional[MidtrainStage] = None
    sft: Optional[SFTStage] = None
    rl: Optional[RLStage] = None


@dataclass
class Experiment:
    name: str = MISSING
    seed: int = 42  # fixes data order, sampling and init
    device: str = "auto"  # auto | cpu | cuda | mps
    run_dir: str = "runs/${name}"  # where checkpoints, config and report go
    plugins: list[str] = field(default_factory=list)  # local plugin files, relative to the YAML
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stages: Stages = field(default_factory=Stages)


def load(path: str | Path, overrides: list[str] = ()) -> DictConfig:
    """Read an experiment file, apply `key=value` overrides, validate against the schema."""
    path = Path(path)
    if not path.is_file():
        raise RlkitError(f"{path}: experiment file not found")
    user = _read_yaml(path)
    _check_shapes(Experiment, user, f"{path}: ")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Experiment), OmegaConf.create(user))
    except OmegaConfBaseException as e:
        raise RlkitError(f"{path}: {_explain(e)}") from None
    for item in overrides:
        _apply_override(cfg, item)
    try:
        _check_missing(cfg, f"{path}: ")
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise RlkitError(f"{path}: {_explain(e)}") from None
    cfg._set_flag("readonly", False)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _apply_override(cfg: DictConfig, item: str) -> None:
    """Apply one `key=value` (value parsed as YAML) onto the validated config."""
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise RlkitError(f"command line: '{item}' is not an override; write key=value, e.g. seed=1")
    try:
        value = yaml.load(text, Loader=_StrictLoader) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    try:
        OmegaConf.update(cfg, key.strip(), value, merge=True)
    except (OmegaConfBaseException, TypeError, ValueError, IndexError) as e:
        none_parent = re.search(r"because '([^']+)' is None", str(e))
        if none_parent:
            raise RlkitError(f"command line: {key}: '{none_parent.group(1)}' is not in the experiment file; "
                             "add it there first") from None
        if isinstance(e, OmegaConfBaseException):
            raise RlkitError(f"command line: {_explain(e)}") from None
        raise RlkitError(f"command line: {key}: cannot set to {text!r} ({_first_line(e)})") from None


def stages_to_run(cfg: DictConfig) -> list[str]:
    """The configured stages in pipeline order."""
    return [s for s in STAGE_ORDER if cfg.stages.get(s) is not None]


class _StrictLoader(yaml.SafeLoader):
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


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _read_yaml(path: Path) -> dict:
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=_StrictLoader)
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
        raise RlkitError(f"{where}.{_explain(e)}") from None


def _unwrap_optional(kind):
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def _check_missing(cfg: DictConfig, prefix: str) -> None:
    """OmegaConf only complains about '???' when a value is read; read them all now."""
    for key in cfg:
        full = f"{prefix}{key}"  # prefix carries the file name on the outermost call
        if OmegaConf.is_missing(cfg, key):
            raise RlkitError(f"{full}: missing required value")
        value = cfg[key]
        if isinstance(value, DictConfig):
            _check_missing(value, full + ".")
        elif OmegaConf.is_list(value):
            for i, item in enumerate(value):
                if isinstance(item, DictConfig):
                    _check_missing(item, f"{full}[{i}].")


def _explain(e: OmegaConfBaseException) -> str:
    """One line: the full key and what is wrong, with a 'did you mean' for unknown keys."""
    key = getattr(e, "full_key", None) or ""
    msg = _first_line(e)
    if isinstance(e, RlkitError):
        return str(e)
    unknown = re.match(r"Key '([^']+)' not in '([^']+)'", msg)
    if unknown:
        bad = unknown.group(1)
        valid = _valid_keys(key)
        close = difflib.get_close_matches(bad, valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return f"{key}: no such key ({hint})"
    if "Value '" in msg and ("could not be converted" in msg or "is not a valid" in msg):
        return f"{key}: {msg.split('    ')[0]}"
    if "Missing mandatory value" in msg:
        return f"{key}: missing required value"
    return f"{key}: {msg}" if key else msg


def _valid_keys(full_key: str) -> list[str]:
    """The schema's keys at the parent of `full_key` (e.g. stages.rl.stepz -> RLStage fields)."""
    node: Any = OmegaConf.structured(Experiment)
    parts = [p for p in re.split(r"\.|\[\d+\]", full_key) if p][:-1]
    types = {"tokenizer": TokenizerStage, "pretrain": PretrainStage, "midtrain": MidtrainStage,
             "sft": SFTStage, "rl": RLStage}
    for part in parts:
        if part in types and isinstance(node, DictConfig) and part in node and node[part] is None:
            node = OmegaConf.structured(types[part])
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            return []
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
