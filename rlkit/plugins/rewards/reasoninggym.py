"""reasoning_gym: a reasoning-gym generator's own `score_answer` on the answer a completion gives.

    rewards: [{name: reasoning_gym}]      # for examples of the reasoning_gym task (pip install -e '.[envs]')

The answer extractor: the text after the last '####' (the GSM8K format rlkit's chat models and the
reasoning_gym task's reference replies end in), stripped; where there is no '####', the inside of the last
<answer>...</answer> (the tag reasoning-gym's own prompts ask for); neither gives no answer, which every
generator scores 0. The score is then `dataset.score_answer(answer, entry)` of the generator and config
that made the example (carried in its "reasoning_gym" key): 1.0 for a right answer, and whatever partial
credit the generator gives (many give a fraction to an answer that contains the right one).
"""
from __future__ import annotations

import functools
import json
import re
from typing import Mapping

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.plugins.tasks.reasoninggym import require

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer(text: str) -> str | None:
    """The answer a completion gives (module docstring), or None."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    tags = ANSWER_TAG.findall(text)
    return tags[-1].strip() if tags else None


def reasoning_gym(completion: str, example: Mapping) -> float:
    """The generator's score_answer on the completion's answer."""
    info = example.get("reasoning_gym") if isinstance(example, Mapping) else None
    if not isinstance(info, Mapping):
        raise RlkitError("the reasoning_gym reward scores examples of the reasoning_gym task (this example has no "
                         "'reasoning_gym' key); use another reward for this task")
    scorer = _dataset(info["name"], json.dumps(info["config"], sort_keys=True))
    return float(scorer.score_answer(extract_answer(completion), info["entry"]))


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config: str):
    """A dataset of the generator and config (as JSON), kept for its score_answer."""
    return require().create_dataset(name, **json.loads(config), seed=0, size=1)


@rlkit.hookimpl
def rlkit_rewards():
    return {"reasoning_gym": reasoning_gym}
