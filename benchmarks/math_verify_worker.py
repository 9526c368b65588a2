"""The math_verify reward's grading: in the caller's process, in one reused worker, and in a fork per call.

Shape: the first N GSM8K test answers (../shared/data/gsm8k or --data), each graded against its own number
written as "#### 1,234" (math-verify's extraction and sympy's comparison: the work a step's reward does).
In-process calls keep math-verify's signal timeouts off, as the worker does; one warm-up pass first
(sympy's caches, which forks inherit). Prints ms per completion each way.

    python benchmarks/math_verify_worker.py [--n 200] [--data ../shared/data/gsm8k]
"""
import argparse
import json
import logging
import time
from pathlib import Path

from rlkit.lib.evaluation.worker import Worker
from rlkit.plugins.rewards.mathverify import answer_text, grade


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/gsm8k"))
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    rows = [json.loads(line) for line in open(Path(args.data) / "test.jsonl")][:args.n]
    pairs = [(answer_text(r["answer"]), f"{int(answer_text(r['answer']).replace(',', '')):,}") for r in rows]
    timings = {}
    [grade(*p) for p in pairs]  # sympy's caches warm, in this process and so in every fork of it
    t = time.perf_counter()
    local = [grade(*p) for p in pairs]
    timings["in process"] = time.perf_counter() - t
    worker = Worker(grade)
    worker.call(pairs[0], 10.0)  # the first fork, outside the timing
    t = time.perf_counter()
    reused = [worker.call(p, 10.0).value for p in pairs]
    timings["one reused worker"] = time.perf_counter() - t
    t = time.perf_counter()
    forked = []
    for p in pairs:
        forked.append(worker.call(p, 10.0).value)
        worker.close()  # the next call forks a fresh child
    timings["a fork per call"] = time.perf_counter() - t
    assert local == reused == forked, "the three ways disagree"
    for way, seconds in timings.items():
        print(f"{way:>18}: {1000 * seconds / len(pairs):7.2f} ms per completion ({len(pairs)} completions)")


if __name__ == "__main__":
    main()
