"""Tasks: the data every stage after pretraining reads, as a sequence of examples.

An example is a dict with at least
    "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
    "answer":   the reference solution, ending in "#### <number>" (GSM8K format; rewards read it)
and may carry more keys (a task's own metadata, e.g. the operands of an arithmetic problem).
A task plugin's factory `f(split, **args)` returns a Task (or a plain list of examples).

A Task may adapt to training (a curriculum): the rl stage calls `observe(step, stats)` after each step with
the step's tracked figures (all ranks' means, so every rank decides alike) and tracks the figures it
returns; `state_dict()` / `load_state_dict(state)` go into the rl checkpoint, so --resume continues as if
never stopped. The defaults do nothing.

A Task also says how it is evaluated (all optional, so a plain list keeps working):
    evaluation: "generative" (default): sample completions, score each with a reward plugin
                "choice": multiple choice; each example adds "choices": [str, ...] and "gold": the
                index of the right one (make_choice_example renders them), scored by the model
    reward:     the reward plugin that decides "correct" for a generative task (None: the stage's)
    title:      its row on the report card ("ARC-Easy"); default: the task plugin's name
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence


EVALUATIONS = ("generative", "choice")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Task(Sequence):
    """A named, read-only list of examples: len(task), task[i], task[a:b] (a Task), iteration."""

    def __init__(self, examples: Iterable[dict], name: str = "task", *, evaluation: str = "generative",
                 reward: str | None = None, title: str | None = None):
        if evaluation not in EVALUATIONS:
            raise ValueError(f"Task evaluation must be one of {', '.join(EVALUATIONS)}, got {evaluation!r}")
        self.examples = list(examples)
        self.name = name
        self.evaluation, self.reward, self.title = evaluation, reward, title

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Task(self.examples[i], self.name, evaluation=self.evaluation, reward=self.reward, title=self.title)
        return self.examples[i]

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {len(self)} examples)"

    def observe(self, step: int, stats: Mapping[str, float]) -> dict:
        """After rl step `step` (1-based), its tracked figures; returns figures to track. Default: nothing."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def observe(task, step: int, stats: Mapping[str, float]) -> dict:
    """task.observe for a Task; a plain list of examples does not adapt."""
    return task.observe(step, stats) if isinstance(task, Task) else {}


def task_state(task) -> dict:
    return task.state_dict() if isinstance(task, Task) else {}


def restore_task(task, state: dict | None) -> None:
    """A Task's state from an rl checkpoint (none: a fresh run, or one saved before tasks had state)."""
    if isinstance(task, Task) and state:
        task.load_state_dict(state)


def make_example(question: str, solution: str, parts: list[dict] | None = None, **extra) -> dict:
    """The example dict for a one-turn problem whose reference solution is also the assistant's reply; `parts`:
    the reply with tool calls (calls_from_annotations), which chat rendering uses in place of its text."""
    reply = {"role": "assistant", "content": solution, **({"parts": parts} if parts is not None else {})}
    return {"messages": [{"role": "user", "content": question}, reply], "answer": solution, **extra}


def calls_from_annotations(text: str, tool=None) -> tuple[str, list[dict]]:
    """GSM8K's calculator annotations ("48/2 = <<48/2=24>>24") -> (the text without them, nanochat's parts:
    text, then a {"type": "python"} call of each annotation's expression and a {"type": "python_output"} with
    tool(expression), or the annotation's own result when no tool is given or it returns an error text).
    The output the model is trained around is then the one the tool will give it at sampling time."""
    parts, last = [], 0
    for m in re.finditer(r"<<([^<>]*)>>", text):
        parts.append({"type": "text", "text": text[last:m.start()]})
        last = m.end()
        if "=" not in m.group(1):
            continue
        expr, result = m.group(1).rsplit("=", 1)
        out = tool(expr) if tool is not None else result
        out = result if out.startswith("error:") else out
        parts += [{"type": "python", "text": expr}, {"type": "python_output", "text": out}]
    parts.append({"type": "text", "text": text[last:]})
    plain = "".join(p["text"] for p in parts if p["type"] == "text")
    return plain, [p for p in parts if p["text"] or p["type"] != "text"]


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


def evaluation_of(task, name: str) -> tuple[str, str | None, str]:
    """(evaluation, default reward or None, title) of a task; a plain list is generative, titled `name`."""
    return (getattr(task, "evaluation", "generative"), getattr(task, "reward", None),
            getattr(task, "title", None) or name)


def make_choice_example(question: str, choices: list[str], gold: int, **extra) -> dict:
    """A multiple-choice example, rendered as nanochat renders one: the choices each followed by its letter
    (so the letter is tokenized as in the answer), the reply the right letter alone.

        Multiple choice question: Which is a mammal?
        - dog=A
        - trout=B
        Respond only with the letter of the correct answer.
    """
    letters = LETTERS[:len(choices)]
    lines = [f"Multiple choice question: {question}", *(f"- {c}={letter}" for c, letter in zip(choices, letters)),
             "Respond only with the letter of the correct answer."]
    messages = [{"role": "user", "content": "\n".join(lines)}, {"role": "assistant", "content": letters[gold]}]
    return {"messages": messages, "answer": letters[gold], "choices": list(choices), "gold": gold,
            "query": f"Question: {question}\nAnswer:", **extra}
