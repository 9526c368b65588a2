"""Stage tokenizer: train a byte-level BPE on the configured text; the next entries use it.

    stages:
      tokenizer: {vocab_size: 512, data: {source: arithmetic}}

`data.source` is a task name, a local text/JSONL/parquet path, or a hub
dataset id (see rlkit.lib.text.textdata). Reading stops after `max_chars`. The
tokenizer is saved in the entry's folder (runs/<name>/tokenizer/) and handed
on alone: there is no model yet. `tools: true` adds nanochat's tool-call tokens
(<|python_start|> <|python_end|> <|output_start|> <|output_end|>) after the
other specials, for entries with `tools:` (rlkit.lib.generation.tools).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import rlkit
from rlkit.core.config import bounded
from rlkit.core.errors import RlkitError
from rlkit.lib.tracking.report import fmt
from rlkit.core.stage import Stage
from rlkit.lib.text.textdata import TextData, check_data, iter_texts
from rlkit.lib.text.tokenizer import MIN_VOCAB_SIZE, SPECIALS, train_tokenizer


@dataclass
class TokenizerConfig:
    vocab_size: int = 32768  # includes the special tokens
    data: TextData = field(default_factory=TextData)
    max_chars: int = bounded(2_000_000_000, ge=1)  # stop reading text after this many characters
    tools: bool = False  # also the four tool-call special tokens (off: the tokenizer is as before)


def check(cfg: TokenizerConfig, setup) -> None:
    if cfg.vocab_size < MIN_VOCAB_SIZE:
        raise RlkitError(f"{setup.where}.vocab_size: {cfg.vocab_size} is too small; it must be at least "
                         f"{MIN_VOCAB_SIZE} (256 byte tokens + {len(SPECIALS)} special tokens + 1 merge)")
    check_data(cfg.data, setup)


def run(ctx, start):
    """Train the tokenizer, save it in the entry's folder and hand it on (no model yet)."""
    from rlkit.core.dist import barrier, print0  # they bring torch: imported when the stage runs, not when listed
    from rlkit.core.handoff import Checkpoint

    s = ctx.cfg
    texts = iter_texts(s.data.source, tasks=ctx.plugins.tables["task"], args=s.data.args, text_field=s.data.text_field,
                       split=s.data.split, base_dir=ctx.base_dir, where=f"stages.{ctx.name}.data.source")
    chars = 0

    def limited():
        nonlocal chars
        for text in texts:
            if chars >= s.max_chars:
                return
            chars += len(text)
            yield text

    began = time.time()
    tokenizer = train_tokenizer(limited(), s.vocab_size, tools=s.tools)
    seconds = time.time() - began
    if ctx.dist.is_main:
        tokenizer.save(ctx.stage_dir)
    barrier()  # other ranks load it in the next entry
    print0(f"[{ctx.name}] vocab {tokenizer.vocab_size} from {chars:,} chars in {seconds:.1f}s")
    ctx.summary.update(vocab_size=tokenizer.vocab_size, chars=chars, seconds=seconds)
    ctx.tracker.metrics({"vocab_size": tokenizer.vocab_size, "train_chars": chars}, step=0, stage=ctx.name)
    return Checkpoint(None, None, ctx.stage_dir)


def report(summary: dict, tracked: dict) -> list[str]:
    return [f"vocabulary {fmt(summary.get('vocab_size'))} tokens, trained on {fmt(summary.get('chars'))} characters"]


@rlkit.hookimpl
def rlkit_stages():
    return {"tokenizer": Stage(config=TokenizerConfig, run=run, check=check, report=report)}
