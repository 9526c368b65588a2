"""Evaluation: multiple-choice scoring against hand-computed and independently computed preferences, the
pass@k estimator against brute force, ARC/MMLU/HumanEval/GSM8K rows from local files, and an eval stage
in a tracked run: its report-card table, what Aim holds, and `rlkit eval` repeating the run's figures.
"""
import contextlib
import itertools
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import test_core_metric as core_bundle  # its small DCLM-layout bundle

from rlkit.lib.evaluation.choice import centred, evaluate_choice, letter_ids
from rlkit.lib.evaluation.evaluate import pass_at
from rlkit.lib.text.task import Task, make_choice_example, prompt_messages
from rlkit.lib.text.tokenizer import train_tokenizer

from experiments import EVAL, PRETRAIN, RL, SFT, TOKENIZER, adamw, data, experiment_text, task

CTX = SimpleNamespace(name="eval", dist=SimpleNamespace(rank=0, world_size=1), autocast=contextlib.nullcontext,
                      sum_over_ranks=lambda t: t, device=torch.device("cpu"))

ARC_ROWS = [
    {"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["dog", "trout", "frog", "crow"],
                                                               "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "q2", "question": "What melts ice?", "choices": {"text": ["cold", "heat", "dark"],
                                                            "label": ["1", "2", "3"]}, "answerKey": "2"},
    {"id": "q3", "question": "Plants need?", "choices": {"text": ["salt", "light", "sand", "oil"],
                                                         "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "q4", "question": "Ice is?", "choices": {"text": ["hot", "gas", "solid", "loud"],
                                                    "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
]
HUMANEVAL_ROWS = [
    {"task_id": "t/0", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n", "canonical_solution": "    return a + b\n",
     "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n", "entry_point": "add"},
    {"task_id": "t/1", "prompt": "def rev(s):\n    \"\"\"s reversed\"\"\"\n", "canonical_solution": "    return s[::-1]\n",
     "test": "def check(f):\n    assert f('ab') == 'ba'\n", "entry_point": "rev"},
]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    texts = [make_choice_example(r["question"], r["choices"]["text"], 0)["messages"][0]["content"] for r in ARC_ROWS]
    return train_tokenizer(texts * 20 + ["ABCD"] * 20, 300)


class AlwaysLetter(torch.nn.Module):
    """A stub model: every position puts all its mass on one token (its logits are 0 elsewhere, 50 there)."""

    def __init__(self, token: int, vocab: int):
        super().__init__()
        self.token, self.vocab = token, vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = torch.zeros(*idx.shape, self.vocab)
        logits[..., self.token] = 50.0
        return logits


def test_pass_at_k_equals_brute_force_over_every_subset():
    for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 1, 4), (4, 0, 2), (4, 4, 1), (7, 3, 7)]:
        correct = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at(n, c, k) == pytest.approx(brute)


def test_a_model_that_always_says_b_scores_the_hand_computed_accuracy(tokenizer):
    # golds A, B, B, C, B over 4, 4, 2, 4, 3 choices: "B" is right on 3 of 5
    golds, sizes = [0, 1, 1, 2, 1], [4, 4, 2, 4, 3]
    task = Task([make_choice_example(f"q{i}", [f"c{j}" for j in range(n)], g) for i, (g, n) in
                 enumerate(zip(golds, sizes))], evaluation="choice")
    b = letter_ids(tokenizer, 2)[1]
    result = evaluate_choice(CTX, AlwaysLetter(b, tokenizer.vocab_size), tokenizer, task, examples=5)
    chance = (1 / 4 + 1 / 4 + 1 / 2 + 1 / 4 + 1 / 3) / 5
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["chance"] == pytest.approx(chance)
    assert result["centred"] == pytest.approx((3 / 5 - chance) / (1 - chance))
    assert result["per_problem"] == [0.0, 1.0, 1.0, 0.0, 1.0]
    # a letter beyond an example's choices is never picked: "D" everywhere, but example 3 has only 2 choices
    d = letter_ids(tokenizer, 4)[3]
    result = evaluate_choice(CTX, AlwaysLetter(d, tokenizer.vocab_size), tokenizer, task, examples=5)
    assert result["per_problem"] == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert centred(0.25, 0.25) == 0.0 and centred(1.0, 0.25) == 1.0


def test_a_real_tiny_model_picks_what_unbatched_forwards_prefer(tokenizer, tmp_path):
    from rlkit.plugins.models.gpt_model import GPT, GPTConfig
    from rlkit.plugins.tasks.arc import arc_easy

    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=tokenizer.vocab_size, seq_len=128)).eval()
    task = arc_easy("test", path=str(write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)))
    assert task.evaluation == "choice" and task[1]["gold"] == 1 and task[1]["choices"] == ["cold", "heat", "dark"]
    with torch.no_grad():
        letter_right, likely_right = [], []
        for ex in task:  # one example at a time, no padding: the independent answer
            ids = tokenizer.render_for_completion(prompt_messages(ex))
            logits = model(torch.tensor([ids]))[0, -1]
            letters = letter_ids(tokenizer, len(ex["choices"]))
            letter_right.append(float(max(range(len(letters)), key=lambda j: logits[letters[j]]) == ex["gold"]))
            means = []
            for choice in ex["choices"]:
                context = [tokenizer.bos_id] + tokenizer.encode(ex["query"])
                row = context + tokenizer.encode(" " + choice)
                x, y = torch.tensor([row[:-1]]), torch.tensor([row[1:]])
                y[0, :len(context) - 1] = -1  # only the choice's tokens count
                nll = model(x, y, loss_reduction="none")[0, len(context) - 1:]
                means.append(-nll.mean().item())
            likely_right.append(float(max(range(len(means)), key=lambda j: means[j]) == ex["gold"]))
    by_letter = evaluate_choice(CTX, model, tokenizer, task, examples=4, batch_size=3)
    by_likelihood = evaluate_choice(CTX, model, tokenizer, task, examples=4, mode="likelihood", batch_size=3)
    assert by_letter["per_problem"] == letter_right and by_likelihood["per_problem"] == likely_right
    assert by_letter["accuracy"] == pytest.approx(sum(letter_right) / 4)


def test_mmlu_and_gsm8k_rows_load_from_local_files(tmp_path):
    from rlkit.plugins.tasks.gsm8k import gsm8k
    from rlkit.plugins.tasks.mmlu import mmlu

    rows = [{"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "H2O is?", "subject": "chem", "choices": ["water", "salt", "air", "fire"], "answer": 0}]
    write_jsonl(tmp_path / "mmlu" / "test.jsonl", rows)
    task = mmlu("test", path=str(tmp_path / "mmlu"))
    assert len(task) == 2 and task.evaluation == "choice" and task.title == "MMLU" and task[0]["answer"] == "B"
    assert [ex["subject"] for ex in mmlu("test", path=str(tmp_path / "mmlu"), subject="chem")] == ["chem"]
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}])
    g = gsm8k("test", path=str(tmp_path / "gsm8k"))
    assert g.reward == "gsm8k" and g.title == "GSM8K" and g[0]["answer"] == "1+1=2\n#### 2"


def test_humaneval_scores_right_and_wrong_replies_by_running_the_tests(tmp_path):
    from rlkit.lib.evaluation.scoring import score
    from rlkit.plugins.tasks.humaneval import HumanEvalReward, humaneval

    task = humaneval("test", path=str(write_jsonl(tmp_path / "he.jsonl", HUMANEVAL_ROWS)))
    assert task.reward == "humaneval" and len(task) == 2
    replies = [task[0]["messages"][-1]["content"],  # the reference: the whole function in a block
               "    return a - b\n",  # a body only, wrong
               "Sure:\n```python\ndef rev(s):\n    return ''.join(reversed(s))\n```",  # right, another way
               "```python\ndef rev(s):\n    while True: pass\n```"]  # hangs: a timeout, scored 0
    examples = [task[0], task[0], task[1], task[1]]
    reward = HumanEvalReward()
    assert reward.score_batch(replies, examples, timeout=2.0) == [1.0, 0.0, 1.0, 0.0]
    assert score([("humaneval", 1.0, reward)], replies[:2], examples[:2], "in a test")["humaneval"].tolist() == \
        [1.0, 0.0]  # through the guarded scorer, batched
    typed = {"prompt": "from typing import List\n\n\ndef first(x: List[int]) -> int:\n", "entry_point": "first",
             "test": "def check(f):\n    assert f([4, 5]) == 4\n"}  # a whole function keeps the prompt's imports
    assert reward("```python\ndef first(x: List[int]) -> int:\n    return x[0]\n```", typed) == 1.0


def test_a_task_that_is_a_plain_list_still_works_and_is_generative():
    from rlkit.lib.text.task import evaluation_of, make_example

    assert evaluation_of([make_example("q", "#### 1")], "mine") == ("generative", None, "mine")
    t = Task([make_choice_example("q", ["a", "b"], 1)], "x", evaluation="choice", title="X")
    assert evaluation_of(t[0:1], "x") == ("choice", None, "X")  # a slice keeps how it is evaluated
    with pytest.raises(ValueError):
        Task([], evaluation="essay")


# --- an eval stage in a tracked run ----------------------------------------------------------------------

PARITY_TASK = {**task(300), "max_new_tokens": 8, "reward": "parity"}
EXPERIMENT = experiment_text(
    {"tokenizer": {**TOKENIZER, "vocab_size": 512, "max_chars": 40000, "data": data(300)},
     "pretrain": {**PRETRAIN, "data": data(300), "steps": 3, "total_batch_tokens": 512, "device_batch_size": 4,
                  "optimizer": adamw(0.003), "eval_tokens": 512, "log_every": 1},
     "sft": {**SFT, "task": task(300), "examples_per_step": 4, "device_batch_size": 4, "init_lr_frac": 1.0,
             "eval_examples": 6, "eval_max_new_tokens": 8, "eval_reward": {"name": "parity"}},
     "rl": {**RL, "task": task(300), "optimizer": adamw(0.001), "rollout": {"samples": 2, "max_new_tokens": 8},
            "eval": {"every": 0, "examples": 6, "k": 3, "reward": {"name": "parity"}}},
     "eval_sft": {**EVAL, "init": "sft", "tasks": [PARITY_TASK], "core": {"path": "bundle", "max_per_task": 3}},
     "eval_rl": {**EVAL, "init": "rl",
                 "tasks": [PARITY_TASK, {**PARITY_TASK, "k": 4, "temperature": 1.0},
                           {"name": "arc_easy", "args": {"path": "arc.jsonl"}},
                           {"name": "humaneval", "args": {"path": "he.jsonl"}, "max_new_tokens": 12}]}},
    name="evals", seed=5, plugins=["./parity.py"], tracking=None)

# a reward that a barely trained model still scores unevenly on: so figures that agree are not all zeros
PARITY = """
import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"parity": lambda completion, example: float(len(completion) % 2)}
"""

READ_BACK = """
import json, sys
from aim import Repo
from rlkit.cli.comparison import read_metrics
repo = Repo.from_path(sys.argv[1])
run = next(iter(repo.query_runs("run.name == 'evals'", report_mode=0).iter_runs())).run
print(json.dumps({f"{stage}|{name}": values[-1] for (stage, name), (steps, values) in read_metrics(run).items()}))
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from typer.testing import CliRunner

    from rlkit.cli import app

    folder = tmp_path_factory.mktemp("evals")
    (folder / "exp.yaml").write_text(EXPERIMENT)
    (folder / "parity.py").write_text(PARITY)
    write_jsonl(folder / "arc.jsonl", ARC_ROWS)
    write_jsonl(folder / "he.jsonl", HUMANEVAL_ROWS)
    (folder / "bundle" / "eval_data").mkdir(parents=True)
    (folder / "bundle" / "core.yaml").write_text(core_bundle.CORE_YAML)
    (folder / "bundle" / "eval_meta_data.csv").write_text(core_bundle.META)
    for name, rows in (("mc", core_bundle.MC), ("schema", core_bundle.SCHEMA), ("lm", core_bundle.LM)):
        write_jsonl(folder / "bundle" / "eval_data" / f"{name}.jsonl", rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = CliRunner().invoke(app, ["run", "exp.yaml"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        read = subprocess.run([sys.executable, "-c", READ_BACK, str(folder / ".aim")], capture_output=True,
                              text=True, timeout=120)
        assert read.returncode == 0, read.stderr
    return folder, result.output, json.loads(read.stdout.strip().splitlines()[-1])


def table(report: str) -> dict:
    """{row label: {column: value}} of the report card's evaluation table."""
    lines = report.split("## Evaluation\n\n")[1].split("\n\n")[0].splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {h: (None if v == "-" else float(v)) for h, v in zip(head, cells[1:])}
    return rows


def test_report_card_table_has_a_column_per_evaluated_entry_with_the_values_in_aim(evaluated):
    folder, out, aim = evaluated
    rows = table((folder / "runs/evals/report.md").read_text())
    assert list(next(iter(rows.values()))) == ["SFT", "RL", "EVAL_SFT", "EVAL_RL"]  # pretrain evaluates nothing
    # `init: sft`: the sft entry's checkpoint, evaluated as the sft stage did (greedy, the same problems)
    assert rows["arithmetic accuracy"]["EVAL_SFT"] == rows["arithmetic accuracy"]["SFT"]
    assert "[eval_sft] starting from runs/evals/sft/step_000002" in out
    assert set(rows) == {"arithmetic accuracy", "arithmetic pass@1", "arithmetic pass@3",
                         "arithmetic pass@4", "ARC-Easy accuracy", "ARC-Easy centred", "HumanEval accuracy",
                         "ChatCORE", "CORE"}
    assert rows["CORE"]["EVAL_SFT"] == pytest.approx(aim["eval_sft|CORE"], abs=5e-5)
    assert rows["CORE"]["EVAL_SFT"] == pytest.approx(sum(aim[f"eval_sft|core/{t}/centred"] for t in
                                                         ("mc_task", "schema_task", "lm_task")) / 3, abs=1e-4)
    assert rows["arithmetic accuracy"]["SFT"] == pytest.approx(aim["sft|accuracy"], abs=5e-5)
    assert rows["arithmetic pass@3"]["RL"] == pytest.approx(aim["rl|pass@3"], abs=5e-5)
    assert rows["arithmetic pass@1"]["SFT"] is None and rows["arithmetic pass@4"]["RL"] is None
    for label, metric in [("arithmetic accuracy", "arithmetic/accuracy"), ("arithmetic pass@4", "arithmetic/pass@4"),
                          ("ARC-Easy accuracy", "arc_easy/accuracy"), ("ARC-Easy centred", "arc_easy/centred"),
                          ("HumanEval accuracy", "humaneval/accuracy")]:
        assert rows[label]["EVAL_RL"] == pytest.approx(aim[f"eval_rl|{metric}"], abs=5e-5), label
    # ChatCORE: the mean centred accuracy of the chat tasks that ran (ARC-Easy; HumanEval's chance is 0)
    assert rows["ChatCORE"]["EVAL_RL"] == pytest.approx((aim["eval_rl|arc_easy/centred"] +
                                                         aim["eval_rl|humaneval/accuracy"]) / 2, abs=1e-4)
    assert rows["ChatCORE"]["EVAL_RL"] == pytest.approx(aim["eval_rl|ChatCORE"], abs=5e-5)
    assert "world size 1" in (folder / "runs/evals/report.md").read_text().split("## Evaluation")[1]


def run_eval_json(folder, *args):
    out = subprocess.run([sys.executable, "-m", "rlkit", "eval", *map(str, args), "--json"], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_rlkit_eval_repeats_the_rl_stage_final_eval_and_the_eval_stage(evaluated):
    folder, out, aim = evaluated
    summary = json.loads((folder / "runs/evals/summary.json").read_text())
    after = summary["stages"]["rl"]["eval_after"]
    (row,) = run_eval_json(folder, "runs/evals/rl", "--task", "arithmetic")  # the rl entry's own settings
    assert row["entry"] == "rl" and row["settings"]["k"] == 3 and row["seed"] == 5000 + 200
    assert {k: row["figures"][k] for k in ("pass@1", "pass@3")} == {k: after[k] for k in ("pass@1", "pass@3")}
    assert 0 < after["pass@1"] < after["pass@3"] < 1  # not trivially equal
    # the run folder: its last finished entry (eval_rl, which handed rl's checkpoint on) and eval_rl's settings
    rows = run_eval_json(folder, "runs/evals", "--task", "arithmetic", "--task", "arc_easy")
    evals = summary["stages"]["eval_rl"]["evals"]
    assert [r["entry"] for r in rows] == ["eval_rl"] * 3
    assert rows[0]["figures"] == {"accuracy": evals["arithmetic"]["accuracy"]}
    assert rows[1]["figures"]["pass@4"] == evals["arithmetic"]["pass@4"] and 0 < evals["arithmetic"]["pass@1"] < 1
    assert rows[2]["figures"] == {k: evals["ARC-Easy"][k] for k in ("accuracy", "centred")}


def test_rlkit_eval_bad_task_is_one_line(evaluated, cli):
    folder, _, _ = evaluated
    result = cli("eval", folder / "runs/evals", "--task", "arithmetc")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--task" in result.stderr and "arithmetic" in result.stderr  # did you mean
    result = cli("eval", folder / "runs/evals", "--task", "arithmetic:zero")
    assert result.exit_code == 1 and "k must be a whole number" in result.stderr


def test_rlkit_compare_shows_eval_metrics_by_default():
    from rlkit.cli.comparison import _metric_rows

    series = [{("rl", "reward"): 1, ("eval_rl", "arithmetic/pass@8"): 1, ("eval_rl", "arc_easy/centred"): 1,
               ("eval_rl", "ChatCORE"): 1, ("rl", "reward/gsm8k"): 1}]
    rows = _metric_rows(series, None, ["rl", "eval_rl"])
    assert ("eval_rl", "arithmetic/pass@8") in rows and ("eval_rl", "arc_easy/centred") in rows
    assert ("eval_rl", "ChatCORE") in rows and ("rl", "reward/gsm8k") not in rows


def test_init_may_name_an_earlier_entry_but_not_a_later_one(write_yaml, cli):
    path = write_yaml("""\
        name: x
        model: {depth: 1, seq_len: 64}
        stages:
          tokenizer: {vocab_size: 300, data: {source: arithmetic, args: {size: 50}}}
          eval_early: {kind: eval, init: sft, tasks: [{name: arithmetic}]}
          sft: {task: {name: arithmetic}, steps: 1, examples_per_step: 8, device_batch_size: 8}
        """)
    result = cli("check", path)
    assert result.exit_code == 1 and "stages.eval_early.init: 'sft' is an entry that runs later" in result.stderr
