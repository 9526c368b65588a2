"""The `hf` model plugin's policy: a transformers causal LM wrapped as rlkit's Policy (rlkit.core.policy).

The training forward is the model's own (right-padded batches need no mask: causal attention never lets a
real token see the padding after it); sampling goes through rlkit's sampler (hf_decode.py); with LoRA, the
state dict holds the adapters alone and export merges them. hf.py builds it (and registers the plugin).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn


class HFPolicy(nn.Module):
    def __init__(self, model, spec: dict, tokenizer=None, max_len: int = 0):
        super().__init__()
        self.model, self._spec, self.max_len = model, spec, max_len
        self.lora = spec.get("lora") is not None
        if tokenizer is not None:
            self.tokenizer = tokenizer  # the model brings its own (rlkit.core.policy)

    def state_dict(self, *args, **kwargs):
        """With LoRA only the adapters: the base weights are the model at `path`, rebuilt from the spec."""
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if "lora_" in k} if self.lora else state

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        if not self.lora:
            return super().load_state_dict(state, strict=strict, assign=assign)
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise RuntimeError(f"LoRA adapters do not match: unexpected {result.unexpected_keys[:3]}, "
                               f"missing {missing[:3]}")
        return result

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = self.model(input_ids=idx).logits.float()  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=loss_reduction)
        return loss.view(targets.shape) if loss_reduction == "none" else loss

    def spec(self) -> dict:
        return dict(self._spec)

    def adapter_free(self):
        """With LoRA, a context in which forward is the base model (peft's disable_adapter(): every adapter
        bypassed, no copy), in eval mode so it is deterministic; the rl stage's KL reference. None without."""
        return self._adapters_off() if self.lora else None

    @contextlib.contextmanager
    def _adapters_off(self):
        training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self.model.train(training)

    def export(self, folder, tokenizer) -> list[str]:
        """A folder AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load (LoRA adapters
        merged into the weights: W + (alpha / r) B A; rlkit's own tokenizer converted); returns notes."""
        from rlkit.plugins.models.tokenizer_export import hf_tokenizer

        model = copy.deepcopy(self.model).merge_and_unload() if self.lora else self.model
        if hasattr(tokenizer, "tok"):  # the model's own Hugging Face tokenizer, chat template included
            model.save_pretrained(folder)
            tokenizer.tok.save_pretrained(folder)
            return []
        fast = hf_tokenizer(tokenizer)  # rlkit's own, converted; its specials replace the architecture's defaults
        for config in (model.config, model.generation_config):
            config.bos_token_id, config.pad_token_id = fast.bos_token_id, fast.pad_token_id
            config.eos_token_id = list(tokenizer.stop_ids)
        model.save_pretrained(folder)
        fast.save_pretrained(folder)
        return []

    def decoder(self, dtype):
        """The sampler's view; in another dtype than the weights', a copy whose weights are stored in it (made
        once, refreshed in place each call: the same numbers as autocast without recasting every weight on
        every decode step)."""
        from rlkit.plugins.models.hf_decode import HFDecoder

        if dtype == next(self.model.parameters()).dtype:
            return HFDecoder(self.model, self.max_len)
        shadows = self.__dict__.setdefault("_shadows", {})  # not a submodule: kept out of state_dict()
        if dtype not in shadows:
            shadows[dtype] = copy.deepcopy(self.model).to(dtype).eval()
        with torch.no_grad():
            for mine, theirs in zip(shadows[dtype].parameters(), self.model.parameters()):
                mine.copy_(theirs)
        return HFDecoder(shadows[dtype], self.max_len)
