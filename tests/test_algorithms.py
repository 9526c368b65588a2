"""RL algorithm plugins (grpo, reinforce), loaded by name through the real plugin manager.

Advantages and losses are checked against numbers worked by hand (the arithmetic is in the
comments); the rl stage's micro-batched backward is checked to give the same gradient whatever
the device batch size, which is what the algorithms' step-wide normalisers are for.
"""
from pathlib import Path

import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.training.algorithm import Algorithm
from rlkit.lib.training.guard import guard
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.core.plugins import load_plugins
from rlkit.plugins.stages import rl_update
from rlkit.plugins.stages.rl_plan import Rows, micro_batches
from rlkit.plugins.stages.rl_stats import Tally

ALGORITHMS = load_plugins().tables["algorithm"]


def train_step(ctx, model, algorithm, ids, mask, adv, extra, size) -> float:
    """One update's backward over micro-batches of `size` rows (the rl stage's own code), no optimizer step."""
    rows, learner = Rows(ids, mask, adv), rl_update.Learner(ctx, model, model, None, algorithm)
    micros = micro_batches(ctx, rows, 0, ids.shape[0], size)
    return sum(rl_update.backward(learner, rows, micro, extra, Tally(ctx.device)) for micro in micros)



# One small batch used by both losses: 2 sequences x 3 positions.
LOGP = torch.tensor([[-1.0, -2.0, -3.0],
                     [-0.5, -1.5, -4.0]])  # (B, T)
MASK = torch.tensor([[1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0]])  # (B, T): 3 sampled tokens in this micro-batch
ADV = torch.tensor([2.0, -1.0])  # (B,)


# --------------------------------------------------------------------------- grpo

def test_grpo_advantages_subtract_each_groups_mean():
    rewards = torch.tensor([[1.0, 0.0, 0.5],    # group mean 0.5
                            [2.0, 2.0, 5.0]])   # group mean 3.0
    adv = ALGORITHMS["grpo"]().advantages(rewards)
    expected = torch.tensor([[0.5, -0.5, 0.0],
                             [-1.0, -1.0, 2.0]])
    torch.testing.assert_close(adv, expected)


def test_grpo_advantages_are_zero_when_a_group_agrees():
    adv = ALGORITHMS["grpo"]().advantages(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 2))


def test_grpo_loss_is_token_level_over_the_whole_step():
    # sum_{b,t} logp * mask * adv = (-1 - 2) * 2 + (-0.5) * (-1) = -6 + 0.5 = -5.5
    # the step holds 10 sampled tokens in all (other micro-batches too), so loss = -(-5.5) / 10 = 0.55
    loss = ALGORITHMS["grpo"]().loss(LOGP, MASK, ADV, {"num_tokens": torch.tensor(10.0), "num_sequences": 4.0})
    assert loss.item() == pytest.approx(0.55, abs=1e-6)


def test_grpo_loss_ignores_masked_positions():
    logp = LOGP.clone()
    logp[MASK == 0] = -1000.0  # garbage where nothing was sampled
    loss = ALGORITHMS["grpo"]().loss(logp, MASK, ADV, {"num_tokens": torch.tensor(10.0), "num_sequences": 4.0})
    assert loss.item() == pytest.approx(0.55, abs=1e-6)


# --------------------------------------------------------------------------- reinforce

REWARDS = torch.tensor([[1.0, 0.0],
                        [0.0, 3.0]])  # mean 1.0


def test_reinforce_without_baseline_uses_the_rewards():
    adv = ALGORITHMS["reinforce"](baseline="none").advantages(REWARDS)
    torch.testing.assert_close(adv, REWARDS)
    assert ALGORITHMS["reinforce"]().baseline == "none"  # the default


def test_reinforce_batch_baseline_subtracts_the_batch_mean():
    adv = ALGORITHMS["reinforce"](baseline="batch").advantages(REWARDS)
    torch.testing.assert_close(adv, torch.tensor([[0.0, -1.0], [-1.0, 2.0]]))


def test_reinforce_ema_baseline_moves_across_calls():
    algo = ALGORITHMS["reinforce"](baseline="ema", decay=0.5)
    # call 1: no history, so b = this batch's mean = 1.0; then ema = 1.0
    torch.testing.assert_close(algo.advantages(REWARDS), torch.tensor([[0.0, -1.0], [-1.0, 2.0]]))
    # call 2: batch mean 3.0, b = ema of past batches = 1.0; then ema = 0.5 * 1.0 + 0.5 * 3.0 = 2.0
    second = torch.full((2, 2), 3.0)
    torch.testing.assert_close(algo.advantages(second), torch.full((2, 2), 2.0))
    # call 3: b = 2.0
    torch.testing.assert_close(algo.advantages(torch.zeros(2, 2)), torch.full((2, 2), -2.0))
    # the moving average survives a checkpoint
    restored = ALGORITHMS["reinforce"](baseline="ema", decay=0.5)
    restored.load_state_dict(algo.state_dict())
    torch.testing.assert_close(restored.advantages(torch.zeros(1, 2)), algo.advantages(torch.zeros(1, 2)))


def test_reinforce_loss_is_sequence_level_over_the_whole_step():
    # sequence log-probs: -1 - 2 = -3 and -0.5; weighted: (-3) * 2 + (-0.5) * (-1) = -5.5
    # the step holds 4 sequences in all, so loss = -(-5.5) / 4 = 1.375 (num_tokens plays no part)
    loss = ALGORITHMS["reinforce"]().loss(LOGP, MASK, ADV, {"num_tokens": torch.tensor(10.0), "num_sequences": 4.0})
    assert loss.item() == pytest.approx(1.375, abs=1e-6)


@pytest.mark.parametrize("args, bad", [({"baseline": "mean"}, "mean"), ({"baseline": "ema", "decay": 1.0}, "decay")])
def test_reinforce_rejects_bad_args(args, bad):
    with pytest.raises(RlkitError, match=bad):
        ALGORITHMS["reinforce"](**args)


# --------------------------------------------------------------------------- gradient vs device batch size

def _ctx(write_yaml, tmp_path, stage_ctx):
    """A real rl StageContext on CPU in float32 (autocast is then a no-op)."""
    path = write_yaml("""\
        name: grad
        stages:
          rl:
            task: {name: arithmetic}
            rewards: [{name: gsm8k}]
        """)
    return stage_ctx(path, "rl", Path(tmp_path) / "runs")


def _rollout_batch(n=8, length=40, vocab=300, seed=0):
    """Random rollouts shaped like generate()'s: prompt, completion, right padding with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)  # (N, L)
    mask = torch.zeros(n, length)
    for r in range(n):
        prompt = int(torch.randint(5, 15, (), generator=g))
        completion = int(torch.randint(1, length - prompt, (), generator=g))  # rows end at different places
        mask[r, prompt:prompt + completion] = 1
        ids[r, prompt + completion:] = 0  # padding
    return ids, mask


@pytest.mark.parametrize("name", ["grpo", "reinforce"])
def test_gradient_does_not_depend_on_device_batch_size(name, write_yaml, tmp_path, stage_ctx):
    ctx = _ctx(write_yaml, tmp_path, stage_ctx)
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=2, vocab_size=300, seq_len=64))
    with torch.no_grad():  # leave the init's zero output projections: every parameter then gets a gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    algorithm = ALGORITHMS[name]()
    ids, sampled = _rollout_batch()
    mask = sampled[:, 1:]  # (N, L-1): as the rl stage passes it, 1 where token t+1 was sampled
    adv = torch.randn(8, generator=torch.Generator().manual_seed(1))  # (N,)
    extra = {"num_tokens": mask.sum(), "num_sequences": 8.0}

    grads, losses = {}, {}
    for batch in (8, 2, 3):  # 3: a ragged last micro-batch
        model.zero_grad(set_to_none=True)
        losses[batch] = train_step(ctx, model, algorithm, ids, mask, adv, extra, batch)
        grads[batch] = {k: p.grad.clone() for k, p in model.named_parameters()}

    for k, g in grads[8].items():
        assert g.abs().max() > 0, f"{k} got no gradient: the comparison would be vacuous"
        for batch in (2, 3):
            torch.testing.assert_close(grads[batch][k], g, rtol=1e-4, atol=1e-5, msg=f"{k} (device batch {batch})")
    assert losses[2] == pytest.approx(losses[8], abs=1e-5)
    assert losses[3] == pytest.approx(losses[8], abs=1e-5)


def test_gradient_is_the_hand_written_objective(write_yaml, tmp_path, stage_ctx):
    """train_step's backward equals the gradient of grpo's objective written out in full."""
    ctx = _ctx(write_yaml, tmp_path, stage_ctx)
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, sampled = _rollout_batch(n=4, length=24)
    mask = sampled[:, 1:]
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0])
    train_step(ctx, model, ALGORITHMS["grpo"](), ids, mask, adv, {"num_tokens": mask.sum(), "num_sequences": 4.0}, 2)
    got = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    logits = model(ids[:, :-1])  # (N, L-1, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (N, L-1)
    (-(logp * mask * adv[:, None]).sum() / mask.sum()).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


# --------------------------------------------------------------------------- the Algorithm base class and the adapter

class Bare:
    """A duck-typed algorithm, as users write them: the two required methods and nothing else."""

    def advantages(self, rewards):
        return rewards - rewards.mean(dim=1, keepdim=True)

    def loss(self, logp, mask, adv, extra):
        return -(logp * mask * adv[:, None]).sum() / extra["num_tokens"]


def test_a_duck_typed_algorithm_is_adapted_once_with_the_base_class_defaults():
    algorithm = guard(Bare(), "bare", "stages.rl.algorithm")
    assert isinstance(algorithm, Algorithm)
    assert algorithm.needs == frozenset() and algorithm.min_samples == 1
    assert algorithm.zero_advantage_inert is False and algorithm.filter_groups is False
    assert algorithm.shape(torch.ones(2, 4), 8) == {} and algorithm.state_dict() == {}
    assert torch.equal(algorithm.clipped(LOGP, MASK, ADV, {}), torch.zeros(2, 3, dtype=torch.bool))
    # its own methods run: the grpo loss worked by hand above
    assert algorithm.loss(LOGP, MASK, ADV, {"num_tokens": torch.tensor(10.0)}).item() == pytest.approx(0.55)
    # what a plugin declares wins over the defaults
    own = Bare()
    own.needs, own.min_samples, own.zero_advantage_inert, own.filter_groups = ("ref_logp",), 2, True, True
    own.state_dict = lambda: {"baseline": 0.5}
    adapted = guard(own, "own", "stages.rl.algorithm")
    assert adapted.needs == {"ref_logp"} and adapted.min_samples == 2
    assert adapted.zero_advantage_inert is True and adapted.filter_groups is True
    assert adapted.state_dict() == {"baseline": 0.5}


def test_the_built_ins_subclass_algorithm_and_keep_what_they_declare():
    for name, factory in ALGORITHMS.items():
        assert isinstance(factory(), Algorithm), name
    dapo, grpo = ALGORITHMS["dapo"](), ALGORITHMS["grpo"]()
    assert dapo.filter_groups is True and grpo.filter_groups is False  # the default, inherited
    guarded = guard(dapo, "dapo", "stages.rl.algorithm")
    assert guarded.filter_groups is True and guarded.needs == {"old_logp"} and guarded.min_samples == 2
    old = LOGP - torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])  # rho = e^0.5 = 1.65 on one token: clipped
    extra = {"old_logp": old}
    assert torch.equal(guarded.clipped(LOGP, MASK, ADV, extra), dapo.clipped(LOGP, MASK, ADV, extra))
    assert guarded.clipped(LOGP, MASK, ADV, extra)[0, 0] and not guarded.clipped(LOGP, MASK, ADV, extra)[0, 1]
    reinforce = ALGORITHMS["reinforce"](baseline="ema")
    reinforce.advantages(torch.tensor([[1.0, 3.0]]))
    assert guard(reinforce, "reinforce", "w").state_dict() == {"ema": 2.0}
