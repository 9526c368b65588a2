"""Stage 1, tokenizer: train a byte-level BPE on the configured text and save it with the run.

    stages:
      tokenizer: {vocab_size: 512, data: {source: arithmetic}}

`data.source` is a task name, a local text/JSONL/parquet path, or a hub
dataset id (see rlkit.core.textdata). Reading stops after `max_chars`.
"""
import time

from rlkit.core.dist import barrier, print0
from rlkit.core.textdata import iter_texts
from rlkit.core.tokenizer import train_tokenizer


def run(ctx) -> None:
    s = ctx.stage
    texts = iter_texts(s.data.source, tasks=ctx.plugins.tables["task"], args=dict(s.data.args),
                       text_field=s.data.text_field, split=s.data.split, base_dir=ctx.base_dir,
                       where="stages.tokenizer.data.source")
    chars = 0

    def limited():
        nonlocal chars
        for text in texts:
            if chars >= s.max_chars:
                return
            chars += len(text)
            yield text

    start = time.time()
    tokenizer = train_tokenizer(limited(), s.vocab_size)
    seconds = time.time() - start
    if ctx.dist.is_main:
        tokenizer.save(ctx.run_dir / "tokenizer")
    barrier()  # other ranks load it in the next stage
    sample = "Tom has 12 apples. #### 19"
    print0(f"[tokenizer] vocab {tokenizer.vocab_size} from {chars:,} chars in {seconds:.1f}s; "
           f"'{sample}' -> {len(tokenizer.encode(sample))} tokens")
    ctx.summary.update(vocab_size=tokenizer.vocab_size, chars=chars, seconds=seconds)
    ctx.tracker.metrics({"vocab_size": tokenizer.vocab_size, "train_chars": chars}, step=0, stage="tokenizer")
