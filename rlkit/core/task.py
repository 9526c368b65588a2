"""Tasks: the data every stage after pretraining reads, as a sequence of examples.

An example is a dict with at least
    "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
    "answer":   the reference solution, ending in "#### <number>" (GSM8K format; rewards read it)
and may carry more keys (a task's own metadata, e.g. the operands of an arithmetic problem).
A task plugin's factory `f(split, **args)` returns a Task.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class Task(Sequence):
    """A named, read-only list of examples: len(task), task[i], task[a:b] (a Task), iteration."""

    def __init__(self, examples: Iterable[dict], name: str = "task"):
        self.examples = list(examples)
        self.name = name

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Task(self.examples[i], self.name)
        return self.examples[i]

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {len(self)} examples)"


def make_example(question: str, solution: str, **extra) -> dict:
    """The example dict for a one-turn problem whose reference solution is also the assistant's reply."""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
    return {"messages": messages, "answer": solution, **extra}


def prompt_messages(example: Mapping) -> list[dict]:
    """The conversation without its final assistant turn: what the model is asked."""
    messages = list(example["messages"])
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def example_text(example: Mapping) -> str:
    """Plain text of an example for the tokenizer and pretraining: question, newline, solution."""
    messages = example["messages"]
    question = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    solution = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), example["answer"])
    return question + "\n" + solution
