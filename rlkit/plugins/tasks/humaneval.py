"""humaneval: OpenAI's 164 hand-written Python problems (Chen et al. 2021), scored by running the tests.

A row {"task_id", "prompt", "canonical_solution", "test", "entry_point"} becomes one example: the
user asks for the function whose signature and docstring are `prompt`, the reference reply is the
prompt and canonical solution in a ```python block. The task's reward, `humaneval`, takes the
completion's first ```python block (or the whole reply), puts the prompt before it when it does
not define the function itself (a reply that only continues the body; else the prompt's imports
alone), appends the row's `test`
and `check(<entry_point>)`, and runs that program in rlkit.lib.evaluation.sandbox: 1.0 if it runs to its
end, else 0.0 (a wrong answer, an exception, a timeout, anything the sandbox refuses). A batch of
completions runs in parallel over the cores (`score_batch`).

The programs run contained by the operating system (bubblewrap namespaces, their own user); a host that
cannot do that refuses to run them. `sandbox: weak` in the task's args runs them as plain subprocesses
with rlimits and a timeout instead: only for code you trust, as it is not contained.

    humaneval("test")                          # datasets.load_dataset("openai/openai_humaneval")
    humaneval("test", path="data/humaneval.jsonl")
    humaneval("test", sandbox="weak")          # YAML: {name: humaneval, args: {sandbox: weak}}
"""
from __future__ import annotations

import re

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.sandbox import ISOLATIONS, Limits, run_many
from rlkit.lib.text.task import Task, make_example
from rlkit.plugins.tasks.rows import rows, take

FIELDS = ("task_id", "prompt", "test", "entry_point")
CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


@rlkit.hookimpl
def rlkit_tasks():
    return {"humaneval": humaneval}


@rlkit.hookimpl
def rlkit_rewards():
    return {"humaneval": HumanEvalReward()}


def humaneval(split: str = "test", source: str = "openai/openai_humaneval", path: str | None = None,
              limit: int | None = None, sandbox: str = "namespaces") -> Task:
    """HumanEval has only a test split: any `split` reads it (it is for evaluation, not training)."""
    if sandbox not in ISOLATIONS:
        raise RlkitError(f"humaneval: args.sandbox is {sandbox!r}; valid: {' or '.join(ISOLATIONS)} (weak does not "
                         f"contain the program)")
    examples = [{**to_example(row, where), "sandbox": sandbox}
                for where, row in rows("humaneval", "test", source, None, path)]
    return Task(take(examples, limit, "humaneval"), "humaneval-test", reward="humaneval", title="HumanEval")


def to_example(row: dict, where: str) -> dict:
    missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
    if missing:
        raise RlkitError(f"{where}: a HumanEval row needs string fields {', '.join(FIELDS)} (missing: "
                         f"{', '.join(missing)})")
    question = f"Complete this Python function; reply with the whole function in a ```python block.\n\n{row['prompt']}"
    solution = f"```python\n{row['prompt']}{row.get('canonical_solution', '')}```"
    example = make_example(question, solution, **{f: row[f] for f in FIELDS})
    return example


def program(completion: str, example) -> str:
    """The program to run: the reply's code (after the prompt when it does not define the function), the tests."""
    match = CODE_BLOCK.search(completion)
    code = match.group(1) if match else completion
    if not re.search(rf"^\s*def\s+{re.escape(example['entry_point'])}\s*\(", code, re.M):
        code = example["prompt"] + code
    else:  # the whole function: keep the prompt's imports (typing's List, say), as nanochat does
        imports = [line for line in example["prompt"].splitlines() if line.startswith(("import ", "from "))]
        code = "\n".join(imports + [code])
    return f"{code}\n\n{example['test']}\n\ncheck({example['entry_point']})\n"


class HumanEvalReward:
    """reward(completion, example) -> 1.0 if the row's tests pass; score_batch runs many in parallel."""

    def __call__(self, completion: str, example, timeout: float = 5.0) -> float:
        return self.score_batch([completion], [example], timeout)[0]

    def score_batch(self, completions, examples, timeout: float = 5.0) -> list[float]:
        scores = [0.0] * len(completions)
        for isolation in ISOLATIONS:  # a batch normally has one; the task's `sandbox` arg chose it
            picked = [i for i, e in enumerate(examples) if e.get("sandbox", "namespaces") == isolation]
            programs = [program(completions[i], examples[i]) for i in picked]
            for i, result in zip(picked, run_many(programs, Limits(timeout=timeout), isolation) if picked else []):
                scores[i] = 1.0 if result.passed else 0.0
        return scores
