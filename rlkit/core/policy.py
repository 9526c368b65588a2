"""The policy contract: what stages and the sampler may ask of a model plugin, and nothing more.

A model plugin's factory(tokenizer, seq_len, **args) returns a Policy: a torch nn.Module with
    model(idx (B, T), targets (B, T) | None, loss_reduction="mean" | "none")
        -> logits (B, T, V) float32, or the cross-entropy loss: the mean over targets != -1, or
           with "none" a (B, T) tensor that is 0 where the target is -1 (minus the sampled
           tokens' log-probs, which RL trains on);
    param_roles() -> {"matrix" | "embedding" | "unembedding" | "scalar": [Parameter]}  (optional:
        rlkit.lib.training.optim guesses from module types otherwise);
    flops_per_token() -> int: training FLOPs per token, for MFU (optional: 6 x parameters);
    spec() -> dict: JSON-serialisable args with which the same factory rebuilds the same
        architecture (the checkpoint stores them; weights come from the state dict);
    decoder(dtype) -> Decoder: the sampler's access to generation (below);
    tokenizer: only when the plugin brings its own (factory called with tokenizer=None); a tokenizer may
        report `tool_tokens` (ToolTokens, below), the only way the engine knows tool calls.
A Policy may also have `shard_units() -> [nn.Module]`: the modules `parallel.strategy: fsdp` shards one by
one (its blocks; rlkit.lib.training.parallel falls back to the items of the largest ModuleList), `export(folder,
tokenizer) -> list[str]` (`rlkit export`: write a folder transformers loads; returns notes), and
`adapter_free() -> context manager | None`: for a policy trained through adapters
(LoRA), a context inside which its forward computes the base model with the adapters off, without a copy
(None when it has none); a KL reference that is the base model is then the policy itself inside it.
A factory may also carry `factory.check(seq_len, **args)`: checks that need no weights (a model folder that
exists, a chat template), run by `rlkit check` before any stage.
Nothing outside the model plugin touches a model's modules or buffers.

A Decoder owns its KV cache; the generation engine's one decode loop (rlkit.lib.generation.loop) drives it
for rollouts, evaluation, chat and serving:
    prefill(idx (P, Tp) right-padded, lens (P,), samples G, max_new) -> logits (P, V) float32 of
        each prompt's first new token; the P * G rows that follow (prompt-major) share the prompt;
    step(tokens (n,)) -> logits (n, V) float32 after each active row's newest token;
    keep(rows (m,)) -> None: only these active rows (indices into the active rows) go on, in that order;
    join(idx (P, Tp) right-padded, lens (P,), samples G, max_new) -> logits (P, V) float32 (optional,
        for serving: rlkit.lib.generation.engine): like prefill, but the P * G new rows are appended after the
        rows already decoding (rows may then be at different positions); the first join, or a join after
        keep() of no rows, starts a batch. Without it the engine starts a batch by prefill once the
        last one has ended;
    step_join(tokens (n,), idx, lens, samples G, max_new) -> logits (n + P, V) float32 (optional, with
        join): step(tokens) and join(idx, lens, G, max_new) in one forward: the n active rows' logits,
        then the P prompts'; the engine then prefills arriving requests inside its decode steps;
    max_len: positions a prompt plus its completion may take;
    logit_softcap: float or None: the sampler applies softcap * tanh(logit / softcap) to the
        top-k candidates only (monotone: the same candidates), so logits come before the cap.
Returned logits may live in a buffer reused by the next call.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rlkit.core.errors import RlkitError
from rlkit.core.plugins import Plugins, bind_args

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ToolTokens:
    """How a tokenizer marks a tool call (the `tool_tokens` a tokenizer reports; None: it has no tool format).

    A call is the tokens the model samples between call_start and call_end; the tool's output is forced
    after call_end as output_start + the output's tokens + output_end. json_calls: the call text is
    {"name": tool, "arguments": {...}} (Hermes/Qwen); else the whole text goes to the entry's first tool.
    """
    call_start: int
    call_end: int
    output_start: tuple[int, ...]
    output_end: tuple[int, ...]
    json_calls: bool = False


class Decoder(Protocol):
    max_len: int
    logit_softcap: float | None

    def prefill(self, idx: torch.Tensor, lens: torch.Tensor, samples: int, max_new: int) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def keep(self, rows: torch.Tensor) -> None: ...

    # optional: def join(self, idx, lens, samples, max_new) -> torch.Tensor (see the module docstring)
    # optional: def step_join(self, tokens, idx, lens, samples, max_new) -> torch.Tensor


@runtime_checkable
class Policy(Protocol):
    def __call__(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                 loss_reduction: str = "mean") -> torch.Tensor: ...

    def spec(self) -> dict: ...

    def decoder(self, dtype: torch.dtype) -> Decoder: ...

    # optional: def export(self, folder, tokenizer) -> list[str]
    # optional: def adapter_free(self) -> contextlib.AbstractContextManager | None (see the module docstring)


def flops_per_token(model) -> int:
    """The model's own count, else 6 x parameters (forward + backward of every weight, attention left out)."""
    own = getattr(model, "flops_per_token", None)
    return int(own()) if callable(own) else 6 * sum(p.numel() for p in model.parameters())


def model_name(plugins: Plugins, name: str | None, args: dict, where: str) -> str:
    """The model plugin to use: `name`, else the one installed model plugin whose arguments `args` are
    (so the flat `model: {depth: 4}` picks the plugin that takes `depth`)."""
    table = plugins.tables["model"]
    if name is not None:
        bind_args("model", name, plugins.get("model", name, f"{where}.name"), args, f"{where}.args")
        return name
    fits = [n for n, fn in sorted(table.items()) if _accepts(fn, args)]
    if len(fits) == 1:
        return fits[0]
    which = f"these take {', '.join(sorted(args))}: {', '.join(fits)}" if fits else \
        f"none takes {', '.join(sorted(args))}; installed: {', '.join(sorted(table)) or 'none'}"
    raise RlkitError(f"{where}.name: missing; name the model plugin ({which})")


def check_model(plugins: Plugins, name: str | None, args: dict, seq_len: int, where: str) -> None:
    """A model plugin's own up-front check, if its factory has one: `factory.check(seq_len, **args)`, which
    raises RlkitError (say a missing model folder) before any stage runs."""
    check = getattr(plugins.tables["model"].get(name), "check", None) if name is not None else None
    if callable(check):
        try:
            check(seq_len, **args)
        except RlkitError as e:
            raise RlkitError(f"{where}.args: {e}") from None


def load(plugins: Plugins, handle, seq_len: int | None = None, where: str = "checkpoint", device="cpu"):
    """(model with the checkpoint's weights, tokenizer) from a Checkpoint handle (rlkit.core.handoff): its model
    plugin rebuilt from the recorded spec, for stages and for commands (export, eval, chat) alike. seq_len
    defaults to the one the checkpoint was trained with."""
    from rlkit.core import checkpoint as ckpt

    if handle.path is None or not handle.model:
        raise RlkitError(f"{where}: {handle.path or 'that folder'} holds no model weights (a tokenizer only?)")
    tokenizer = load_tokenizer(plugins, handle.tokenizer, where) if handle.tokenizer is not None else None
    name, spec = handle.model["name"], handle.model["args"]
    model, tokenizer = build(plugins, name, spec, tokenizer, seq_len or handle.model.get("seq_len") or 512, where)
    state, _, _ = ckpt.load_checkpoint(handle.path, load_optimizer=False, verify=not handle.verified)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RlkitError(f"{where}: checkpoint {handle.path} does not fit the model "
                         f"({str(e).splitlines()[0]}); the vocabulary or shape differs") from None
    return model.to(device), tokenizer


def load_tokenizer(plugins: Plugins, folder, where: str):
    """The tokenizer saved in `folder` (what a checkpoint refers to), read by the tokenizer plugin that its
    tokenizer.json names as "kind"; a folder that names none (saved before kinds were recorded) is read by
    the one tokenizer plugin installed."""
    folder = Path(folder)
    try:
        kind = json.loads((folder / "tokenizer.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # missing or damaged: the loader says which, in its own words
    table = plugins.tables["tokenizer"]
    if kind is None and len(table) == 1:
        kind = next(iter(table))
    if kind is None:
        raise RlkitError(f"{where}: {folder / 'tokenizer.json'} names no tokenizer kind and "
                         f"{len(table)} tokenizer plugins are installed ({', '.join(sorted(table)) or 'none'})")
    return plugins.get("tokenizer", kind, f"{where}: {folder}")(folder)


def differs(saved, asked) -> bool:
    """Whether a value the YAML asks for contradicts the checkpoint's: dicts compare on the keys both hold."""
    if isinstance(saved, dict) and isinstance(asked, dict):
        return any(differs(saved[k], v) for k, v in asked.items() if k in saved)
    return saved != asked


def _accepts(fn, args: dict) -> bool:
    try:
        inspect.signature(fn).bind(None, None, **args)
        return True
    except TypeError:
        return False


def build(plugins: Plugins, name: str, args: dict, tokenizer, seq_len: int, where: str):
    """factory(tokenizer, seq_len, **args) -> (policy, tokenizer): the run's, or the one the model brings."""
    factory = plugins.get("model", name, f"{where}.name")
    try:
        model = factory(tokenizer, seq_len, **args)
    except RlkitError as e:
        raise RlkitError(f"{where}: {e}") from e
    except Exception as e:
        raise RlkitError(f"{where}: model plugin '{name}' failed: {type(e).__name__}: {e}") from e
    for method in ("spec", "decoder"):
        if not callable(getattr(model, method, None)):
            raise RlkitError(f"{where}: model plugin '{name}' returned a {type(model).__name__} without {method}(); "
                             "see the Policy contract in docs/plugins.md")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise RlkitError(f"{where}: no tokenizer: put a tokenizer stage before this one, start from a "
                         f"checkpoint that has one (init:), or use a model plugin that brings its own")
    return model, tokenizer
