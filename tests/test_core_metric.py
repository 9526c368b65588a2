"""CORE on a small bundle in the DCLM layout (core.yaml, eval_meta_data.csv, eval_data/), one task of each type,
scored by a stub model whose preferences are known: hand-computed accuracies, centring and the mean."""
import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from rlkit.lib.evaluation.corebench import evaluate_core
from rlkit.lib.evaluation.evalbundle import bundle
from rlkit.core.errors import RlkitError
from rlkit.lib.text.tokenizer import train_tokenizer

CTX = SimpleNamespace(dist=SimpleNamespace(rank=0, world_size=1), autocast=contextlib.nullcontext,
                      sum_over_ranks=lambda t: t, device=torch.device("cpu"))

CORE_YAML = """\
icl_tasks:
  - {label: mc_task, dataset_uri: mc.jsonl, num_fewshot: [1], icl_task_type: multiple_choice}
  - {label: schema_task, dataset_uri: schema.jsonl, num_fewshot: [0], icl_task_type: schema}
  - {label: lm_task, dataset_uri: lm.jsonl, num_fewshot: [0], icl_task_type: language_modeling,
     continuation_delimiter: ""}
"""
META = "Eval Task,Random baseline\nmc_task,25\nschema_task,50\nlm_task,0\n"
# the stub always predicts "x": a choice of x's has the lowest mean loss, every schema context ties (the first
# wins), and a continuation of x's alone is reproduced greedily
MC = [{"query": "Pick one:", "choices": ["ab", "xxxx", "cd", "ef"], "gold": 1},
      {"query": "And now:", "choices": ["xxxx", "ab", "cd", "ef"], "gold": 0},
      {"query": "Last one:", "choices": ["ab", "xxxx", "cd", "ef"], "gold": 2}]  # 2 of 3
SCHEMA = [{"context_options": ["the cat", "a dog"], "continuation": "sat down", "gold": g} for g in (0, 1, 1, 0)]
LM = [{"context": "count: ", "continuation": "xxx"}, {"context": "again:", "continuation": "xx"},
      {"context": "more:", "continuation": "abc"}]  # 2 of 3


class AlwaysX(torch.nn.Module):
    def __init__(self, token, vocab):
        super().__init__()
        self.token, self.vocab = token, vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = torch.zeros(*idx.shape, self.vocab)
        logits[..., self.token] = 50.0
        return logits


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "eval_data").mkdir()
    (tmp_path / "core.yaml").write_text(CORE_YAML)
    (tmp_path / "eval_meta_data.csv").write_text(META)
    for name, rows in (("mc", MC), ("schema", SCHEMA), ("lm", LM)):
        (tmp_path / "eval_data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_core_is_the_mean_centred_accuracy_with_hand_computed_task_scores(folder):
    tokenizer = train_tokenizer(["the cat sat down, a dog sat down, pick one and now last one count again more"] * 50,
                                300)  # never saw an "x": each is its own byte token
    (x,) = tokenizer.encode("x")
    assert tokenizer.encode("xxxx") == [x] * 4
    result = evaluate_core(CTX, AlwaysX(x, tokenizer.vocab_size), tokenizer, bundle(str(folder)))
    tasks = result["tasks"]
    assert tasks["mc_task"]["accuracy"] == pytest.approx(2 / 3)
    assert tasks["mc_task"]["centred"] == pytest.approx((2 / 3 - 0.25) / 0.75)
    assert tasks["schema_task"]["accuracy"] == pytest.approx(2 / 4)  # ties pick the first context: gold 0 twice
    assert tasks["schema_task"]["centred"] == pytest.approx(0.0)
    assert tasks["lm_task"]["accuracy"] == pytest.approx(2 / 3) and tasks["lm_task"]["centred"] == pytest.approx(2 / 3)
    assert result["core"] == pytest.approx(((2 / 3 - 0.25) / 0.75 + 0.0 + 2 / 3) / 3)
    capped = evaluate_core(CTX, AlwaysX(x, tokenizer.vocab_size), tokenizer, bundle(str(folder)), max_per_task=1)
    assert all(t["accuracy"] in (0.0, 1.0) for t in capped["tasks"].values())


def test_a_folder_without_core_yaml_is_one_line(tmp_path):
    with pytest.raises(RlkitError, match="holds no core.yaml"):
        bundle(str(tmp_path))
