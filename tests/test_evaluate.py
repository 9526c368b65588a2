"""Held-out evaluation: pass@k by the unbiased estimator, and the paired change against a baseline."""
import contextlib
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from rlkit.lib.evaluation.evaluate import evaluate, pass_at
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.lib.text.task import make_example
from rlkit.lib.text.tokenizer import train_tokenizer

CTX = SimpleNamespace(name="eval", dist=SimpleNamespace(rank=0, world_size=1), autocast=contextlib.nullcontext,
                      sum_over_ranks=lambda t: t, device=torch.device("cpu"))
PROBLEMS = [make_example(f"What is {i} + {i}?", f"#### {2 * i}", hits=hits) for i, hits in enumerate([4, 2, 1, 0])]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"What is {i} + {i}? #### {2 * i}" for i in range(200)], 300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPT(GPTConfig(depth=1, vocab_size=tokenizer.vocab_size, seq_len=64))


def first_hits():
    """A reward that calls the first `hits` of a problem's samples correct, whatever they say."""
    calls = Counter()

    def reward(completion, example):
        calls[example["messages"][0]["content"]] += 1
        return float(calls[example["messages"][0]["content"]] <= example["hits"])
    return reward


def run(tokenizer, model, reward, **kwargs):
    kwargs = {"temperature": 1.0, **kwargs}
    return evaluate(CTX, model, tokenizer, PROBLEMS, reward, examples=4, samples=4, top_k=None,
                    max_new_tokens=4, seed=7, **kwargs)


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at(4, 1, 1) == 0.25
    assert pass_at(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3, 2) / C(4, 2)
    assert pass_at(4, 0, 4) == 0.0 and pass_at(4, 3, 2) == 1.0


def test_paired_change_and_its_standard_error_equal_hand_computed_values(tokenizer, model):
    # 4 of 4, 2 of 4, 1 of 4, 0 of 4 correct: pass@1 per problem 1, 0.5, 0.25, 0 against a baseline of 0.5 each
    result = run(tokenizer, model, first_hits(), baseline=[0.5, 0.5, 0.5, 0.5])
    assert result["per_problem"] == [1.0, 0.5, 0.25, 0.0]
    assert result["pass@1"] == pytest.approx(1.75 / 4)
    assert result["pass@2"] == pytest.approx((1 + (1 - 1 / 6) + 0.5 + 0) / 4)
    # d = 0.5, 0, -0.25, -0.5: mean -0.0625; squared deviations sum to 0.546875, so se = sqrt(0.546875 / 3 / 4)
    assert result["delta@1"] == pytest.approx(-0.0625)
    assert result["delta_se"] == pytest.approx(math.sqrt(0.546875 / 3 / 4))
    assert "delta@1" not in run(tokenizer, model, first_hits())


def test_the_same_seed_draws_the_same_samples_so_an_unchanged_model_shows_no_change(tokenizer, model):
    """Common random numbers: the eval seed fixes every sample, so the same model scores identically."""
    said = []

    def recorder(completion, example):
        said.append(completion)
        return float(len(completion) % 2)
    first = run(tokenizer, model, recorder)
    second = run(tokenizer, model, recorder, baseline=first["per_problem"])
    assert said[:16] == said[16:] and len(set(said)) > 1  # the same 16 completions, and not all alike
    assert second["delta@1"] == 0.0 and second["delta_se"] == 0.0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_how_problems_are_batched_changes_no_completion(tokenizer, model, temperature):
    """rows_per_batch only groups the work: from one problem a batch (its n rows) to all four in one, the
    same completions and figures (greedy: 1, 3 and 4 problems a batch; sampled, n = 4: 1, 2 and 4)."""
    def run_batched(rows):
        said = []

        def recorder(completion, example):
            said.append((example["messages"][0]["content"], completion))
            return float(len(completion) % 2)
        result = run(tokenizer, model, recorder, rows_per_batch=rows, temperature=temperature)
        return sorted(said), result["per_problem"]
    one_a_batch = run_batched(1)
    assert one_a_batch == run_batched(3) == run_batched(8) == run_batched(256)
    assert temperature == 0 or len({c for _, c in one_a_batch[0]}) > 1  # sampled rows are not all alike
