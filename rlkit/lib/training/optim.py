"""What every optimizer plugin and every training stage share: parameter roles and the lr schedule.

Roles. An optimizer treats parameters by what they do, not by their name:
    "matrix"       2-D (or more) weights inside the network: attention and MLP projections
    "embedding"    token embedding tables (a row lookup, so a sparse gradient)
    "unembedding"  the output projection to vocabulary logits (lm_head)
    "scalar"       everything else: gains, biases, norms, per-layer lambdas
`param_roles(model)` asks the model (`model.param_roles()`, which rlkit's GPT defines) and
otherwise guesses from module types and names.

Schedule. Optimizer plugins store each group's base rate as `group["initial_lr"]`; a stage
computes `lr_schedule(cfg, step)` each step and applies it with `set_lr(optimizer, m)`.
A stage's `init_lr_frac` multiplies every rate, explicit ones included (`lr: 1e-5` at init_lr_frac
0.05 trains at 5e-7), so `lr_plan` words the rates really used: each stage logs it as it starts and
`rlkit check` prints it for each training entry.

Torch is imported by the three functions that use it, so a stage or optimizer plugin that imports this module
loads without it (`rlkit plugins`).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from rlkit.core.errors import RlkitError
from rlkit.core.stage import StageSetup

if TYPE_CHECKING:
    import torch
    from torch import nn

ROLES = ("matrix", "embedding", "unembedding", "scalar")
UNEMBEDDING_NAMES = ("lm_head", "unembed")


def param_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split the model's parameters into the four ROLES, every parameter in exactly one list."""
    own = getattr(model, "param_roles", None)
    roles = own() if callable(own) else _guess_roles(model)
    _check_roles(model, roles)
    return roles


def _guess_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Fallback for models without param_roles(): embeddings by type, lm_head by name, rest by ndim."""
    from torch import nn

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = [m for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(h in name.rsplit(".", 1)[-1] for h in UNEMBEDDING_NAMES)]
    unembedding_ids = {id(heads[-1].weight)} if heads else set()
    roles = {role: [] for role in ROLES}
    for p in model.parameters():  # deduplicated: a weight tied to the embedding counts as embedding
        if id(p) in embedding_ids:
            roles["embedding"].append(p)
        elif id(p) in unembedding_ids:
            roles["unembedding"].append(p)
        elif p.ndim >= 2:
            roles["matrix"].append(p)
        else:
            roles["scalar"].append(p)
    return roles


def _check_roles(model: nn.Module, roles: dict) -> None:
    """A wrong roles table would silently leave weights untrained: fail loudly instead."""
    name = type(model).__name__
    if set(roles) != set(ROLES):
        raise RlkitError(f"{name}.param_roles() returned keys {sorted(roles)}; expected exactly {list(ROLES)}")
    seen = [id(p) for ps in roles.values() for p in ps]
    if len(seen) != len(set(seen)):
        raise RlkitError(f"{name}.param_roles() lists a parameter under more than one role (or twice)")
    if set(seen) != {id(p) for p in model.parameters()}:
        raise RlkitError(f"{name}.param_roles() must list every parameter of the model exactly once")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0,
                  warmdown_frac: float = 0.0, final_frac: float = 0.0) -> float:
    """nanochat's trapezoid schedule: linear warmup, a plateau at 1, linear warmdown to final_frac.

    With W = warmup_steps and D = round(warmdown_frac * total_steps), for step s (0-based):
        s < W                    ->  (s + 1) / W
        s <= total_steps - D     ->  1
        otherwise                ->  p + (1 - p) * final_frac,  p = (total_steps - s) / D
    so the rate reaches final_frac at s = total_steps (and stays there after).
    """
    if total_steps < 1 or warmup_steps < 0 or not 0.0 <= warmdown_frac <= 1.0 or final_frac < 0.0:
        raise RlkitError(f"lr schedule: need total_steps >= 1, warmup_steps >= 0, 0 <= warmdown_frac <= 1, "
                         f"final_frac >= 0; got {total_steps=}, {warmup_steps=}, {warmdown_frac=}, {final_frac=}")
    warmdown_steps = round(warmdown_frac * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if warmdown_steps == 0 or step <= total_steps - warmdown_steps:
        return 1.0
    progress = max(total_steps - step, 0) / warmdown_steps  # 1 -> 0 over the warmdown
    return progress + (1.0 - progress) * final_frac


def lr_schedule(cfg, step: int) -> float:
    """The lr multiplier of a training stage's 0-based `step`, from its config: init_lr_frac (default 1)
    times the trapezoid lr_multiplier over cfg.steps, with warmup_steps and final_lr_frac (default 0).
    A config without warmdown_frac (the rl stage's) decays linearly to 0 over all its steps, spelled
    1 - step / steps: the trapezoid's (steps - step) / steps differs from it in the last bit, and the
    stage's figures stay what they were."""
    frac = getattr(cfg, "init_lr_frac", 1.0)
    if not hasattr(cfg, "warmdown_frac"):
        return frac * (1.0 - step / cfg.steps)
    return frac * lr_multiplier(step, cfg.steps, getattr(cfg, "warmup_steps", 0), cfg.warmdown_frac,
                                getattr(cfg, "final_lr_frac", 0.0))


def lr_plan(cfg, optimizer: torch.optim.Optimizer | None = None) -> str:
    """The rates a training stage's config gives, in one line: each role's rate at step 1 (with the built
    optimizer), else the rates optimizer.args gives explicitly, scaled; then what the schedule does."""
    frac, first, name = getattr(cfg, "init_lr_frac", 1.0), lr_schedule(cfg, 0), cfg.optimizer.name
    if optimizer is not None:
        rates: dict = {}
        for i, group in enumerate(optimizer.param_groups):
            rates.setdefault(group.get("role", f"group {i}"), group["initial_lr"] * first)
        now = ", ".join(f"{role} {rate:.3g}" for role, rate in rates.items())
    else:
        given = {k: v for k, v in cfg.optimizer.args.items() if k == "lr" or k.endswith("_lr")}
        now = ", ".join(f"{k} {v:g} -> {v * first:.3g}" for k, v in given.items())
    warmup = getattr(cfg, "warmup_steps", 0)
    how = f"{name}'s rates x init_lr_frac {frac:g}" + (f", warming up over {warmup} steps" if warmup else "")
    now = f"{now} ({how})" if now else f"{name}'s default rates x init_lr_frac {frac:g}"
    return f"lr at step 1: {now}, {_lr_after(cfg)}"


def lr_plans(entries) -> list[str]:
    """`stages.<entry>: <lr_plan>` for each training entry (one with steps and an optimizer), for `rlkit check`."""
    return [f"stages.{e.name}: {lr_plan(e.cfg)}" for e in entries
            if hasattr(e.cfg, "steps") and getattr(e.cfg, "optimizer", None) is not None]


def _lr_after(cfg) -> str:
    if not hasattr(cfg, "warmdown_frac"):
        return f"then linearly down to 0 at step {cfg.steps}"
    down, final = round(cfg.warmdown_frac * cfg.steps), getattr(cfg, "final_lr_frac", 0.0)
    end = f"linearly down to {f'{final:g}x that' if final else '0'} at step {cfg.steps}"
    if down == 0:
        return f"held for all {cfg.steps} steps"
    return end if down == cfg.steps else f"held to step {cfg.steps - down}, then {end}"


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Set every group's lr to its initial_lr times multiplier."""
    for i, group in enumerate(optimizer.param_groups):
        if "initial_lr" not in group:
            raise RlkitError(f"{type(optimizer).__name__} param group {i} has no 'initial_lr': "
                             "an optimizer plugin must set it on every group")
        group["lr"] = group["initial_lr"] * multiplier


def stand_in_model() -> nn.Module:
    """A few parameters of every role (by the names param_roles guesses from): what stage checks build an
    optimizer on, before any real model."""
    from torch import nn

    return nn.ModuleDict({"wte": nn.Embedding(64, 16), "proj": nn.Linear(16, 16, bias=False),
                          "lm_head": nn.Linear(16, 64)})


@contextlib.contextmanager
def _without_dynamo_import():
    """Let a trial construction skip torch._dynamo's import (~1.2 s, a third of `rlkit check`).

    torch.optim.Optimizer.add_param_group is wrapped by torch._disable_dynamo, which imports torch._dynamo
    on its first call and caches the disabled function on the original as `__dynamo_disable`. Caching the
    original itself for the trial, then removing that cache, leaves the first real call to do the usual."""
    import torch

    original = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    seeded = original is not None and getattr(original, "__dynamo_disable", None) is None
    if seeded:
        original.__dynamo_disable = original
    try:
        yield
    finally:
        if seeded and getattr(original, "__dynamo_disable", None) is original:
            del original.__dynamo_disable


def check_optimizer(ref, setup: StageSetup, key: str = "optimizer") -> None:
    """Build the optimizer once on a tiny stand-in model, so values it refuses (a negative learning rate,
    say) fail up front; other failures (it needs a GPU or a process group) wait for the real model."""
    import torch

    factory = setup.plugins.get("optimizer", ref.name, f"{setup.where}.{key}.name")
    with torch.random.fork_rng(devices=[]), _without_dynamo_import():  # leaves the run's random state as it was
        try:
            optimizer = factory(stand_in_model(), **ref.args)
        except (RlkitError, ValueError, TypeError) as e:
            raise RlkitError(f"{setup.where}.{key}.args: {e}") from e
        except Exception:  # noqa: BLE001 -- not about the values: the stage reports it with the real model
            return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RlkitError(f"{setup.where}.{key}: plugin '{ref.name}' returned {type(optimizer).__name__}; an "
                         "optimizer factory must return a torch.optim.Optimizer")
