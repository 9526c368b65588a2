"""muon: Muon on the hidden weight matrices, AdamW on the rest, as one torch optimizer (nanochat's recipe).

Muon (Keller Jordan, 2024) for each "matrix" parameter W of shape (rows, cols) and gradient G:
    B <- momentum * B + (1 - momentum) * G        # momentum buffer
    U <- (1 - momentum) * G + momentum * B        # Nesterov look-ahead
    O <- orthogonalize(U)                         # U = P S Q^T  ->  ~ P Q^T: every singular value ~1
    W <- W * (1 - lr * weight_decay) - lr * max(1, rows / cols) ** 0.5 * O
orthogonalize() runs `ns_steps` Newton-Schulz-style odd quintic iterations X <- a X + (b A + c A^2) X,
A = X X^T, in bfloat16 where bf16 matmuls are fast (CUDA, CPUs with AVX512-BF16 or AMX; elsewhere torch
emulates bf16, a Muon step 57x slower than in fp32, so there it runs in fp32), with the Polar Express
coefficients (Amsel et al. 2025, arXiv:2505.16932):
singular values land in about [0.85, 1.15] in 5 steps. Matrices of one shape are stacked and
orthogonalized together in one batched matmul chain. Weights of more than 2 dims are flattened
to (shape[0], -1). Muon's step has a fixed size whatever the gradient's scale: lr sets it.

AdamW (bias-corrected, betas=adam_betas) trains the "embedding", "unembedding" and "scalar" roles,
without weight decay. As in nanochat, embedding_lr and unembedding_lr are multiplied by
(width / 768) ** -0.5 (width = model.config.width), so wider models take smaller AdamW steps;
scalar_lr is used as given. nanochat gives its residual gains 0.005 and its x0 gains 0.5; one rate
for all scalars must sit between: at 0.5 the residual gains swing negative and a depth-8 model
trained worse (held-out 0.230 vs ~0.212 in one of two seeds; arithmetic text, 600 steps), while
0.05 did as well as nanochat's split.
A stage's `init_lr_frac` scales every rate (e.g. 0.05 for RL after SFT).

Every group carries "kind" ("muon" | "adamw"), "role" and "initial_lr". The state is plain tensors
and numbers, so `torch.save(opt.state_dict())` loads back with `weights_only=True`.
DDP: call step() after gradients are all-reduced (averaged); each rank then takes the identical
step redundantly. No communication happens here (sharding the orthogonalization is a later speed-up).
FSDP: Newton-Schulz needs each matrix whole, so `rlkit check` refuses muon under parallel.strategy=fsdp
(needs_whole_weights below) and names adamw; its distributed form (gather each matrix, orthogonalise,
scatter back) is not written yet.

The optimizer itself (orthogonalize, MuonAdamW) is muon_optimizer.py, imported when muon() builds one, so
listing plugins needs no torch.
"""
from __future__ import annotations

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import param_roles


@rlkit.hookimpl
def rlkit_optimizers():
    return {"muon": muon}


def muon(model, matrix_lr: float = 0.02, embedding_lr: float = 0.2,
         unembedding_lr: float = 0.004, scalar_lr: float = 0.05, momentum: float = 0.95,
         weight_decay: float = 0.0, adam_betas: tuple[float, float] = (0.8, 0.95), adam_eps: float = 1e-10,
         ns_steps: int = 5):
    """A MuonAdamW (muon_optimizer.py): Muon for the model's "matrix" parameters, AdamW for its embedding,
    unembedding and scalars."""
    from rlkit.plugins.optimizers.muon_optimizer import POLAR_EXPRESS, MuonAdamW

    lrs = dict(matrix_lr=matrix_lr, embedding_lr=embedding_lr, unembedding_lr=unembedding_lr,
               scalar_lr=scalar_lr, weight_decay=weight_decay, adam_eps=adam_eps)
    for name, value in lrs.items():
        if value < 0:
            raise RlkitError(f"optimizer muon: {name}={value} must be >= 0")
    if not 0.0 <= momentum < 1.0:
        raise RlkitError(f"optimizer muon: momentum={momentum} must be in [0, 1)")
    if not 1 <= ns_steps <= len(POLAR_EXPRESS):
        raise RlkitError(f"optimizer muon: ns_steps={ns_steps} must be between 1 and {len(POLAR_EXPRESS)}")

    roles = {role: [p for p in ps if p.requires_grad] for role, ps in param_roles(model).items()}
    if any(p.ndim < 2 for p in roles["matrix"]):
        raise RlkitError("optimizer muon: a 'matrix' parameter has fewer than 2 dims; list it as 'scalar'")
    width_scale = (_width(model, roles) / 768) ** -0.5
    groups = []
    for shape in sorted({tuple(p.shape) for p in roles["matrix"]}):
        lr = matrix_lr
        groups.append(dict(params=[p for p in roles["matrix"] if tuple(p.shape) == shape], kind="muon",
                           role="matrix", lr=lr, initial_lr=lr, momentum=momentum,
                           weight_decay=weight_decay, ns_steps=ns_steps))
    adam_lrs = dict(embedding=embedding_lr * width_scale, unembedding=unembedding_lr * width_scale,
                    scalar=scalar_lr)
    for role, lr in adam_lrs.items():
        if roles[role]:
            groups.append(dict(params=roles[role], kind="adamw", role=role, lr=lr, initial_lr=lr,
                               betas=tuple(adam_betas), eps=adam_eps, weight_decay=0.0))
    if not groups:
        raise RlkitError(f"optimizer muon: {type(model).__name__} has no trainable parameters")
    return MuonAdamW(groups)


muon.needs_whole_weights = True  # refused under parallel.strategy=fsdp (rlkit.core.pipeline)


def _width(model, roles: dict) -> int:
    """The model's width: config.width, else the embedding dimension, else 768 (no scaling)."""
    width = getattr(getattr(model, "config", None), "width", None)
    if width is None and roles["embedding"]:
        width = roles["embedding"][0].shape[-1]
    return width or 768


def __getattr__(name):  # moved to muon_optimizer.py so that loading this plugin needs no torch; old imports still work
    if name in ("MuonAdamW", "orthogonalize"):
        import importlib

        return getattr(importlib.import_module("rlkit.plugins.optimizers.muon_optimizer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
