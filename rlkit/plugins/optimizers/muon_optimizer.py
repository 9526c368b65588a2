"""The muon plugin's optimizer: MuonAdamW and the orthogonalisation it applies to each "matrix" update.

The algorithm, its rates and what it leaves out are in muon.py's docstring; muon(model, ...) builds this.
"""
from __future__ import annotations

import torch

from rlkit.core.dist import fast_bf16

# Polar Express quintic coefficients for 5 iterations (safety factor 2e-2, cushion 2): Amsel et al. 2025,
# arXiv:2505.16932, as muon.py's docstring says.
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


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
