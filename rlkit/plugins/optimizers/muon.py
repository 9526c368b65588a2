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
"""
from __future__ import annotations

import torch

import rlkit
from rlkit.core.dist import fast_bf16
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import param_roles

# Polar Express quintic coefficients for 5 iterations (safety factor 2e-2, cushion 2), paper above.
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


@rlkit.hookimpl
def rlkit_optimizers():
    return {"muon": muon}


def muon(model: torch.nn.Module, matrix_lr: float = 0.02, embedding_lr: float = 0.2,
         unembedding_lr: float = 0.004, scalar_lr: float = 0.05, momentum: float = 0.95,
         weight_decay: float = 0.0, adam_betas: tuple[float, float] = (0.8, 0.95), adam_eps: float = 1e-10,
         ns_steps: int = 5) -> "MuonAdamW":
    """Muon for the model's "matrix" parameters, AdamW for its embedding, unembedding and scalars."""
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


def _width(model: torch.nn.Module, roles: dict) -> int:
    """The model's width: config.width, else the embedding dimension, else 768 (no scaling)."""
    width = getattr(getattr(model, "config", None), "width", None)
    if width is None and roles["embedding"]:
        width = roles["embedding"][0].shape[-1]
    return width or 768


@torch.no_grad()
def orthogonalize(U: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """(N, rows, cols) -> same shape, each matrix's singular values pushed to ~1, in bfloat16 where that is
    fast on U's device, else in fp32."""
    X = U.bfloat16() if fast_bf16(U.device) else U.float()
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide side: A = X X^T is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # spectral norm <= Frobenius norm < 1
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X @ X.mT  # (N, rows, rows)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, one kernel
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X.mT if tall else X


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer holding groups of kind "muon" and "adamw"; build it with muon(model, ...)."""

    def __init__(self, groups: list[dict]):
        super().__init__(groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and group["kind"] == "muon":
                self._muon_step(group, params)
            elif params:
                self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        m, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        updates = []
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            state["momentum_buffer"].lerp_(p.grad, 1 - m)
            updates.append(p.grad.lerp(state["momentum_buffer"], m))  # Nesterov
        U = torch.stack(updates).flatten(2)  # (N, rows, cols): all params of this group share a shape
        O = orthogonalize(U, group["ns_steps"]).to(U.dtype)
        scaled_lr = lr * max(1.0, U.size(-2) / U.size(-1)) ** 0.5
        for p, o in zip(params, O.unbind(0)):
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(o.view_as(p), alpha=-scaled_lr)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t = state["step"]
            if wd:
                p.mul_(1 - lr * wd)
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].lerp_(p.grad.square(), 1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))
