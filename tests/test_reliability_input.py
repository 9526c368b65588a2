"""Reliability, third pass: unbounded input, misleading lines and silent results, met through the real
`python -m rlkit` in a subprocess. Each case is one line `error: ...` (exit 1, or 2 for a usage mistake), no
traceback, and comes at once. docs/reliability.md ("Input, bounded") lists each promise.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

PRETRAIN = """\
name: t
tracking: {enabled: false}
stages:
  pretrain:
    data: {source: arithmetic}
    optimizer: {name: adamw}
"""


def rlkit(*args, cwd, timeout=90):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # no loading bars on stderr
    return subprocess.run([sys.executable, "-m", "rlkit", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line(result, *parts, code=1):
    """The process ended with `code` and printed exactly one stderr line, `error: ...`, holding every part."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "name: t\n" + "\n".join(lines) + "\nstages: {}\n"


YAMLS = [
    ("alias bomb", billion_laughs(), ["expands to more than", "aliases"]),
    ("deep flow nesting", "name: t\nstages: " + "[" * 100_000 + "]" * 100_000 + "\n", ["nests more than 64"]),
    ("deep block nesting", "name: t\nstages:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)) + "\n",
     ["nests more than 64"]),
    ("alias inside itself", "name: t\nx: &a [*a]\nstages: {}\n", ["alias (*name) inside the value it names"]),
]


@pytest.mark.parametrize("what, text, parts", YAMLS, ids=[y[0] for y in YAMLS])
def test_yaml_that_would_hang_or_overflow_is_one_line_at_once(tmp_path, what, text, parts):
    (tmp_path / "x.yaml").write_text(text)
    assert len(billion_laughs()) < 1024  # the bomb is a 1 KB file that expands to 10^9 values
    one_line(rlkit("check", "x.yaml", cwd=tmp_path, timeout=60), "x.yaml", "refused", *parts)


OVERRIDES = [
    ("empty value", ["seed="], ["'seed=' gives seed no value", "seed=''"]),
    ("empty key part", ["stages..pretrain.steps=3"], ["empty part", "stages.rl.steps=10"]),
    ("leading dot", [".seed=1"], ["empty part"]),
    ("wrong type", ["seed=abc"], ["command line: seed: 'abc' is not an integer"]),
    ("seed too large", ["seed=99999999999999999999999"], ["seed", "out of range", "4294967295"]),
    ("negative seed", ["seed=-1"], ["seed: -1 is out of range"]),
    ("model too deep to build", ["model.depth=100000"], ["x.yaml: model.depth: got 100000", "1 to 512"]),
    ("model wider than any allocator", ["model.depth=1000000000000"], ["model.depth: got 1000000000000"]),
]


@pytest.mark.parametrize("what, extra, parts", OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_override_mistakes_are_one_line_pointing_the_right_way(tmp_path, what, extra, parts):
    (tmp_path / "x.yaml").write_text(PRETRAIN)
    line = one_line(rlkit("check", "x.yaml", *extra, cwd=tmp_path), *parts)
    assert "plugin" not in line and "Value '" not in line  # not a missing plugin, not OmegaConf's wording


def test_name_no_is_a_word_on_the_command_line_and_a_quoting_hint_in_a_file(tmp_path):
    (tmp_path / "x.yaml").write_text(PRETRAIN)
    result = rlkit("check", "x.yaml", "name=no", cwd=tmp_path)
    assert result.returncode == 0 and "name: 'no'" in result.stdout, result.stderr
    (tmp_path / "y.yaml").write_text(PRETRAIN.replace("name: t", "name: no"))
    one_line(rlkit("check", "y.yaml", cwd=tmp_path), "y.yaml: name:", "quote it", "name: 'no'")


HOOKS = [
    ("hook takes an argument", "def rlkit_rewards(extra):\n    return {'x': len}",
     ["rlkit_rewards() must take no arguments"]),
    ("a name that is not a string", "def rlkit_rewards():\n    return {5: len}", ["returned the name 5"]),
    ("an empty name", "def rlkit_rewards():\n    return {'': len}", ["returned the name ''"]),
    ("an async hook", "async def rlkit_rewards():\n    return {'a': len}", ["must return a dict", "coroutine"]),
]


@pytest.mark.parametrize("what, hook, parts", HOOKS, ids=[h[0] for h in HOOKS])
def test_a_plugin_hook_with_a_wrong_signature_or_names_is_one_line(tmp_path, what, hook, parts):
    (tmp_path / "p.py").write_text("import rlkit\n\n@rlkit.hookimpl\n" + hook + "\n")
    one_line(rlkit("plugins", "--plugin", "p.py", cwd=tmp_path), "p.py", *parts)


USAGE = [
    ("missing argument", ["run"], ["rlkit run: Missing argument", "rlkit run --help"]),
    ("unknown option", ["check", "x.yaml", "--bogus"], ["No such option: --bogus"]),
    ("unknown command", ["trian"], ["No such command 'trian'"]),
    ("option not a number", ["serve", "runs/x", "--port", "abc"], ["rlkit serve", "'--port'"]),
    ("option out of range", ["serve", "runs/x", "--port", "70000"], ["'--port'", "65535"]),
]


@pytest.mark.parametrize("what, args, parts", USAGE, ids=[u[0] for u in USAGE])
def test_a_usage_mistake_is_one_error_line_not_a_usage_box(tmp_path, what, args, parts):
    one_line(rlkit(*args, cwd=tmp_path), *parts, code=2)


def test_rlkit_alone_still_prints_its_help(tmp_path):
    result = rlkit(cwd=tmp_path)
    assert result.returncode == 0 and "Commands" in result.stdout and result.stderr == ""


BAD_ROWS = textwrap.dedent("""\
    import rlkit

    @rlkit.hookimpl
    def rlkit_tasks():
        return {"rows": rows}

    def rows(split, bad="none"):
        good = [{"messages": [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": "x"}]}
                for i in range(40)]
        good[30] = {"none": {"prompt": "no messages"}, "string": {"messages": "hi"},
                    "empty": {"messages": []}}[bad]
        return good
""")
SFT = """\
name: rows
device: cpu
tracking: {enabled: false}
plugins: [./rows.py]
model: {depth: 1, seq_len: 64, dtype: float32}
stages:
  tokenizer: {vocab_size: 300, max_chars: 20000, data: {source: arithmetic, args: {size: 100}}}
  sft:
    task: {name: rows, args: {bad: BAD}}
    steps: 2
    examples_per_step: 4
    device_batch_size: 4
    optimizer: {name: adamw}
    eval_examples: 0
"""


@pytest.mark.parametrize("bad", ["none", "string", "empty"])
def test_a_bad_row_deep_in_a_task_is_one_line_when_the_task_is_built(tmp_path, bad):
    (tmp_path / "rows.py").write_text(BAD_ROWS)
    (tmp_path / "x.yaml").write_text(SFT.replace("BAD", bad))
    one_line(rlkit("run", "x.yaml", cwd=tmp_path, timeout=300), "stages.sft.task: task 'rows' (train)", "example 30")
    assert not (tmp_path / "runs/rows/sft").exists() or not any((tmp_path / "runs/rows/sft").glob("step_*"))


def test_an_rl_eval_of_no_problems_is_refused_before_any_work(tmp_path, tiny_run):
    (tmp_path / "x.yaml").write_text(f"""\
name: rl0
device: cpu
tracking: {{enabled: false}}
stages:
  rl:
    init: {tiny_run}
    task: {{name: arithmetic}}
    algorithm: {{name: grpo}}
    rewards: [{{name: gsm8k}}]
    optimizer: {{name: adamw}}
    rollout: {{samples: 2, max_new_tokens: 4}}
    eval: {{examples: 0}}
""")
    one_line(rlkit("check", "x.yaml", cwd=tmp_path), "stages.rl.eval.examples: 0 must be at least 1")


def test_an_eval_k_too_large_to_allocate_is_one_line(tmp_path, tiny_run):
    one_line(rlkit("eval", tiny_run, "--task", "arithmetic:99999999999999999999", cwd=tmp_path),
             "--task arithmetic:99999999999999999999", "from 1 to 1024")


def test_an_eval_that_would_not_measure_what_it_says_is_refused(tmp_path, tiny_run):
    (tmp_path / "x.yaml").write_text(f"""\
name: ev
device: cpu
tracking: {{enabled: false}}
stages:
  ev: {{kind: eval, init: {tiny_run}, tasks: [{{name: arithmetic, k: 4}}], examples: 4}}
""")
    one_line(rlkit("run", "x.yaml", cwd=tmp_path, timeout=300), "task 'arithmetic'", "k=4 with temperature 0",
             "pass@4 would not be measured")
    card, summary = tmp_path / "runs/ev/report.md", tmp_path / "runs/ev/summary.json"
    if card.exists():  # a failed run's card says so, and holds no figure of the eval
        assert "FAILED" in card.read_text()
        assert "evals" not in json.loads(summary.read_text()).get("stages", {}).get("ev", {})


def test_an_infinite_value_is_called_not_finite_not_negative(tmp_path):
    (tmp_path / "x.yaml").write_text(PRETRAIN)
    line = one_line(rlkit("check", "x.yaml", "stages.pretrain.final_lr_frac=.inf", cwd=tmp_path),
                    "stages.pretrain.final_lr_frac: inf is not a finite number")
    assert "negative" not in line


LONG = """\
import rlkit

@rlkit.hookimpl
def rlkit_tasks():
    return {"long": long}

def long(split):
    return [{"messages": [{"role": "user", "content": "1 + " * 200 + "1?"}, {"role": "assistant", "content": "201"}],
             "answer": "201"} for _ in range(8)]
"""


def test_prompts_that_fill_the_context_ask_for_a_longer_context_not_0_new_tokens(tmp_path, tiny_run):
    (tmp_path / "long.py").write_text(LONG)
    (tmp_path / "x.yaml").write_text(f"""\
name: long
device: cpu
tracking: {{enabled: false}}
plugins: [./long.py]
stages:
  rl:
    init: {tiny_run}
    task: {{name: long}}
    algorithm: {{name: grpo}}
    rewards: [{{name: gsm8k}}]
    optimizer: {{name: adamw}}
    rollout: {{samples: 2, max_new_tokens: 4}}
""")
    line = one_line(rlkit("check", "x.yaml", cwd=tmp_path), "fill model.seq_len", "raise model.seq_len above")
    assert "use at most 0" not in line


RAISING_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' and not add_generation_prompt %}"
                    "{{ raise_exception('this template takes no assistant turns') }}{% endif %}"
                    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_hugging_face_chat_template_that_raises_is_one_line(tmp_path):
    from hf_fixtures import hf_model

    model = hf_model(tmp_path / "llama", "llama", chat_template=RAISING_TEMPLATE)
    (tmp_path / "x.yaml").write_text(f"""\
name: h
device: cpu
tracking: {{enabled: false}}
model: {{name: hf, args: {{path: {model}}}, seq_len: 160, dtype: float32}}
stages:
  sft:
    task: {{name: arithmetic, args: {{size: 50}}}}
    steps: 1
    examples_per_step: 4
    device_batch_size: 4
    optimizer: {{name: adamw}}
    eval_examples: 0
""")
    one_line(rlkit("run", "x.yaml", cwd=tmp_path, timeout=300), f"the chat template of {model}",
             "refused a chat with roles [user, assistant]", "this template takes no assistant turns")
