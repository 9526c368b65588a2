"""The model plugin `gpt`: rlkit's nanochat-style GPT, one dial (`depth`) setting the whole model.

    model: {name: gpt, args: {depth: 4}, seq_len: 512}

The network, its init and its sampler are gpt_model.py. This module only registers the factory and its
parameter count: the factory imports the network (and torch) when called, the count needs neither
(gpt_config.py), and listing plugins needs neither.
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_config import GPTConfig  # torch-free: the parameter count needs no network


def gpt(tokenizer, seq_len: int, depth: int = 4, head_dim: int = 64, softcap: float = 15.0, lambdas: bool = True):
    """The model plugin: a GPT (gpt_model.py) for `tokenizer`'s vocabulary (rlkit's BPE: no tokenizer of its own)."""
    from rlkit.plugins.models.gpt_model import GPT

    if tokenizer is None:
        raise RlkitError("model 'gpt' brings no tokenizer: put a tokenizer stage first (or init: a run that has one)")
    if not isinstance(lambdas, bool):
        raise RlkitError(f"model.lambdas: got {lambdas!r}; it must be true or false")
    model = GPT(GPTConfig(depth=depth, vocab_size=tokenizer.vocab_size, seq_len=seq_len, head_dim=head_dim,
                          softcap=softcap, lambdas=lambdas))
    model.init_weights()  # a second draw, as the first build made it: the same seed gives the same weights
    return model


def param_count(vocab_size: int, seq_len: int, depth: int = 4, head_dim: int = 64, softcap: float = 15.0,
                lambdas: bool = True) -> int:
    """The parameters gpt(...) would have, from its config's shapes (no torch, nothing built): for the memory
    estimate of `rlkit check` (rlkit/lib/training/memory.py)."""
    return GPTConfig(depth=depth, vocab_size=vocab_size, seq_len=seq_len, head_dim=head_dim, softcap=softcap,
                     lambdas=lambdas).param_count()


gpt.param_count = param_count


@rlkit.hookimpl
def rlkit_models():
    return {"gpt": gpt}


def __getattr__(name):  # moved to gpt_model.py so that loading this plugin needs no torch; old imports still work
    if name == "GPT":
        import importlib

        return getattr(importlib.import_module("rlkit.plugins.models.gpt_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
