"""reward_model: score (prompt, completion) with a Hugging Face sequence classifier, batched over the whole step.

    rewards: [{name: reward_model, args: {path: <hub id or local folder>, batch_size: 16}}]

The text scored is the chat [user: the example's question, assistant: the completion], rendered with the
reward model's own chat template when it has one, else "question\\n\\ncompletion"; the reward is the
classifier's logit for `label` (default 0: a one-output reward head). Texts are scored `batch_size` at a
time, padded, in the model's own dtype on `device` (default: CUDA when there is one). The model is loaded
once per (path, device, dtype) and kept for the run. Torch and transformers are imported when it first
scores, so listing plugins loads neither.
"""
from __future__ import annotations

import functools

import rlkit
from rlkit.core.errors import RlkitError


class RewardModel:
    """A reward with a batched form: core calls score_batch once per step (rlkit.lib.evaluation.scoring)."""

    def __call__(self, completion: str, example, **args) -> float:
        return self.score_batch([completion], [example], **args)[0]

    def score_batch(self, completions: list[str], examples: list, path: str, label: int = 0, batch_size: int = 16,
                    max_length: int = 1024, device: str = "auto", dtype: str = "float32") -> list[float]:
        import torch

        model, tok = _load(path, device, dtype)
        texts = [_render(tok, example, completion) for completion, example in zip(completions, examples)]
        scores = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tok(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(model.device)
                scores += model(**batch).logits[:, label].float().tolist()
        return scores


def _render(tok, example, completion: str) -> str:
    question = example["messages"][0]["content"]
    if getattr(tok, "chat_template", None):
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": completion}]
        return tok.apply_chat_template(chat, tokenize=False)
    return f"{question}\n\n{completion}"


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str, dtype: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                          else device)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as e:  # noqa: BLE001 -- missing folder, offline: one line naming the source
        raise RlkitError(f"reward_model: cannot load {path!r} ({str(e).strip().splitlines()[0][:200]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id  # so the classifier reads each row's last real token
    return model.to(target).eval(), tok


reward_model = RewardModel()


@rlkit.hookimpl
def rlkit_rewards():
    return {"reward_model": reward_model}
