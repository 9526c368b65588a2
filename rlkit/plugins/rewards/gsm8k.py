"""The GSM8K reward: 1.0 when the number after the first '####' in the completion
equals the reference answer's, else 0.0.

Formatting does not matter: commas, a leading '$', surrounding spaces and a
trailing '.' are ignored, and 72.0 equals 72 (numbers are compared as exact
decimals, so 0.1 + 0.2 style float noise cannot creep in). A completion
without '####' scores 0.0.
"""
import re
from decimal import Decimal, InvalidOperation
from typing import Mapping

import rlkit

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str) -> Decimal | None:
    """The number after the first '####' marker (as nanochat reads it), or None."""
    if "####" not in text:
        return None
    tail = text.split("####", 1)[1].strip()
    tail = tail.replace(",", "").replace("$", "").strip()
    match = _NUMBER.match(tail)
    if match is None:
        return None
    try:
        return Decimal(match.group(0))
    except InvalidOperation:
        return None


def gsm8k(completion: str, example: Mapping, answer_key: str = "answer") -> float:
    """1.0 if the completion's '#### N' equals the example's reference answer, else 0.0."""
    reference = extract_answer(str(example[answer_key]))
    predicted = extract_answer(completion)
    if reference is None or predicted is None:
        return 0.0
    return 1.0 if predicted == reference else 0.0


@rlkit.hookimpl
def rlkit_rewards():
    return {"gsm8k": gsm8k}
