"""The math_verify reward (rlkit/plugins/rewards/mathverify.py) against math-verify itself, on GSM8K answers,
and its hard wall clock on an input that would hang (the real package: `pip install -e '.[envs]'`)."""
import functools
import json
import time
from pathlib import Path

import pytest

math_verify = pytest.importorskip("math_verify", reason="math-verify is not installed: pip install -e '.[envs]'")

GSM8K = Path(__file__).resolve().parents[1] / "../shared/data/gsm8k/test.jsonl"
HANGS = r"\boxed{9^{9^{9^{9^{9}}}}}"  # sympy works on this power for hours


@pytest.fixture(scope="module")
def reward():
    """The reward as rlkit finds it: through its entry point and the real plugin manager."""
    from rlkit.core.plugins import load_plugins

    return load_plugins().tables["reward"]["math_verify"]


def formats(n: int) -> list[str]:
    """Ways a reply may write the number n: seven right (the last '####' counts), then one wrong."""
    return [f"#### {n}", f"The answer is {n:,}.", f"#### {n:,}", rf"so the total is $\boxed{{{n}}}$",
            rf"$\frac{{{2 * n}}}{{2}}$", f"#### {n}.0", f"#### {n + 2}, no: #### {n}", f"#### {n + 1}"]


def test_agrees_with_math_verify_on_gsm8k_answers(reward):
    from rlkit.plugins.rewards.mathverify import answer_text

    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:40]]
    examples, completions = [], []
    for row in rows:
        n = int(answer_text(row["answer"]).replace(",", ""))
        for text in formats(n):
            examples.append({"messages": [{"role": "user", "content": row["question"]}], "answer": row["answer"]})
            completions.append(text)
    assert len(completions) >= 200
    got = reward.score_batch(completions, examples)
    # math-verify's own verdict, in this process on the main thread (its own signal timeouts on)
    expected = [1.0 if math_verify.verify(math_verify.parse(answer_text(e["answer"])),
                                          math_verify.parse(answer_text(c))) else 0.0
                for c, e in zip(completions, examples)]
    assert list(got) == expected
    assert got.metrics["timeouts"] == [0.0] * len(completions)
    per_format = list(zip(*[got[i:i + 8] for i in range(0, len(got), 8)]))  # each format's scores over the rows
    assert all(sum(scores) == len(rows) for scores in per_format[:7])  # every right form is graded right
    assert sum(per_format[7]) == 0  # n + 1 never is


def test_a_hanging_input_scores_zero_within_its_limit(reward):
    """Through rlkit's scoring (as a step's rewards are): the hang is cut at 1 s, scores 0 and is counted; the
    completions after it are graded by a fresh worker, and the step's own 10 s limit never fires."""
    from rlkit.lib.evaluation.scoring import score

    example = {"messages": [{"role": "user", "content": "q"}], "answer": "#### 72"}
    reward.score_batch(["72"], [example])  # a warm worker, so the time below is the limit's
    forks, t0 = reward.worker.forks, time.perf_counter()
    scores = score([("math_verify", 1.0, functools.partial(reward, timeout=1.0))], [HANGS, "#### 72", "#### 71"],
                   [example] * 3, "at test", timeout=10.0)
    elapsed = time.perf_counter() - t0
    assert scores["math_verify"].tolist() == [0.0, 1.0, 0.0]
    assert scores["math_verify/timeouts"].tolist() == [1.0, 0.0, 0.0]  # tracked as reward/math_verify/timeouts
    assert 1.0 <= elapsed < 4.0, elapsed
    assert reward.worker.forks == forks + 1
