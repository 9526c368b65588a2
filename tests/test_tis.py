"""Truncated importance sampling (an algorithm's `tis_cap`): each token's term times min(p_train / p_sample, cap),
detached, against a hand computation of the loss and of its gradient; off by default, where the loss is the
one without it, bit for bit."""
import math

import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.core.plugins import load_plugins
from rlkit.lib.training.guard import check_contract, guard

ALGORITHMS = load_plugins().tables["algorithm"]
CAP = 2.0


def _batch():
    """logp (2, 3) leaf; sampler log-probs that put the ratio p_train / p_sample below 1, inside and above CAP."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]], requires_grad=True)
    sample = logp.detach() - torch.tensor([[-0.4, 0.3, 1.2], [0.0, 2.0, -1.0]])  # log ratio = these
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.5, -0.5])
    extra = {"num_tokens": mask.sum(), "num_sequences": 2.0, "max_new_tokens": 3, "lengths": mask.sum(dim=1),
             "old_logp": logp.detach().clone(), "sample_logp": sample}
    return logp, mask, adv, extra


def _weights(extra):
    """min(exp(old_logp - sample_logp), CAP) worked out one number at a time."""
    d = (extra["old_logp"] - extra["sample_logp"]).tolist()
    return torch.tensor([[min(math.exp(x), CAP) for x in row] for row in d])


@pytest.mark.parametrize("name", ["grpo", "reinforce", "rloo", "dr_grpo", "dapo"])
def test_tis_weights_each_tokens_gradient_by_the_capped_ratio(name):
    logp, mask, adv, extra = _batch()
    w = _weights(extra)
    assert w[0, 2] == CAP and w[1, 1] == CAP and w[0, 0] < 1  # capped where the ratio is above CAP
    # each token's d loss / d logp without TIS, by hand (at the first update rho = 1: the clip is inactive)
    per_token = {"grpo": adv[:, None] / extra["num_tokens"], "dapo": adv[:, None] / extra["num_tokens"],
                 "reinforce": adv[:, None] / 2.0, "rloo": adv[:, None] / 2.0,
                 "dr_grpo": adv[:, None] / (2.0 * 3)}[name].expand(2, 3)
    algorithm = ALGORITHMS[name](tis_cap=CAP)
    assert "sample_logp" in algorithm.needs
    loss = algorithm.loss(logp, mask, adv, extra)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, -per_token * w * mask, rtol=1e-6, atol=1e-7)
    if name in ("grpo", "reinforce", "rloo"):  # the loss itself: sum of logp * A * w, by hand
        expected = -(per_token * w * mask * logp.detach()).sum()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-7)


def test_deepseek_grpo_weights_the_surrogate_not_the_kl_term():
    logp, mask, adv, extra = _batch()
    extra["ref_logp"] = logp.detach() - 0.1
    plain, capped = ALGORITHMS["deepseek_grpo"](), ALGORITHMS["deepseek_grpo"](tis_cap=CAP)
    (g0,) = torch.autograd.grad(plain.loss(logp, mask, adv, extra), logp)
    (g1,) = torch.autograd.grad(capped.loss(logp, mask, adv, extra), logp)
    lengths = mask.sum(dim=1, keepdim=True)
    surrogate = -adv[:, None] / lengths / 2.0 * mask  # d/dlogp of -(1/S) sum_i (1/|o_i|) sum_t rho_t A_i at rho = 1
    torch.testing.assert_close(g1 - g0, surrogate * (_weights(extra) - 1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["grpo", "reinforce", "rloo", "dr_grpo", "dapo", "deepseek_grpo"])
def test_tis_is_off_by_default_and_the_loss_is_the_one_without_it(name):
    logp, mask, adv, extra = _batch()
    extra["ref_logp"] = logp.detach() - 0.1
    default = ALGORITHMS[name]()
    assert default.tis_cap is None and "sample_logp" not in default.needs
    without = {k: v for k, v in extra.items() if k != "sample_logp"}  # it never reads the sampler's log-probs
    assert torch.equal(default.loss(logp, mask, adv, without), default.loss(logp, mask, adv, extra))


def test_the_contract_check_runs_a_tis_algorithm_and_a_bad_cap_is_refused():
    check_contract(guard(ALGORITHMS["grpo"](tis_cap=CAP), "grpo", "stages.rl.algorithm"), 4, 8)
    with pytest.raises(RlkitError, match="tis_cap must be a positive number"):
        ALGORITHMS["grpo"](tis_cap=0.0)
