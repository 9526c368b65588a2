"""The `hf` model plugin: any Hugging Face causal LM as the policy, loaded or built with transformers.

    model: {name: hf, args: {path: Qwen/Qwen2.5-0.5B-Instruct}}          # a hub id or a local folder
    model: {name: hf, args: {config: {model_type: llama, hidden_size: 256, num_hidden_layers: 4, ...}}}

`path` loads AutoModelForCausalLM and AutoTokenizer (the tokenizer brings its chat template; prompts are
rendered with it and replies end at its end-of-turn / EOS ids). `config` builds a fresh model of that
transformers architecture, to train from nothing with rlkit's tokenizer (a tokenizer stage), or with the
tokenizer at `tokenizer:`. `trust_remote_code` runs the model author's own Python code: it is off unless
the YAML turns it on. Weights stay float32 by default (`dtype: auto`; the run's autocast does bf16
compute); `dtype: bfloat16` keeps them in bf16 to halve memory. `lora: {r, alpha, dropout, target_modules}`
trains peft LoRA adapters only; checkpoints then hold the adapters alone and export merges them.

The training forward is the model's own (right-padded batches need no mask: causal attention never lets a
real token see the padding after it); sampling goes through rlkit's sampler (hf_decode.py). A checkpoint
records spec(): the path (the weights are then loaded once more and replaced by the checkpoint's) or the
full config, so the model is rebuilt without the YAML.
"""
from __future__ import annotations

import contextlib
import copy
import json

import torch
import torch.nn.functional as F
from torch import nn

import rlkit
from rlkit.core.errors import RlkitError

DTYPES = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}


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


def hf(tokenizer, seq_len: int, path: str | None = None, config: dict | None = None, tokenizer_path: str | None = None,
       revision: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa",
       trust_remote_code: bool = False, lora: dict | None = None) -> HFPolicy:
    """A transformers causal LM: loaded from `path`, or built from `config` (see the module docstring)."""
    import transformers

    if (path is None) == (config is None):
        raise RlkitError("model 'hf': give exactly one of args.path (a hub id or local folder) and args.config")
    if dtype not in DTYPES:
        raise RlkitError(f"model 'hf': dtype '{dtype}' is not valid (valid: {', '.join(DTYPES)})")
    common = dict(dtype=DTYPES[dtype], attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    spec = dict(path=path, config=None, tokenizer_path=tokenizer_path, revision=revision, dtype=dtype,
                attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, lora=lora)
    if path is not None:
        model = _load(transformers.AutoModelForCausalLM, path, revision=revision, **common)
    else:
        config = dict(config)
        if "vocab_size" not in config and tokenizer is not None:
            config["vocab_size"] = tokenizer.vocab_size
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise RlkitError("model 'hf': args.config needs model_type (e.g. llama, qwen2)")
        hf_config = transformers.AutoConfig.for_model(model_type, **config)
        model = transformers.AutoModelForCausalLM.from_config(hf_config, **common)
        spec["config"] = {"model_type": model_type, **json.loads(hf_config.to_json_string(use_diff=True))}
    own = _own_tokenizer(tokenizer, path, tokenizer_path, revision, trust_remote_code, model)
    if own is None and tokenizer is None:
        raise RlkitError("model 'hf' built from args.config needs a tokenizer: put a tokenizer stage first, or give "
                         "args.tokenizer_path")
    _check_vocab((own or tokenizer).vocab_size, model.get_input_embeddings().num_embeddings)
    max_len = getattr(model.config, "max_position_embeddings", None) or 10 * seq_len
    if lora is not None:
        model = _with_lora(model, lora)
    return HFPolicy(model, spec, own, max_len)


def _with_lora(model, lora: dict):
    """peft's LoRA on `target_modules` (its default for the architecture when left out): W x + (alpha / r) B A x,
    B zero at init, so the model starts as it was; every other weight is frozen."""
    from peft import LoraConfig, get_peft_model

    args = {"r": 16, "alpha": 32, "dropout": 0.0, **lora}
    unknown = set(args) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise RlkitError(f"model 'hf': args.lora takes r, alpha, dropout, target_modules (not {sorted(unknown)})")
    try:
        config = LoraConfig(r=args["r"], lora_alpha=args["alpha"], lora_dropout=args["dropout"],
                            target_modules=args.get("target_modules"), task_type="CAUSAL_LM")
        return get_peft_model(model, config)
    except (ValueError, TypeError) as e:
        raise RlkitError(f"model 'hf': args.lora: {str(e).splitlines()[0][:200]}") from None


def check(seq_len: int, path: str | None = None, config: dict | None = None, tokenizer_path: str | None = None,
          revision: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa",
          trust_remote_code: bool = False, lora: dict | None = None) -> None:
    """Up front (rlkit check), without loading weights: the folder or id loads, the tokenizer has a chat
    template, and its vocabulary fits the model's."""
    import transformers

    if (path is None) == (config is None):
        raise RlkitError("give exactly one of args.path (a hub id or local folder) and args.config")
    if dtype not in DTYPES:
        raise RlkitError(f"dtype '{dtype}' is not valid (valid: {', '.join(DTYPES)})")
    if path is None:
        return  # a fresh model: built (and checked) when its stage starts
    hf_config = _load(transformers.AutoConfig, path, revision=revision, trust_remote_code=trust_remote_code)
    tok = _load(transformers.AutoTokenizer, tokenizer_path or path, trust_remote_code=trust_remote_code)
    if not getattr(tok, "chat_template", None):
        raise RlkitError(f"the tokenizer at {tokenizer_path or path} has no chat template; give one that has")
    _check_vocab(len(tok), hf_config.vocab_size)


def _check_vocab(tokens: int, embeddings: int) -> None:
    if tokens > embeddings:
        raise RlkitError(f"model 'hf': the tokenizer has {tokens} tokens but the model's embedding only "
                         f"{embeddings}; they must belong together")


hf.check = check  # rlkit.core.policy.check_model calls it in `rlkit check`


def _own_tokenizer(tokenizer, path, tokenizer_path, revision, trust_remote_code, model):
    """The model's own tokenizer (from tokenizer_path, else from path when the run has none), or None."""
    from transformers import AutoTokenizer

    from rlkit.plugins.models.hf_tokenizer import HFTokenizer

    source = tokenizer_path or (path if tokenizer is None else None)
    if source is None:
        return None
    tok = _load(AutoTokenizer, source, revision=revision if source == path else None, trust_remote_code=trust_remote_code)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    return HFTokenizer(tok, [eos] if isinstance(eos, int) else (eos or []), source)


def _load(auto, source: str, **kwargs):
    """auto.from_pretrained(source) with its failure as one line (a missing folder, offline, no such id)."""
    try:
        return auto.from_pretrained(source, **kwargs)
    except Exception as e:  # noqa: BLE001 -- OSError, ValueError, HTTP errors: the user needs the source and why
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RlkitError(f"model 'hf': cannot load {auto.__name__[4:].lower()} from {source!r} ({first}); give a "
                         "local folder saved with save_pretrained or a hub id this machine can download") from None


@rlkit.hookimpl
def rlkit_models():
    return {"hf": hf}
