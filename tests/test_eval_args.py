"""`rlkit eval CKPT --task NAME --arg key=value`: task arguments from the command line (YAML scalars), e.g. the
local `path:` that GSM8K's offline error asks for."""
import json

GSM8K_ROWS = [{"question": f"Tom has {n} apples and buys 2 more. How many?", "answer": f"{n} + 2 = {n + 2}\n#### {n + 2}"}
              for n in range(1, 6)]


def test_task_args_reach_the_task_and_change_what_is_evaluated(tiny_run, tmp_path, cli):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    base = ("eval", tiny_run, "--task", "gsm8k", "--examples", "10", "--json", "--arg", f"path={folder}")
    whole = cli(*base)
    assert whole.exit_code == 0, whole.output
    (row,) = json.loads(whole.stdout)
    assert row["problems"] == 5 and row["settings"]["args"] == {"path": str(folder)}
    limited = cli(*base, "--arg", "limit=2")  # an int, parsed as YAML: the task takes only its first 2 rows
    assert limited.exit_code == 0, limited.output
    (row,) = json.loads(limited.stdout)
    assert row["problems"] == 2 and row["settings"]["args"] == {"path": str(folder), "limit": 2}


def test_a_bad_task_arg_is_one_line(tiny_run, cli):
    result = cli("eval", tiny_run, "--task", "arithmetic", "--arg", "operands")
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        "error: --arg 'operands': give key=value, e.g. --arg operands=3"]
    result = cli("eval", tiny_run, "--task", "arithmetic", "--examples", "2", "--arg", "nonsense=1")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "nonsense" in result.stderr, result.stderr
