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

The policy (its forward, sampler and export) is hf_policy.py; this module registers the plugin and builds
it, importing transformers and torch only then, so listing plugins needs neither. A checkpoint
records spec(): the path (the weights are then loaded once more and replaced by the checkpoint's) or the
full config, so the model is rebuilt without the YAML.
"""
from __future__ import annotations

import json

import rlkit
from rlkit.core.errors import RlkitError

DTYPES = {"auto": "float32", "float32": "float32", "bfloat16": "bfloat16"}  # the weights' torch dtype


def hf(tokenizer, seq_len: int, path: str | None = None, config: dict | None = None, tokenizer_path: str | None = None,
       revision: str | None = None, dtype: str = "auto", attn_implementation: str = "sdpa",
       trust_remote_code: bool = False, lora: dict | None = None):
    """A transformers causal LM as an HFPolicy (hf_policy.py): loaded from `path`, or built from `config` (see the
    module docstring)."""
    import torch
    import transformers

    from rlkit.plugins.models.hf_policy import HFPolicy

    if (path is None) == (config is None):
        raise RlkitError("model 'hf': give exactly one of args.path (a hub id or local folder) and args.config")
    if dtype not in DTYPES:
        raise RlkitError(f"model 'hf': dtype '{dtype}' is not valid (valid: {', '.join(DTYPES)})")
    common = dict(dtype=getattr(torch, DTYPES[dtype]), attn_implementation=attn_implementation,
                  trust_remote_code=trust_remote_code)
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


def __getattr__(name):  # moved to hf_policy.py so that loading this plugin needs no torch; old imports still work
    if name in ("HFPolicy",):
        import importlib

        return getattr(importlib.import_module("rlkit.plugins.models.hf_policy"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
