"""math_verify: 1.0 when Hugging Face's math-verify finds the completion's answer equal to the reference, else 0.0.

    rewards: [{name: math_verify, args: {timeout: 5.0}}]      # pip install -e '.[envs]'

The texts graded are the part after the last '####' (the GSM8K format rlkit's tasks and chat renderings
end in), or the whole text where there is none, for the completion and for the example's `answer` alike:
math_verify.verify(parse(reference), parse(completion)) with math-verify's default extraction (LaTeX,
\\boxed{}, plain expressions), so "1,234", "\\boxed{72}", "$\\frac{1}{2}$" and "0.5" are graded as numbers.

Grading runs in one forked worker process (rlkit.lib.evaluation.worker), reused call after call, with
math-verify's own signal-based timeouts off (they raise off the main thread). Each completion gets a hard
wall clock of `timeout` seconds: one that runs past it (sympy can take hours on "9^{9^{9^{9^9}}}") has its
worker killed, scores 0.0, and counts in the tracked figure `reward/math_verify/timeouts` (the step's
fraction of completions that timed out); the next completion gets a fresh worker. A completion math-verify
cannot parse scores 0.0. Keep `timeout` below the stage's `reward_timeout` (a limit per completion too).
"""
from __future__ import annotations

import logging

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.scoring import Scored
from rlkit.lib.evaluation.worker import Worker

INSTALL = "math_verify: the math-verify package is missing; pip install -e '.[envs]' (or pip install math-verify)"


def answer_text(text: str) -> str:
    """The part after the last '####', stripped; the whole text when there is none."""
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def grade(reference: str, completion: str) -> float:
    """math-verify's verdict on two answer texts, with its signal-based timeouts off (the worker's clock rules)."""
    from math_verify import parse, verify

    gold = parse(reference, parsing_timeout=None)
    return 1.0 if verify(gold, parse(completion, parsing_timeout=None), timeout_seconds=None) else 0.0


class MathVerify:
    """A batched reward: core calls score_batch once for a step's completions (rlkit.lib.evaluation.scoring)."""

    def __init__(self):
        self.worker = None

    def __call__(self, completion: str, example, timeout: float = 5.0, answer_key: str = "answer") -> float:
        return self.score_batch([completion], [example], timeout, answer_key)[0]

    def score_batch(self, completions: list[str], examples: list, timeout: float = 5.0,
                    answer_key: str = "answer") -> Scored:
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise RlkitError(f"math_verify: timeout must be a number of seconds > 0, got {timeout!r}")
        worker = self._worker()
        values, timeouts = [], []
        for completion, example in zip(completions, examples):
            result = worker.call((answer_text(str(example[answer_key])), answer_text(completion)), timeout)
            values.append(float(result.value) if result.ok else 0.0)
            timeouts.append(1.0 if result.timed_out else 0.0)
        return Scored(values, {"timeouts": timeouts})

    def _worker(self) -> Worker:
        if self.worker is None:
            try:
                import math_verify  # noqa: F401 -- imported before the fork, so each fresh worker starts at once
            except ImportError:
                raise RlkitError(INSTALL) from None
            # it warns on every call that its own timeouts are off: the worker's wall clock replaces them
            logging.getLogger("math_verify").setLevel(logging.ERROR)
            self.worker = Worker(grade)
        return self.worker


math_verify = MathVerify()


@rlkit.hookimpl
def rlkit_rewards():
    return {"math_verify": math_verify}
