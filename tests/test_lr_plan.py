"""init_lr_frac multiplies explicit rates too (`lr: 1e-5` in rl trains at 5e-7): the run's log and `rlkit check`
say the rate really used, which is the one in the optimizer."""
import re

from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

from experiments import RL, TOKENIZER, adamw


def test_check_and_the_log_show_the_rl_rate_init_lr_frac_gives(cli, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = experiment({"tokenizer": TOKENIZER, "rl": {**RL, "optimizer": adamw(1e-5), "steps": 1}})
    checked = cli("check", path)
    assert checked.exit_code == 0, checked.stderr
    assert "# stages.rl: lr at step 1: lr 1e-05 -> 5e-07 (adamw's rates x init_lr_frac 0.05), then linearly " \
           "down to 0 at step 1\n" in checked.stderr
    explicit = cli("check", path, "stages.rl.init_lr_frac=1")
    assert "lr 1e-05 -> 1e-05 (adamw's rates x init_lr_frac 1)" in explicit.stderr

    ran = cli("run", path)
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    line = re.search(r"^\[rl\] lr at step 1: (.*)$", ran.stdout, re.M)
    assert line, ran.stdout
    assert line.group(1) == ("matrix 5e-07, embedding 5e-07, unembedding 5e-07, scalar 5e-07 (adamw's rates x "
                             "init_lr_frac 0.05), then linearly down to 0 at step 1")
    _, optimizer, _ = load_checkpoint(latest_checkpoint(tmp_path / "runs/tiny/rl"))
    assert {round(g["lr"], 12) for g in optimizer["param_groups"]} == {5e-07}  # what step 1 trained at
