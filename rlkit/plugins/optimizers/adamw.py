"""adamw: torch's AdamW with one param group per parameter role.

Weight decay (decoupled, as in AdamW) applies to the "matrix" and "unembedding" weights only;
embeddings, norms, biases and other scalars are never decayed. Each role may have its own lr
(default: `lr` for all). Every group carries "role" and "initial_lr" (what set_lr scales).
A stage's `init_lr_frac` scales every rate at once, `lr` included (in rl, at its 0.05, `lr: 1e-5` trains at
5e-7; each stage logs the rates it really uses, and `rlkit check` prints them).
Under DDP the gradients arrive averaged, so every rank takes the same step.
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import param_roles

DECAYED_ROLES = ("matrix", "unembedding")


@rlkit.hookimpl
def rlkit_optimizers():
    return {"adamw": adamw}


def adamw(model, lr: float = 3e-4, embedding_lr: float | None = None,
          unembedding_lr: float | None = None, scalar_lr: float | None = None,
          weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
    """torch.optim.AdamW over the model's parameter roles; per-role lrs default to `lr`."""
    import torch  # here, not at the top: listing plugins needs no torch
    lrs = {"matrix": lr, "embedding": embedding_lr, "unembedding": unembedding_lr, "scalar": scalar_lr}
    lrs = {role: (lr if role_lr is None else role_lr) for role, role_lr in lrs.items()}
    for name, value in dict(lr=lr, weight_decay=weight_decay, eps=eps).items():
        if value < 0:
            raise RlkitError(f"optimizer adamw: {name}={value} must be >= 0")
    if any(r < 0 for r in lrs.values()):
        raise RlkitError(f"optimizer adamw: every per-role lr must be >= 0, got {lrs}")

    groups = []
    for role, params in param_roles(model).items():
        params = [p for p in params if p.requires_grad]
        if params:
            decay = weight_decay if role in DECAYED_ROLES else 0.0
            groups.append(dict(params=params, role=role, lr=lrs[role], initial_lr=lrs[role], weight_decay=decay))
    if not groups:
        raise RlkitError(f"optimizer adamw: {type(model).__name__} has no trainable parameters")
    # the fused kernel is one launch for all parameters; it needs them all on the GPU
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)
