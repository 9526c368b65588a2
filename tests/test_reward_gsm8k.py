"""The gsm8k reward: 1.0 when the number after the FIRST '####' in the completion equals the
number after '####' in the reference answer, else 0.0; formatting ($, commas, spaces, a
trailing '.', 72.0 vs 72) never matters. Cases are hand-written; each says what it pins down.
"""
import pytest

from rlkit.core.plugins import load_plugins
from rlkit.plugins.rewards.gsm8k import gsm8k

REFERENCE = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"

# (completion, reference answer, expected reward, what the case checks)
CASES = [
    ("#### 72", REFERENCE, 1.0, "exact match against a full GSM8K solution"),
    ("She sold 72 clips.\n#### 72", "#### 72", 1.0, "reasoning before the marker is ignored"),
    ("#### 73", "#### 72", 0.0, "wrong answer"),
    ("The answer is 72", "#### 72", 0.0, "no '####' at all scores 0 even with the right number"),
    ("####", "#### 72", 0.0, "marker with nothing after it"),
    ("#### seventy-two", "#### 72", 0.0, "words are not numbers"),
    ("#### 1,234", "#### 1234", 1.0, "thousands separator in the completion"),
    ("#### 1234", "#### 1,234", 1.0, "thousands separator in the reference"),
    ("#### 1,234,567", "#### 1234567", 1.0, "several separators"),
    ("#### -5", "#### -5", 1.0, "negative numbers"),
    ("#### 5", "#### -5", 0.0, "the sign matters"),
    ("#### 72.0", "#### 72", 1.0, "72.0 equals 72"),
    ("#### 72.00", "#### 72.0", 1.0, "trailing zeros on both sides"),
    ("#### 0.5", "#### 0.5", 1.0, "decimals"),
    ("#### 0.50", "#### 0.5", 1.0, "decimals compared by value"),
    ("#### 0.51", "#### 0.5", 0.0, "a different decimal"),
    ("#### $42", "#### 42", 1.0, "leading dollar sign"),
    ("#### $1,200.50", "#### 1200.5", 1.0, "dollar, comma and decimal together"),
    ("#### 42 apples", "#### 42", 1.0, "trailing words after the number"),
    ("#### 42.", "#### 42", 1.0, "a sentence-ending period is not a decimal point"),
    ("####    42   \n", "#### 42", 1.0, "surrounding spaces and newline"),
    ("####42", "#### 42", 1.0, "no space after the marker"),
    ("#### 41\n#### 42", "#### 42", 0.0, "several markers: the FIRST counts (so a later correction does not)"),
    ("#### 42\n#### 41", "#### 42", 1.0, "several markers: the FIRST counts (later noise is ignored)"),
    ("#### 42", "no marker in the reference", 0.0, "a reference without '####' never matches"),
]


@pytest.mark.parametrize("completion, reference, expected, why", CASES, ids=[c[3] for c in CASES])
def test_gsm8k_reward(completion, reference, expected, why):
    reward = gsm8k(completion, {"answer": reference})
    assert type(reward) is float
    assert reward == expected, why


def test_answer_key_arg_reads_another_field():
    example = {"answer": "#### 1", "target": "#### 7"}
    assert gsm8k("#### 7", example, answer_key="target") == 1.0
    assert gsm8k("#### 7", example) == 0.0


def test_through_the_real_plugin_manager():
    reward = load_plugins().tables["reward"]["gsm8k"]
    example = {"messages": [{"role": "user", "content": "What is 48 + 24?"},
                            {"role": "assistant", "content": REFERENCE}], "answer": REFERENCE}
    assert reward("48 + 24 = 72\n#### 72", example) == 1.0
    assert reward("48 + 24 = 71\n#### 71", example) == 0.0
    assert [reward(c, {"answer": r}) for c, r, _, _ in CASES] == [e for _, _, e, _ in CASES]
