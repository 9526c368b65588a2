"""arc_easy, arc_challenge: AI2's grade-school science questions (Clark et al. 2018), multiple choice.

A row {"question", "choices": {"text": [...], "label": ["A", ...]}, "answerKey"} becomes one
multiple-choice example (rlkit.lib.text.task.make_choice_example). Evaluated as nanochat's chat_eval
does, by the letter the model prefers; chance is 1 / (number of choices), about 0.25.

    arc_easy(split)                        # datasets.load_dataset("allenai/ai2_arc", "ARC-Easy", split=split)
    arc_easy(split, path="data/arc_easy")  # offline: a folder with <split>.jsonl, or a .jsonl file
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, make_choice_example
from rlkit.plugins.tasks.rows import rows, take


@rlkit.hookimpl
def rlkit_tasks():
    return {"arc_easy": arc_easy, "arc_challenge": arc_challenge}


def arc_easy(split: str, source: str = "allenai/ai2_arc", path: str | None = None, limit: int | None = None) -> Task:
    return _arc("arc_easy", "ARC-Easy", split, source, path, limit)


def arc_challenge(split: str, source: str = "allenai/ai2_arc", path: str | None = None,
                  limit: int | None = None) -> Task:
    return _arc("arc_challenge", "ARC-Challenge", split, source, path, limit)


def _arc(name: str, subset: str, split: str, source: str, path: str | None, limit: int | None) -> Task:
    split = "validation" if split == "val" else split
    examples = [to_example(row, where) for where, row in rows(name, split, source, subset, path)]
    return Task(take(examples, limit, name), f"{name}-{split}", evaluation="choice", title=subset)


def to_example(row: dict, where: str) -> dict:
    choices, key = row.get("choices"), row.get("answerKey")
    if not (isinstance(row.get("question"), str) and isinstance(choices, dict)
            and isinstance(choices.get("text"), list) and isinstance(choices.get("label"), list)):
        raise RlkitError(f"{where}: an ARC row needs \"question\": str, \"choices\": {{\"text\": [...], "
                         f"\"label\": [...]}} and \"answerKey\"")
    if key not in choices["label"]:
        raise RlkitError(f"{where}: answerKey {key!r} is not one of the labels {choices['label']}")
    return make_choice_example(row["question"], [str(t) for t in choices["text"]], choices["label"].index(key),
                               id=row.get("id"))
