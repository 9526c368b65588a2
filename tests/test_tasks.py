"""Task plugins: the generated arithmetic task and GSM8K (local JSONL, hub failure), through pluggy."""
import json
import re
from pathlib import Path

import pluggy
import pytest

from rlkit.core import hookspecs
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task, example_text, make_example, prompt_messages
from rlkit.plugins.tasks import arithmetic as arithmetic_plugin
from rlkit.plugins.tasks import gsm8k as gsm8k_plugin
from rlkit.plugins.tasks.arithmetic import arithmetic, evaluate, is_test
from rlkit.plugins.tasks.gsm8k import gsm8k

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def canon(example):
    return str(example["numbers"][0]) + "".join(f"{op}{k}" for op, k in zip(example["ops"], example["numbers"][1:]))


def test_plugins_register_through_pluggy():
    pm = pluggy.PluginManager("rlkit")
    pm.add_hookspecs(hookspecs)
    pm.register(arithmetic_plugin)
    pm.register(gsm8k_plugin)
    tables = pm.hook.rlkit_tasks()
    assert sorted(name for table in tables for name in table) == ["arithmetic", "gsm8k"]


def test_task_helpers():
    ex = make_example("What is 1 + 1?", "1 + 1 = 2\n#### 2", value=2)
    task = Task([ex, ex], "t")
    assert len(task) == 2 and task[0] is ex and isinstance(task[:1], Task) and len(task[:1]) == 1
    assert ex["answer"] == ex["messages"][1]["content"] and ex["value"] == 2
    assert prompt_messages(ex) == [{"role": "user", "content": "What is 1 + 1?"}]
    assert example_text(ex) == "What is 1 + 1?\n1 + 1 = 2\n#### 2"


def test_arithmetic_is_deterministic_given_the_seed():
    a, b = arithmetic("train", size=200, seed=1), arithmetic("train", size=200, seed=1)
    assert a.examples == b.examples and len(a) == 200
    assert arithmetic("train", size=200, seed=2).examples != a.examples
    assert len(arithmetic("train")) == 20000 and len(arithmetic("test")) == 500


def test_arithmetic_splits_never_share_a_problem():
    train, test = arithmetic("train", size=5000), arithmetic("test")
    train_set, test_set = {canon(e) for e in train}, {canon(e) for e in test}
    assert not train_set & test_set
    assert len(test_set) == len(test)  # test problems are distinct
    assert all(is_test(c) for c in test_set) and not any(is_test(c) for c in train_set)


def test_arithmetic_answers_are_right_in_question_solution_and_answer():
    task = arithmetic("test", operands=[2, 4], ops="+-*", size=300)
    assert {len(e["numbers"]) for e in task} == {2, 3, 4} and {o for e in task for o in e["ops"]} == set("+-*")
    for e in task:
        question, solution = e["messages"][0]["content"], e["messages"][1]["content"]
        assert solution == e["answer"]
        assert [int(n) for n in re.findall(r"\d+", question)] == e["numbers"]  # the story states every number
        steps = list(zip(e["ops"], e["numbers"][1:]))
        assert e["value"] == evaluate(e["numbers"][0], steps) >= 0
        assert solution.endswith(f"\n#### {e['value']}")
        lines = re.findall(r"(\d+) ([-+*]) (\d+) = \$?(\d+)", solution)
        assert len(lines) == len(steps)
        for a, op, k, r in lines:  # every worked step is correct arithmetic
            assert evaluate(int(a), [(op, int(k))]) == int(r) >= 0


def test_arithmetic_difficulty_knobs_and_errors():
    easy = arithmetic("train", max_value=20, ops="+", size=50)
    assert all(max(e["numbers"]) <= 20 and e["ops"] == ["+"] for e in easy)
    with pytest.raises(RlkitError, match="operands"):
        arithmetic("train", operands=1)
    with pytest.raises(RlkitError, match="ops"):
        arithmetic("train", ops="/")
    with pytest.raises(RlkitError, match="split"):
        arithmetic("validation")
    with pytest.raises(RlkitError, match="distinct test problems"):
        arithmetic("test", max_value=5, ops="+", size=500)  # only 25 problems exist


def test_gsm8k_loads_the_shared_copy():
    train, test = gsm8k("train", path=str(GSM8K)), gsm8k("test", path=str(GSM8K), limit=10)
    assert len(train) == 7473 and len(test) == 10
    for e in train:
        assert "<<" not in e["answer"] and re.search(r"\n#### -?[\d,.]+$", e["answer"])
    assert train[0]["answer"].startswith("Natalia sold 48/2 = 24 clips in May.\n")


def write(folder, name, lines):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder / name


def test_gsm8k_from_a_written_folder_strips_annotations(tmp_path):
    row = {"question": "Q?", "answer": "Half of 8 is 8/2 = $<<8/2=4>>4.\n#### 4"}
    write(tmp_path, "train.jsonl", [json.dumps(row), "", json.dumps(row)])
    task = gsm8k("train", path=str(tmp_path))
    assert len(task) == 2
    assert task[0]["messages"] == [{"role": "user", "content": "Q?"},
                                   {"role": "assistant", "content": "Half of 8 is 8/2 = $4.\n#### 4"}]
    with pytest.raises(RlkitError, match="test.jsonl not found"):
        gsm8k("test", path=str(tmp_path))
    with pytest.raises(RlkitError, match="not a folder"):
        gsm8k("train", path=str(tmp_path / "missing"))


def test_gsm8k_bad_rows_name_file_and_line(tmp_path):
    good = json.dumps({"question": "Q?", "answer": "#### 1"})
    file = write(tmp_path, "train.jsonl", [good, "{not json"])
    with pytest.raises(RlkitError, match=rf"^{re.escape(str(file))}:2: bad JSON") as err:
        gsm8k("train", path=str(tmp_path))
    assert "\n" not in str(err.value)
    write(tmp_path, "train.jsonl", [good, good, json.dumps({"question": "Q?"})])
    with pytest.raises(RlkitError, match=rf"^{re.escape(str(file))}:3: missing field 'answer'"):
        gsm8k("train", path=str(tmp_path))
    write(tmp_path, "train.jsonl", [json.dumps({"question": "Q?", "answer": "no final line"})])
    with pytest.raises(RlkitError, match=":1: the answer has no final '####"):
        gsm8k("train", path=str(tmp_path))


def test_gsm8k_hub_failure_says_to_pass_path(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RlkitError, match=r"could not load 'openai/gsm8k'.*OfflineModeIsEnabled.*pass `path:`"):
        gsm8k("train")


def test_gsm8k_from_the_hub_loader(monkeypatch):
    import datasets

    rows = [{"question": "Q?", "answer": "1+1=<<1+1=2>>2\n#### 2"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda source, config, split: rows if config == "main" else None)
    assert gsm8k("test")[0]["answer"] == "1+1=2\n#### 2"
