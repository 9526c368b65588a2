"""The GRPO family (deepseek_grpo, dr_grpo, dapo, gspo, cispo, rloo) against numbers worked by hand.

One batch for every loss: 2 sequences x 3 positions, with ratios rho = exp(logp - old_logp) chosen so
the clip is active on both sides: rho = 1.5 on a token with A = +2 (above 1 + eps) and rho = 0.5 on a
token with A = -1 (below 1 - eps); the third sampled token has rho = 1. Then each algorithm's gradient
through the rl stage's micro-batched update must not depend on the device batch size (2 vs 8).
"""
import math
from pathlib import Path

import pytest
import torch

from rlkit.core.plugins import load_plugins
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.stages import rl_update
from rlkit.plugins.stages.rl_plan import Minibatch, Plan, Rows, micro_batches
from rlkit.plugins.stages.rl_stats import Tally

ALGORITHMS = load_plugins().tables["algorithm"]
FAMILY = ["grpo", "reinforce", "deepseek_grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo"]

LOGP = torch.tensor([[-1.0, -2.0, -3.0],
                     [-0.5, -1.5, -4.0]])  # (B, T)
MASK = torch.tensor([[1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0]])  # (B, T): 3 sampled tokens here
ADV = torch.tensor([2.0, -1.0])  # (B,)
RHO = torch.tensor([[1.5, 1.0, 1.0],
                    [0.5, 1.0, 1.0]])
OLD = LOGP - RHO.log()
REF = LOGP + torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # k3 = 2 - ln 2 - 1 on one token
EXTRA = {"old_logp": OLD, "ref_logp": REF, "num_tokens": torch.tensor(10.0), "num_sequences": 4.0,
         "max_new_tokens": 5, "lengths": MASK.sum(dim=1)}
# three groups with different means (0.5, 2, 2) and spreads, so centring on the batch's mean (1.5) or scaling
# by the batch's std gives other numbers than each group's own
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0],   # mean 0.5, unbiased std sqrt(1/3) = 0.5773503
                        [3.0, 1.0, 1.0, 3.0],   # mean 2, unbiased std sqrt(4/3) = 1.1547005
                        [2.0, 2.0, 2.0, 2.0]])  # mean 2, std 0: every advantage 0


def loss_and_grad(name, **args):
    logp = LOGP.clone().requires_grad_(True)
    loss = ALGORITHMS[name](**args).loss(logp, MASK, ADV, EXTRA)
    loss.backward()
    return loss.item(), logp.grad


@pytest.mark.parametrize("name", ["deepseek_grpo", "dapo", "gspo", "cispo"])
def test_std_normalised_advantages(name):
    # group 0: (r - 0.5) / (0.5773503 + 1e-4) = +-0.8658754; group 1: (r - 2) / (1.1547005 + 1e-4) = +-0.8659504;
    # group 2: 0 / (0 + 1e-4) = 0
    adv = ALGORITHMS[name]().advantages(REWARDS)
    signs = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    expected = torch.cat([signs * 0.8658754, signs * 0.8659504, torch.zeros(1, 4)])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_dr_grpo_and_rloo_advantages():
    # each reward minus its own group's mean (0.5, 2, 2), not the batch's (1.5)
    torch.testing.assert_close(ALGORITHMS["dr_grpo"]().advantages(REWARDS),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    # leave-one-out: r = 1 -> 1 - (0 + 0 + 1) / 3 = 2/3; r = 0 -> 0 - (1 + 0 + 1) / 3 = -2/3;
    # r = 3 -> 3 - (1 + 1 + 3) / 3 = 4/3; r = 1 -> 1 - (3 + 1 + 3) / 3 = -4/3; r = 2 -> 2 - 6 / 3 = 0
    torch.testing.assert_close(ALGORITHMS["rloo"]().advantages(REWARDS),
                               torch.tensor([[2, -2, -2, 2], [4, -4, -4, 4], [0, 0, 0, 0]]) / 3.0)


def test_deepseek_grpo_loss():
    # objective: min(1.5*2, 1.2*2) = 2.4; 1*2 = 2; min(0.5*-1, 0.8*-1) = -0.8
    # k3 on the first token: 2 - ln 2 - 1 = 0.306853, times kl_coef 0.04 = 0.0122741
    # per sequence: (2.4 - 0.0122741 + 2) / 2 = 2.1938629; -0.8 / 1; sum 1.3938629; / 4 sequences
    loss, grad = loss_and_grad("deepseek_grpo")
    assert loss == pytest.approx(-1.3938629 / 4, abs=1e-6)
    # the clipped tokens keep only the KL's gradient: d/dlogp of +0.04 * k3 / (2 * 4) = 0.04 * (1 - e^d) / 8
    assert grad[0, 0].item() == pytest.approx(0.04 * (1 - 2.0) / 8, abs=1e-6)
    assert grad[1, 0].item() == 0.0  # clipped below (A < 0, rho < 0.8), no KL there
    assert grad[0, 1].item() == pytest.approx(-2.0 / 8, abs=1e-6)  # unclipped: -rho * A / (|o| * S)


def test_dr_grpo_loss():
    # token sum 2.4 + 2 - 0.8 = 3.6 over num_sequences 4 x max_new_tokens 5
    loss, grad = loss_and_grad("dr_grpo")
    assert loss == pytest.approx(-3.6 / 20, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -2.0 / 20, 0.0], [0.0, 0.0, 0.0]]))  # clip stops both


def test_dapo_loss_clips_higher():
    # clip-higher: min(1.5*2, 1.28*2) = 2.56; 2; -0.8; sum 3.76 over 10 tokens
    loss, grad = loss_and_grad("dapo")
    assert loss == pytest.approx(-0.376, abs=1e-6)
    assert grad[0, 0].item() == 0.0 and grad[1, 0].item() == 0.0


def test_dapo_overlong_shaping():
    # max_len 10, cache 4: L <= 6 -> 0; L = 8 -> (6 - 8) / 4 = -0.5; L = 10 -> -1; L = 11 -> -1
    shaped = ALGORITHMS["dapo"](max_len=10, cache_len=4).shape(torch.tensor([[3.0, 6.0, 8.0, 10.0, 11.0]]), 72)
    torch.testing.assert_close(shaped["overlong"], torch.tensor([[0.0, 0.0, -0.5, -1.0, -1.0]]))
    # defaults: max_len = max_new_tokens (20), cache_len = 20 // 5 = 4: L = 18 -> (16 - 18) / 4
    assert ALGORITHMS["dapo"]().shape(torch.tensor([[18.0]]), 20)["overlong"].item() == pytest.approx(-0.5)
    assert ALGORITHMS["dapo"]().filter_groups is True


def test_gspo_loss_is_sequence_level():
    # s_0 = exp((ln 1.5 + 0) / 2) = 1.2247449 -> min(2.449, 1.0004 * 2) = 2.0008
    # s_1 = 0.5 -> min(-0.5, 0.9997 * -1) = -0.9997; sum 1.0011 over 4 sequences
    loss, grad = loss_and_grad("gspo")
    assert loss == pytest.approx(-1.0011 / 4, abs=1e-6)
    assert torch.equal(grad, torch.zeros_like(grad))  # both sequences clipped: no gradient at all


def test_gspo_unclipped_sequence_gets_the_gradient():
    extra = dict(EXTRA, old_logp=LOGP.clone())  # s = 1: inside the clip
    logp = LOGP.clone().requires_grad_(True)
    ALGORITHMS["gspo"]().loss(logp, MASK, ADV, extra).backward()
    # d/dlogp_t of -(1/S) s_i A_i = -(1/4) * A_i * s_i / |o_i|: row 0: -2/8 on each of 2 tokens; row 1: 1/4
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [0.25, 0.0, 0.0]]))


def test_cispo_loss_keeps_the_clipped_tokens_gradient():
    # weights sg(clip(rho, 0, 1.28)): 1.28, 1.0, 0.5; sum w * A * logp = 1.28*2*-1 + 1*2*-2 + 0.5*-1*-0.5 = -6.31
    loss, grad = loss_and_grad("cispo")
    assert loss == pytest.approx(0.631, abs=1e-6)
    # gradient -w * A / N on every sampled token (the weight is detached), clipped ones included
    torch.testing.assert_close(grad, torch.tensor([[-0.256, -0.2, 0.0], [0.05, 0.0, 0.0]]))


def test_rloo_loss_is_sequence_reinforce():
    # sequence log-probs -3 and -0.5: (-3 * 2 + -0.5 * -1) = -5.5, over 4 sequences
    loss, _ = loss_and_grad("rloo")
    assert loss == pytest.approx(1.375, abs=1e-6)


@pytest.mark.parametrize("name, args", [("deepseek_grpo", {"clip_eps": 1.5}), ("dapo", {"clip_eps_low": 0.0}),
                                        ("gspo", {"clip_eps_high": -1.0}), ("cispo", {"clip_eps_low": 2.0})])
def test_bad_args_are_refused(name, args):
    from rlkit.core.errors import RlkitError

    with pytest.raises(RlkitError, match=name):
        ALGORITHMS[name](**args)


# --------------------------------------------------------------------------- gradient vs device batch size

def _ctx(write_yaml, tmp_path, stage_ctx):
    path = write_yaml("""\
        name: grad
        stages:
          rl:
            task: {name: arithmetic}
            rewards: [{name: gsm8k}]
            rollout: {max_new_tokens: 30}
        """)
    return stage_ctx(path, "rl", Path(tmp_path) / "runs")


def _batch(n=8, length=40, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)  # (N, L)
    mask = torch.zeros(n, length)
    for r in range(n):
        prompt = int(torch.randint(5, 15, (), generator=g))
        completion = int(torch.randint(1, length - prompt, (), generator=g))
        mask[r, prompt:prompt + completion] = 1
        ids[r, prompt + completion:] = 0
    return ids, mask[:, 1:]  # mask (N, L-1): 1 where token t+1 was sampled


def _model(seed, depth=1):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(depth=depth, vocab_size=300, seq_len=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", FAMILY)
def test_gradient_does_not_depend_on_device_batch_size(name, write_yaml, tmp_path, stage_ctx):
    ctx = _ctx(write_yaml, tmp_path, stage_ctx)
    model, sampler = _model(0), _model(1)  # old_logp from another model: ratios != 1, clips active
    ids, mask = _batch()
    N = ids.shape[0]
    adv = torch.randn(N, generator=torch.Generator().manual_seed(1))
    extra = {"num_tokens": mask.sum(), "num_sequences": float(N), "max_new_tokens": 30}
    algorithm = ALGORITHMS[name]()
    # old_logp (and ref_logp) from the sampler, through the stage's own pass before the update
    reference = sampler if "ref_logp" in algorithm.needs else None
    rows = Rows(ids, mask, adv)
    plan = Plan([Minibatch(slice(0, N), micro_batches(ctx, rows, 0, N, N), [])], 2, True)  # 2 updates: old_logp
    rl_update.before_update(rl_update.Learner(ctx, sampler, sampler, None, algorithm, reference), rows, plan,
                            Tally(ctx.device))
    learner = rl_update.Learner(ctx, model, model, None, algorithm, reference)
    grads, losses = {}, {}
    for size in (8, 2, 3):
        model.zero_grad(set_to_none=True)
        micros = micro_batches(ctx, rows, 0, N, size)
        losses[size] = sum(rl_update.backward(learner, rows, micro, extra, Tally(ctx.device)) for micro in micros)
        grads[size] = {k: p.grad.clone() for k, p in model.named_parameters()}
    for k, g in grads[8].items():
        assert g.abs().max() > 0, f"{k} got no gradient: the comparison would be vacuous"
        for size in (2, 3):
            torch.testing.assert_close(grads[size][k], g, rtol=1e-4, atol=1e-5, msg=f"{k} (device batch {size})")
    assert losses[2] == pytest.approx(losses[8], abs=1e-5)
    assert losses[3] == pytest.approx(losses[8], abs=1e-5)


@pytest.mark.parametrize("name, args, inert", [(n, {}, n != "deepseek_grpo") for n in FAMILY] +
                         [("deepseek_grpo", {"kl_coef": 0.0}, True)])
def test_zero_advantage_inert_is_declared_where_the_loss_gives_such_rows_no_gradient(name, args, inert):
    """The rl stage skips the backward of rows with advantage 0 only for algorithms that declare it; for
    those the loss's gradient on such a row is 0 (the clipped ratios of the shared batch included), and
    deepseek_grpo's KL term (kl_coef > 0) gives that row a gradient, so it does not declare it."""
    algorithm = ALGORITHMS[name](**args)
    assert getattr(algorithm, "zero_advantage_inert", False) is inert
    logp = LOGP.clone().requires_grad_(True)
    algorithm.loss(logp, MASK, torch.tensor([0.0, 1.0]), EXTRA).backward()
    assert bool(logp.grad[0].abs().max() == 0) is inert  # row 0, advantage 0: its sampled tokens have rho 1.5, 1
    assert logp.grad[1, 0] != 0  # row 1, advantage +1 at rho 0.5: unclipped, it trains
