"""The guard every algorithm plugin runs behind; the contract and its defaults are rlkit/lib/training/algorithm.py.

Every plugin, subclass or not, is wrapped in `Guarded` (an `Algorithm`), which reads the plugin's
optional attributes once, fills in the defaults for what it leaves out, and sends each method call
through one check that
  - turns an exception raised by the plugin into one line naming the plugin, the method and where in
    the run it was called, and
  - checks what the method returned against the contract in docs/plugins.md (a tensor, its shape,
    finite values, a loss that carries a gradient), naming what was expected.
The caller stops before the optimizer step, so the run's earlier checkpoints stay as they were.
`check_contract` makes the same calls once on a tiny batch, so most faults show in `rlkit check`.
"""
from __future__ import annotations

import functools

import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.training.algorithm import Algorithm

OPTIONAL = ("needs", "zero_advantage_inert", "filter_groups", "min_samples")
METHODS = ("advantages", "loss", "clipped", "shape", "state_dict", "load_state_dict")


def guard(algorithm, name: str, where: str) -> "Guarded":
    """`algorithm` (what the factory returned) behind the guard; `where` prefixes every error line."""
    missing = [m for m in ("advantages", "loss") if not callable(getattr(algorithm, m, None))]
    if missing:
        raise RlkitError(f"{where}: plugin '{name}' returned {type(algorithm).__name__} without "
                         f"{' and '.join(m + '()' for m in missing)}; an algorithm factory must return an object "
                         "with advantages(rewards) and loss(logp, mask, adv, extra) (docs/plugins.md)")
    return Guarded(algorithm, name, where)


class Guarded(Algorithm):
    """A plugin's algorithm as an `Algorithm`: its optional attributes read once (a duck-typed plugin's
    missing ones take the base class's defaults), each method called through `_call` and its check."""

    def __init__(self, inner, name: str, where: str):
        self.inner, self.name, self.where, self.place = inner, name, where, ""
        for attr in OPTIONAL:  # the one place a plugin's optional attributes are looked up
            setattr(self, attr, getattr(inner, attr, getattr(Algorithm, attr)))
        self.needs = frozenset(self.needs)
        # the plugin's own method, else the base class's default bound to this object
        self.methods = {m: getattr(inner, m, None) or functools.partial(getattr(Algorithm, m), self)
                        for m in METHODS}

    def advantages(self, rewards):
        return self._call("advantages", rewards)

    def loss(self, logp, mask, adv, extra):
        return self._call("loss", logp, mask, adv, extra)

    def clipped(self, logp, mask, adv, extra):
        return self._call("clipped", logp, mask, adv, extra)

    def shape(self, lengths, max_new_tokens):
        return self._call("shape", lengths, max_new_tokens)

    def state_dict(self):
        return self._call("state_dict")

    def load_state_dict(self, state):
        return self._call("load_state_dict", state)

    def at(self, text: str) -> None:
        self.place = text

    def label(self, method: str) -> str:
        """How error lines name a call: the stage, the plugin, the method and where in the run."""
        return f"{self.where}: algorithm '{self.name}' {method}() {self.place}".rstrip()

    def _call(self, method: str, *args):
        where = self.label(method)
        try:
            out = self.methods[method](*args)
        except RlkitError as e:
            raise RlkitError(f"{where}: {e}") from e
        except Exception as e:
            raise RlkitError(f"{where} raised {type(e).__name__}: {e}") from e
        CHECKS[method](out, args, where)
        return out


def _tensor(out, where: str, expected: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise RlkitError(f"{where} returned {type(out).__name__}; expected {expected}")
    return out


def _shape(t: torch.Tensor, shape, where: str, expected: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise RlkitError(f"{where} returned a tensor of shape {tuple(t.shape)}; expected {expected} "
                         f"{tuple(shape)}")


def _finite(t: torch.Tensor, where: str, inputs: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t.detach()).all():
        bad = t.detach()[~torch.isfinite(t.detach())].flatten()[0].item()
        raise RlkitError(f"{where} returned {bad} from finite {inputs}; expected finite values")


def check_advantages(out, args, where: str) -> None:
    (rewards,) = args
    adv = _tensor(out, where, f"a float tensor of the rewards' shape {tuple(rewards.shape)} (P prompts, G samples)")
    _shape(adv, rewards.shape, where, "the rewards' shape (P prompts, G samples)")
    if not adv.is_floating_point():
        raise RlkitError(f"{where} returned a {adv.dtype} tensor; expected a float tensor")
    _finite(adv, where, "rewards")


def check_loss(out, args, where: str) -> None:
    logp, mask, adv, extra = args
    loss = _tensor(out, where, "a scalar tensor computed from logp")
    if loss.numel() != 1:
        raise RlkitError(f"{where} returned a tensor of shape {tuple(loss.shape)}; expected a scalar (sum or mean "
                         "over the micro-batch, divided by extra['num_tokens'] or similar)")
    if torch.is_grad_enabled() and logp.requires_grad and not loss.requires_grad:
        raise RlkitError(f"{where} returned a loss with no gradient; expected one computed from logp")
    if torch.isfinite(loss.detach()).all():
        return  # the usual case: one scalar checked, the inputs are looked at only when the loss is bad
    inputs = [logp[mask > 0], adv] + [extra[k][mask > 0] for k in ("old_logp", "ref_logp", "sample_logp") if k in extra]
    if all(torch.isfinite(t.detach()).all() for t in inputs):  # else the model is at fault: training.check_step
        _finite(loss, where, "log-probs and advantages")


def check_clipped(out, args, where: str) -> None:
    logp = args[0]
    _shape(_tensor(out, where, f"a bool tensor of logp's shape {tuple(logp.shape)}"), logp.shape, where,
           "logp's shape")


def check_shape(out, args, where: str) -> None:
    lengths = args[0]
    if not isinstance(out, dict):
        raise RlkitError(f"{where} returned {type(out).__name__}; expected a dict {{name: (P, G) tensor}}")
    for key, term in out.items():
        _shape(_tensor(term, f"{where}['{key}']", f"a tensor of shape {tuple(lengths.shape)}"), lengths.shape,
               f"{where}['{key}']", "the lengths' shape")
        _finite(term, f"{where}['{key}']", "lengths")


CHECKS = {"advantages": check_advantages, "loss": check_loss, "clipped": check_clipped, "shape": check_shape,
          "state_dict": lambda out, args, where: None, "load_state_dict": lambda out, args, where: None}


def check_contract(algorithm: Guarded, samples: int, max_new_tokens: int) -> None:
    """Call each method once on a tiny batch (2 prompts x `samples`, 3 tokens each), as the rl loop would:
    a fault that does not depend on the data shows up in `rlkit check`, before any compute."""
    with torch.random.fork_rng(devices=[]):  # leaves the run's random state as it was
        torch.manual_seed(0)
        algorithm.at("on a tiny batch in the check")
        rewards = torch.rand(2, samples)
        adv = algorithm.advantages(rewards.clone()).reshape(-1)
        lengths = torch.full((2, samples), 3.0)
        algorithm.shape(lengths, max_new_tokens)
        B = adv.numel()
        logp = (-torch.rand(B, 3) - 0.1).requires_grad_()
        mask = torch.ones(B, 3)
        extra = {"num_tokens": mask.sum(), "num_sequences": float(B), "max_new_tokens": max_new_tokens,
                 "lengths": mask.sum(dim=1), "old_logp": logp.detach() - 0.01}
        if "ref_logp" in algorithm.needs:
            extra["ref_logp"] = logp.detach() - 0.05
        if "sample_logp" in algorithm.needs:
            extra["sample_logp"] = logp.detach() - 0.02
        algorithm.loss(logp, mask, adv, extra)
        if algorithm.zero_advantage_inert:
            check_inert(algorithm, logp, mask, adv, extra)
        algorithm.clipped(logp.detach(), mask, adv, extra)
        algorithm.at("")


def check_inert(algorithm: Guarded, logp, mask, adv, extra) -> None:
    """An algorithm that sets `zero_advantage_inert` lets the rl stage skip the backward of rows whose
    advantage is 0; its loss must then give those rows no gradient. Checked here on every other row."""
    zeroed = adv.detach().clone()
    zeroed[::2] = 0.0
    leaf = logp.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(algorithm.loss(leaf, mask, zeroed, extra), leaf, allow_unused=True)
    if grad is not None and grad[::2].abs().max() > 0:
        raise RlkitError(f"{algorithm.label('loss')}: the algorithm sets zero_advantage_inert = True, but its loss "
                         "gives a row whose advantage is 0 a gradient (a KL or entropy term?); set it False, or "
                         "True only where that term is off (docs/plugins.md)")
