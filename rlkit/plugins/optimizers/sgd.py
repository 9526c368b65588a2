"""sgd: SGD with (Nesterov) momentum over the model's parameter roles.

Its update is proportional to the gradient, so it keeps the gradient's
signal-to-noise structure: directions the batch barely agrees on move
little. Normalising optimizers (Muon's orthogonalised update, Adam's
per-coordinate scaling) give every direction a fixed step size, which on
low-signal policy gradients (small RL batches, binary rewards) is mostly
noise. Per-role learning rates as in adamw.
"""
import rlkit
from rlkit.lib.training.optim import param_roles


@rlkit.hookimpl
def rlkit_optimizers():
    return {"sgd": sgd}


def sgd(model, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
        weight_decay: float = 0.0, embedding_lr: float | None = None, unembedding_lr: float | None = None,
        scalar_lr: float | None = None):
    """torch.optim.SGD with one group per role; each group keeps `initial_lr` for the stage's schedule."""
    import torch  # here, not at the top: listing plugins needs no torch
    role_lr = {"matrix": lr, "embedding": embedding_lr, "unembedding": unembedding_lr, "scalar": scalar_lr}
    groups = []
    for role, params in param_roles(model).items():
        if params:
            group_lr = lr if role_lr[role] is None else role_lr[role]
            groups.append({"params": params, "lr": group_lr, "initial_lr": group_lr, "role": role,
                           "weight_decay": weight_decay if role == "matrix" else 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
