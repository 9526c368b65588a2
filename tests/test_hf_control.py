"""The control of docs/algorithms.md's Llama study: rlkit's pretrain of an `hf` Llama is what a plain
transformers loop computes.

The loop shares no training code with rlkit: transformers builds the model from the same config after
torch.manual_seed(seed) (rlkit's init), the model's own loss (`labels=`, transformers' ForCausalLMLoss)
scores the same token stream (rlkit's packed_batches: the stream is not in question), and torch's AdamW
steps with the pretrain entry's schedule written out by hand. In float32 the final weights must equal
rlkit's checkpoint to 1e-5, after moving by more than 1e-2: an rlkit-side difference in loss, masking,
accumulation, learning-rate schedule or optimizer groups would show."""
import pytest
import torch

from experiments import TOKENIZER, data, experiment_text

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128,
         "tie_word_embeddings": False}
STEPS, ROWS, ACCUM, SEQ, LR = 6, 4, 2, 64, 3e-3


def plain_loop(run_dir, seed: int) -> dict:
    import transformers

    from rlkit.core.plugins import load_plugins
    from rlkit.lib.text.textdata import iter_texts, packed_batches
    from rlkit.lib.text.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**LLAMA, vocab_size=tokenizer.vocab_size)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    tasks = load_plugins().tables["task"]
    texts = lambda: iter_texts("arithmetic", tasks=tasks, args={"size": 300}, split="train")  # noqa: E731
    batches = packed_batches(texts, tokenizer, ROWS, SEQ)
    for step in range(STEPS):
        for group in optimizer.param_groups:  # held for half the steps, then linearly to 0 (warmdown_frac 0.5)
            group["lr"] = LR * min(1.0, (STEPS - step) / (STEPS // 2))
        for _ in range(ACCUM):
            x, y, _ = next(batches)
            row = torch.cat([x, y[:, -1:]], dim=1)  # the model's own loss shifts the labels by one
            (model(input_ids=row, labels=row).loss / ACCUM).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.state_dict()


def test_rlkit_pretrain_of_a_llama_equals_a_plain_transformers_loop(tmp_path, cli, monkeypatch):
    from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint

    monkeypatch.chdir(tmp_path)
    pretrain = {"data": data(300), "steps": STEPS, "total_batch_tokens": ROWS * ACCUM * SEQ, "device_batch_size": ROWS,
                "optimizer": {"name": "adamw", "args": {"lr": LR}}, "warmdown_frac": 0.5, "eval_every": 0,
                "eval_tokens": 512, "log_every": 1}
    (tmp_path / "exp.yaml").write_text(experiment_text(
        {"tokenizer": {**TOKENIZER, "data": data(300)}, "pretrain": pretrain}, name="ctl", seed=5,
        model={"name": "hf", "args": {"config": LLAMA}, "seq_len": SEQ, "dtype": "float32"}))
    result = cli("run", "exp.yaml")
    assert result.exit_code == 0, result.stdout + result.stderr
    ours = load_checkpoint(latest_checkpoint(tmp_path / "runs/ctl/pretrain"))[0]
    ours = {k.removeprefix("model."): v for k, v in ours.items()}
    theirs = plain_loop(tmp_path / "runs/ctl", seed=5)
    assert ours.keys() == theirs.keys()
    torch.manual_seed(5)
    import transformers

    first = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**LLAMA, vocab_size=ours["lm_head.weight"].shape[0])).state_dict()
    assert max(float((theirs[k] - first[k]).abs().max()) for k in theirs) > 1e-2  # trained: the test is not vacuous
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-5, msg=k)
