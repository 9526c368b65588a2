"""`rlkit chat`: a conversation in the terminal with a saved model, through the serving engine.

Each turn renders the whole conversation in the model's chat format (the tokenizer's
render_for_completion), samples one reply with rlkit.lib.generation.engine (the same draw as rlkit's sampler
and `rlkit serve`: with --seed S, turn k uses seed S + k) and prints its text as the tokens arrive.
/clear starts a new conversation, /help lists the commands, /quit (or Ctrl-D, Ctrl-C) ends; -p "question"
answers once and exits. --tool NAME lets the model call that tool plugin (rlkit.lib.generation.tools): the
call and the output the engine forced into the reply are printed inline, in the tokenizer's own markers
(<|python_start|>48/2<|python_end|><|output_start|>24<|output_end|>).
"""
from __future__ import annotations

import queue
import sys

import typer

from rlkit.lib.generation.engine import Engine, Request
from rlkit.core.errors import RlkitError
from rlkit.cli.inference import TextStream, load_with_tools

HELP = "/clear: new conversation   /quit: leave   /help: this list   (Ctrl-D or Ctrl-C leave too)"


def reply(engine: Engine, tokenizer, messages, temperature, top_k, max_tokens, seed, out=None, tools=None) -> str:
    """Sample the assistant's answer to `messages`, writing its text to `out` as it arrives; returns the text."""
    prompt = tokenizer.render_for_completion(messages)
    max_new = min(max_tokens, engine.max_len - len(prompt))
    if max_new < 1:
        raise RlkitError(f"the conversation takes {len(prompt)} of the model's {engine.max_len} positions; "
                         "/clear starts a new one")
    changed = queue.SimpleQueue()
    req = engine.submit(Request(prompt, 1, max_new, temperature, top_k, None if seed is None else [seed],
                                notify=lambda: changed.put(None), tools=tools))
    text, stops, seen = TextStream(tokenizer), set(tokenizer.stop_ids), 0
    try:
        while req.finish[0] is None:
            changed.get()
            new = req.tokens[0][seen:]
            seen += len(new)
            _write(out, text.feed([t for t in new if t not in stops]))
        _write(out, text.feed([t for t in req.tokens[0][seen:] if t not in stops]) + text.finish())
    finally:
        req.cancel()
    if req.finish[0] == "error":
        raise RlkitError(f"the model failed: {engine.error}")
    return text.text


def _write(out, text):
    if out is not None and text:
        out.write(text)
        out.flush()


def run(path, prompt, temperature, top_k, max_tokens, seed, device="cpu", dtype=None, tools=(), plugins=()) -> None:
    model, tokenizer, handle, box = load_with_tools(path, device, tools, plugins)
    engine = Engine(model, tokenizer.stop_ids, dtype=dtype, max_rows=1)
    settings = dict(temperature=temperature, top_k=top_k, max_tokens=max_tokens, tools=box)
    try:
        if prompt is not None:
            reply(engine, tokenizer, [{"role": "user", "content": prompt}], seed=seed, out=sys.stdout, **settings)
            typer.echo()
            return
        typer.echo(f"rlkit chat: {handle.path}\n{HELP}", err=True)
        messages, turn = [], 0
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            if line in ("/quit", "/exit"):
                return
            if line == "/clear":
                messages = []
                typer.echo("(new conversation)", err=True)
                continue
            if line.startswith("/") and line.split()[0] in ("/help", "/?"):  # never sent to the model
                typer.echo(HELP, err=True)
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            sys.stdout.write("model> ")
            try:
                answer = reply(engine, tokenizer, messages, seed=None if seed is None else seed + turn,
                               out=sys.stdout, **settings)
            except KeyboardInterrupt:  # stop this answer, keep the conversation
                messages.pop()
                typer.echo("\n(interrupted)", err=True)
                continue
            except RlkitError as e:
                messages.pop()
                typer.echo(f"\nerror: {e}", err=True)
                continue
            typer.echo()
            messages.append({"role": "assistant", "content": answer})
            turn += 1
    finally:
        engine.close()
