"""Will the model fit the device? A one-line estimate before any work, from the model plugin's parameter count.

    training memory >= parameters x 16 bytes: fp32 weights (4), gradients (4) and two optimizer moments (8,
    AdamW's; Muon keeps one), before activations, the KV cache and the reference model of some algorithms.
    Per rank: all of it under ddp (a full replica on each); under fsdp over N ranks (parallel.strategy,
    rlkit.lib.training.parallel) 1/N of it, as FSDP2 shards weights, gradients and optimizer state alike.

A model plugin offers its count as `factory.param_count(vocab_size, seq_len, **args) -> int` (the built-in
GPT counts from its config's shapes, gpt_config.py, without torch). Before a tokenizer exists the vocabulary is
taken as 256 (bytes only), so the count is a lower bound and a run is refused only when it cannot fit.
The memory compared is what is free now: torch.cuda.mem_get_info on a GPU, else the available RAM.
`rlkit check` and `rlkit run` check the experiment's `model:` so (check_model_fits), once pipeline.prepare
has named its plugin.
"""
from __future__ import annotations

import os

from omegaconf import OmegaConf

from rlkit.core.errors import RlkitError

BYTES_PER_PARAM = 16
MIN_VOCAB = 256
GiB = 1 << 30


def check_model_fits(cfg, plugins, where: str, world_size: int) -> None:
    """The experiment's `model:` (`where` names it) against this device, split over `world_size` ranks under
    fsdp; nothing when its plugin is not known before a run (a model built by an entry that names it)."""
    if cfg.model.name is None:
        return
    shards = world_size if cfg.parallel.strategy == "fsdp" else 1
    check_fits_memory(plugins.tables["model"][cfg.model.name], OmegaConf.to_container(cfg.model.args),
                      cfg.model.seq_len, None, cfg.device, where, shards=shards)


def check_fits_memory(factory, args: dict, seq_len: int, vocab_size: int | None, device: str, where: str,
                      shards: int = 1) -> None:
    """Refuse, in one line, a model whose training state cannot fit this rank (`shards`: fsdp's rank count)."""
    count = getattr(factory, "param_count", None)
    if not callable(count):
        return
    try:
        params = int(count(vocab_size or MIN_VOCAB, seq_len, **args))
    except RlkitError as e:  # a value out of the model's range: its own line, before any work
        prefix = where.removesuffix("model").rstrip()  # "exp.yaml: model" + "model.depth: ..." names it once
        raise RlkitError(f"{prefix} {e}" if str(e).startswith("model") else f"{where}: {e}") from None
    except Exception as e:  # a plugin's fault (e.g. an arg its param_count lacks): one line, not a traceback
        raise RlkitError(f"{where}: the model plugin's param_count(vocab_size, seq_len, **args) raised "
                         f"{type(e).__name__}: {e}; it must accept the factory's args") from None
    need, (free, what) = params * BYTES_PER_PARAM // shards, free_memory(device)
    if free is not None and need > free:
        bound = "" if vocab_size else "at least "
        split = f" per rank, sharded over {shards} ranks" if shards > 1 else ""
        raise RlkitError(f"{where}: this model has {bound}{params / 1e9:.2f}B parameters, about {need / GiB:.1f} GiB "
                         f"for weights, gradients and optimizer state{split} ({BYTES_PER_PARAM} bytes a parameter, "
                         f"before activations), but {what} has {free / GiB:.1f} GiB free; use a smaller model "
                         "(model.args), parallel.strategy=fsdp over more ranks, or a device with more memory")


def free_memory(device: str) -> tuple[int | None, str]:
    """(bytes free on the device the run will use, its name); None when unknown (MPS, say)."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return None, "cuda"
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        return torch.cuda.mem_get_info(index)[0], f"GPU {index} ({torch.cuda.get_device_name(index)})"
    if kind != "cpu":
        return None, kind
    try:
        import psutil

        return psutil.virtual_memory().available, "this machine's RAM"
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's RAM"
