"""mmlu: Massive Multitask Language Understanding (Hendrycks et al. 2021), 57 subjects, 4 choices each.

A row {"question", "subject", "choices": [4 strings], "answer": index} becomes one multiple-choice
example (rlkit.lib.text.task.make_choice_example); evaluated by the letter the model prefers, chance 0.25.

    mmlu(split)                          # datasets.load_dataset("cais/mmlu", "all", split=split)
    mmlu(split, subject="anatomy")       # one subject (the hub config of that name)
    mmlu(split, path="data/mmlu")        # offline: a folder with <split>.jsonl, or a .jsonl file
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, make_choice_example
from rlkit.plugins.tasks.rows import rows, take


@rlkit.hookimpl
def rlkit_tasks():
    return {"mmlu": mmlu}


def mmlu(split: str, source: str = "cais/mmlu", subject: str = "all", path: str | None = None,
         limit: int | None = None) -> Task:
    split = "validation" if split == "val" else split
    examples = []
    for where, row in rows("mmlu", split, source, subject, path):
        if path is not None and subject != "all" and row.get("subject") != subject:
            continue
        examples.append(to_example(row, where))
    return Task(take(examples, limit, "mmlu"), f"mmlu-{split}", evaluation="choice", title="MMLU")


def to_example(row: dict, where: str) -> dict:
    choices, answer = row.get("choices"), row.get("answer")
    if not (isinstance(row.get("question"), str) and isinstance(choices, list) and len(choices) >= 2
            and isinstance(answer, int) and 0 <= answer < len(choices)):
        raise RlkitError(f"{where}: an MMLU row needs \"question\": str, \"choices\": [str, ...] and \"answer\": "
                         "the index of the right choice")
    return make_choice_example(row["question"], [str(c) for c in choices], answer, subject=row.get("subject"))
