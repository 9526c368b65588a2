"""`rlkit chat`: -p answers once with exactly the sampler's greedy reply; a conversation keeps its turns in the
chat format, /clear starts over, /quit leaves; a bad checkpoint path is one line."""
import pytest
from typer.testing import CliRunner

from rlkit.cli import app
from rlkit.cli.inference import load
from rlkit.lib.generation.sampling import generate


@pytest.fixture(scope="module")
def model(tiny_run):
    model, tokenizer, _ = load(tiny_run)
    return model, tokenizer


def reply(model, messages, max_new, temperature=0.0, seed=0):
    """The reply rlkit's sampler gives (top-k 50, that seed), as text (stop token left out)."""
    model, tokenizer = model
    out = generate(model, [tokenizer.render_for_completion(messages)], 1, max_new, temperature, 50,
                   stop_tokens=tokenizer.stop_ids, seeds=[seed]).completions[0]
    return tokenizer.decode([t for t in out if t not in tokenizer.stop_ids])


def test_p_prints_the_samplers_greedy_reply(cli, tiny_run, model):
    result = cli("chat", tiny_run, "-p", "What is 3 + 4?", "--temperature", "0", "--max-tokens", "30")
    assert result.exit_code == 0, result.stderr
    expected = reply(model, [{"role": "user", "content": "What is 3 + 4?"}], 30)
    assert expected and result.stdout == expected + "\n"


def test_a_conversation_keeps_its_turns_and_clear_starts_over(tiny_run, model):
    result = CliRunner().invoke(app, ["chat", str(tiny_run), "--temperature", "1", "--max-tokens", "20", "--seed", "4"],
                                input="Add 1 and 2.\nAnd 5?\n/clear\nAnd 5?\n/quit\nnever read\n")
    assert result.exit_code == 0, result.output
    user = [{"role": "user", "content": "Add 1 and 2."}]
    first = reply(model, user, 20, 1.0, seed=4)  # turn k samples with seed 4 + k
    follow = [*user, {"role": "assistant", "content": first}, {"role": "user", "content": "And 5?"}]
    second = reply(model, follow, 20, 1.0, seed=5)
    fresh = reply(model, [{"role": "user", "content": "And 5?"}], 20, 1.0, seed=6)
    assert second != reply(model, follow[2:], 20, 1.0, seed=5)  # the earlier turns change the answer
    replies = [line.split("model> ", 1)[1] for line in result.output.split("you> ") if "model> " in line]
    assert replies == [first + "\n", second + "\n", fresh + "\n"]
    assert "(new conversation)" in result.output and "never read" not in result.output


def test_a_path_without_a_checkpoint_is_one_line(cli, tmp_path):
    result = cli("chat", tmp_path, "-p", "hi")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and str(tmp_path) in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_help_lists_the_commands_and_is_not_sent_to_the_model(tiny_run, model):
    result = CliRunner().invoke(app, ["chat", str(tiny_run), "--temperature", "0", "--max-tokens", "20"],
                                input="/help\nAdd 1 and 2.\n/quit\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("/clear: new conversation") == 2  # the banner, then /help's answer
    replies = [line.split("model> ", 1)[1] for line in result.output.split("you> ") if "model> " in line]
    assert replies == [reply(model, [{"role": "user", "content": "Add 1 and 2."}], 20) + "\n"]  # /help not a turn
