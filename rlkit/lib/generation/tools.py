"""Tool calls inside a completion: the tool-call state of a row of the generation engine.

A Toolbox holds what a run's rows may call: {name: tool} (rlkit_tools plugins, their YAML args bound), the
tokenizer's ToolTokens (rlkit.lib.text.tokenizer: which token ids start and end a call and wrap an output), its
encode/decode, and the limits. Every row that may call gets a RowTools (Sequence.tools); the scheduler calls
its advance() with each token the row takes (rlkit.lib.generation.scheduler):
1. the row samples call_end: the call's text (its tokens since the last call_start, decoded) goes to a
   thread pool, where the tool runs off the decode thread, and output_start is queued as the row's next
   forced token, so the call overlaps that decode step. Every row that calls in the same step is submitted
   in that step: calls run batched, concurrently;
2. when the row's forced queue runs dry with a call pending, the scheduler waits for it (at most the
   per-call timeout from its start; the batch waits too, so slow tools cost every row that wait) and queues
   its output's tokens + output_end, forced: mask 0, never trained on, not counted as sampled.
A tool never raises into the run: an exception, a timeout, an output over max_output_tokens tokens or a
call past max_calls becomes a short "error: ..." text for the model; a tool's own text that starts with
"error:" counts as an error too. Token in, token out: the row's trajectory is exactly its sampled tokens
plus these forced ones; the output is encoded once, never re-tokenised with what came before.
Routing: with ToolTokens.json_calls (Hermes/Qwen) the call is {"name", "arguments"} and goes to the tool it
names, with the arguments' one string value (or their JSON) as its text; otherwise to the first tool.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rlkit.core.policy import ToolTokens


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """The process's one pool of tool threads (made on the first call), shared by every Toolbox."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="rlkit-tool")
        return _pool


WORKERS = 8  # calls that run at once; the python tool's sandboxes are processes, so threads only wait


@dataclass(frozen=True)
class ToolLimits:
    max_calls: int = 4  # per row; later calls get an error text
    max_output_tokens: int = 64  # of one output; a longer one is replaced by an error text
    timeout: float = 5.0  # seconds per call, from its start


class Toolbox:
    """The tools a batch of rows may call and how their outputs become tokens (module docstring)."""

    def __init__(self, tools: dict[str, Callable[[str], str]], tokens: ToolTokens,
                 encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 limits: ToolLimits = ToolLimits()):
        self.tools, self.tokens, self.encode, self.decode, self.limits = dict(tools), tokens, encode, decode, limits

    def row(self) -> RowTools:
        return RowTools(self)

    def submit(self, text: str) -> Future:
        return pool().submit(self.call, text)

    def call(self, text: str) -> str:
        """The output text for one call's text; never raises."""
        try:
            name, arg = self.route(text)
            return str(self.tools[name](arg))
        except Exception as e:  # noqa: BLE001 -- a tool's failure is the model's feedback, not the run's end
            return f"error: {type(e).__name__}: {str(e)[:100]}"

    def route(self, text: str) -> tuple[str, str]:
        if not self.tokens.json_calls:
            return next(iter(self.tools)), text
        call = json.loads(text)
        name, args = call["name"], call.get("arguments", {})
        if name not in self.tools:
            raise KeyError(f"no tool {name!r}; available: {', '.join(self.tools)}")
        values = list(args.values()) if isinstance(args, dict) else [args]
        return name, values[0] if len(values) == 1 and isinstance(values[0], str) else json.dumps(args)


@dataclass(eq=False)
class RowTools:
    """One row's tool-call state: its pending call, and its calls and errors so far."""
    box: Toolbox
    calls: int = 0
    errors: int = 0
    pending: Future | None = field(default=None, repr=False)
    started: float = 0.0

    def advance(self, seq, token: int, sampled: bool) -> None:
        """After `seq` took `token`: start a call at a sampled call_end; force a finished call's output."""
        t = self.box.tokens
        if sampled and token == t.call_end:
            self.calls += 1
            self.started = time.monotonic()
            self.pending = self._start(seq)
            seq.force(list(t.output_start))
        if self.pending is not None and not seq.forced:
            seq.force(self._output() + list(t.output_end))

    def _start(self, seq) -> Future:
        t, limits = self.box.tokens, self.box.limits
        if self.calls > limits.max_calls:
            return done(f"error: no more tool calls (at most {limits.max_calls} a completion)")
        sampled = [tok for tok, m in zip(seq.tokens[:-1], seq.mask[:-1]) if m]
        if t.call_start not in sampled:
            return done("error: a call end without a call start")
        begin = len(sampled) - sampled[::-1].index(t.call_start)
        return self.box.submit(self.box.decode(sampled[begin:]))

    def _output(self) -> list[int]:
        """The pending call's output tokens, waited for up to the timeout left; errors counted."""
        limits, future = self.box.limits, self.pending
        self.pending = None
        try:
            text = future.result(timeout=max(0.0, self.started + limits.timeout - time.monotonic()))
        except TimeoutError:
            text = f"error: the tool took longer than {limits.timeout:g} s"
        tokens = self.box.encode(text)
        if len(tokens) > limits.max_output_tokens:
            text = f"error: output longer than {limits.max_output_tokens} tokens"
            tokens = self.box.encode(text)
        self.errors += text.startswith("error:")
        return tokens


def done(text: str) -> Future:
    future = Future()
    future.set_result(text)
    return future


def toolbox(plugins, entries: list, tokenizer, where: str, limits: ToolLimits = ToolLimits()) -> Toolbox | None:
    """A Toolbox of a YAML entry's `tools: [{name, args}]` (dicts or PluginRefs; None when it lists none), each
    tool's args bound; a tokenizer without tool tokens, a misspelled tool or bad args is one line naming `where`."""
    from functools import partial

    from rlkit.core.errors import RlkitError
    from rlkit.core.plugins import bind_args

    if not entries:
        return None
    tokens = getattr(tokenizer, "tool_tokens", None)
    if tokens is None:
        raise RlkitError(f"{where}: the tokenizer has no tool-call tokens; train it with the tokenizer stage's "
                         "`tools: true`, or use a model whose chat template supports tools")
    tools = {}
    for i, entry in enumerate(entries):
        name, args = (entry["name"], entry.get("args")) if isinstance(entry, dict) else (entry.name, entry.args)
        fn = plugins.get("tool", name, f"{where}[{i}].name")
        tools[name] = partial(fn, **bind_args("tool", name, fn, args or {}, f"{where}[{i}].args"))
    return Toolbox(tools, tokens, tokenizer.encode, tokenizer.decode, limits)


def tool_metrics(calls: list[int], errors: list[int], forced: list[int]) -> dict[str, float]:
    """Per-completion counts -> what every run reports: calls per completion, the share of completions that
    called, errors per call, forced tokens per completion."""
    n, total = max(len(calls), 1), sum(calls)
    return {"tool_calls": total / n, "tool_use": sum(c > 0 for c in calls) / n,
            "tool_error_rate": sum(errors) / total if total else 0.0, "tool_forced": sum(forced) / n}
