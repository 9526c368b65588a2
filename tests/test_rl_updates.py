"""The rl stage's off-policy machinery: several updates per rollout batch, the reference model, group filtering.

- epochs: 2 -> the first update sees ratio 1 exactly, the second ratios != 1, and the clip stops the
  gradient of exactly the tokens the algorithm says it clipped;
- ref_logp is the starting checkpoint's log-probs, so deepseek_grpo's KL is 0 at step 1 and positive later;
- filter_groups drops groups whose rewards are all equal and refills the step with fresh prompts.
"""
import zlib
from pathlib import Path

import pytest
import torch

from rlkit.core import pipeline
from rlkit.core.checkpoint import latest_checkpoint, load_checkpoint
from rlkit.core.plugins import load_plugins
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.lib.training.guard import guard
from rlkit.plugins.stages import rl_batch, rl_stats, rl_update
from rlkit.plugins.stages.rl_plan import Rows

ALGORITHMS = load_plugins().tables["algorithm"]


class Recording:
    """dr_grpo, recording each loss call's ratios, the gradient reaching logp and the clip mask."""

    def __init__(self):
        self.inner, self.calls = ALGORITHMS["dr_grpo"](clip_eps=0.05), []
        self.needs = self.inner.needs

    def advantages(self, rewards):
        return self.inner.advantages(rewards)

    def clipped(self, logp, mask, adv, extra):
        return self.inner.clipped(logp, mask, adv, extra)

    def loss(self, logp, mask, adv, extra):
        call = {"rho": torch.exp(logp - extra["old_logp"]).detach(), "mask": mask,
                "clipped": self.inner.clipped(logp.detach(), mask, adv, extra), "adv": adv}
        logp.register_hook(lambda g: call.__setitem__("grad", g.clone()))
        self.calls.append(call)
        return self.inner.loss(logp, mask, adv, extra)


def test_second_epoch_sees_ratios_and_the_clip_stops_their_gradient(write_yaml, tmp_path, stage_ctx):
    path = write_yaml("""\
        name: epochs
        stages:
          rl:
            task: {name: arithmetic}
            rewards: [{name: gsm8k}]
            rollout: {max_new_tokens: 30}
            device_batch_size: 3
            updates: {epochs: 2, minibatches: 1}
        """)
    ctx = stage_ctx(path, "rl", Path(tmp_path) / "runs")
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 300, (8, 30), generator=g)  # (N, L)
    mask = torch.zeros(8, 29)
    mask[:, 8:20] = 1  # (N, L-1)
    adv = torch.tensor([1.0, -1.0] * 4)
    algorithm = Recording()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    learner = rl_update.Learner(ctx, model, model, optimizer, guard(algorithm, "recording", "test"))
    stats = rl_update.update(learner, Rows(ids, mask, adv)).reduce(ctx)

    per_update = len(algorithm.calls) // 2  # 3 micro-batches per update
    first, second = algorithm.calls[:per_update], algorithm.calls[per_update:]
    for call in first:  # the weights that sampled: old_logp is the same forward's log-prob
        assert torch.equal(call["rho"][call["mask"] > 0], torch.ones(int(call["mask"].sum())))
    assert max(float((c["rho"] - 1).abs().max()) for c in second) > 1e-2
    clipped = sum(int((c["clipped"] & (c["mask"] > 0)).sum()) for c in second)
    assert clipped > 0, "the clip never acted: the test would prove nothing"
    for c in second:
        active = c["mask"] > 0
        assert torch.all(c["grad"][c["clipped"] & active] == 0)  # clipped: no gradient
        assert torch.all(c["grad"][~c["clipped"] & active] != 0)  # the rest: rho * A / (S * max_new_tokens)
    assert stats["clip_frac"] == pytest.approx(clipped / (2 * float(mask.sum())))
    assert stats["ratio_max"] > 1.0 and stats["kl_old"] > 0 and stats["entropy"] > 0


# --------------------------------------------------------------------------- reference and KL, end to end

TINY = """\
# tokenizer -> rl {first} (tests)
name: ref
seed: 0
device: cpu
plugins: [./const.py]
model: {{depth: 1, seq_len: 128, dtype: float32}}
tracking: {{enabled: false}}
stages:
  tokenizer:
    vocab_size: 300
    max_chars: 100000
    data: {{source: arithmetic, args: {{size: 500}}}}
  {entries}
"""
RL = """\
    kind: rl
    task: {{name: arithmetic, args: {{size: 200}}}}
    algorithm: {{name: {algorithm}}}
    rewards: [{{name: half_constant}}]
    optimizer: {{name: adamw, args: {{lr: 0.02}}}}
    rollout: {{samples: 4, temperature: 1.0, top_k: 0, max_new_tokens: 8}}
    steps: {steps}
    examples_per_step: 4
    device_batch_size: 16
    init_lr_frac: 1.0
    save_every: 0
    max_refills: {refills}
    eval: {{every: 0, examples: 2, k: 1}}
"""
REWARD = '''\
"""A reward that is constant (1.0) for half of the prompts and the digit share of the completion for the rest."""
import zlib

import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"half_constant": half_constant}


def half_constant(completion, example):
    if zlib.crc32(repr(sorted(example.items())).encode()) % 2:
        return 1.0
    return sum(c in "0123456789" for c in completion) / max(1, len(completion))
'''


def _run(write_file, write_yaml, tmp_path, monkeypatch, entries: str):
    write_file("const.py", REWARD)
    monkeypatch.chdir(tmp_path)
    cfg, plugins = pipeline.prepare(write_yaml(TINY.format(first="", entries=entries)), [], [])
    pipeline.run(cfg, plugins)
    return tmp_path / "runs" / "ref"


def test_ref_logp_is_the_starting_checkpoint_and_the_kl_grows(write_file, write_yaml, tmp_path, monkeypatch):
    refs, stats = [], []
    build_ref, update = rl_update.reference_model, rl_update.update
    monkeypatch.setattr(rl_update, "reference_model", lambda *a: refs.append(build_ref(*a)) or refs[-1])
    monkeypatch.setattr(rl_update, "update",
                        lambda learner, rows: stats.append((learner.ctx, update(learner, rows))) or stats[-1][1])
    entries = "first:\n" + RL.format(algorithm="grpo", steps=2, refills=0) + \
              "  second:\n" + RL.format(algorithm="deepseek_grpo", steps=3, refills=0)
    run_dir = _run(write_file, write_yaml, tmp_path, monkeypatch, entries)

    start, _, _ = load_checkpoint(latest_checkpoint(run_dir / "first"), load_optimizer=False)
    assert len(refs) == 1  # only the entry whose algorithm needs ref_logp loads one
    for k, v in refs[0].state_dict().items():
        assert torch.equal(v, start[k]), k
    assert all(not p.requires_grad for p in refs[0].parameters())
    stats = [tally.reduce(ctx) for ctx, tally in stats]  # what each step tracked of its update
    kl = [s["kl_ref"] for s in stats[2:]]  # the second entry's steps
    assert kl[0] == 0.0  # step 1: the policy still is the reference
    assert kl[1] > 0 and kl[2] > 0
    assert "kl_ref" not in stats[0]  # grpo: no reference


def test_filter_groups_drops_constant_groups_and_refills(write_file, write_yaml, tmp_path, monkeypatch):
    batches = []
    collect = rl_batch.collect
    monkeypatch.setattr("rlkit.plugins.stages.rl_run.collect", lambda *a: batches.append(collect(*a)) or batches[-1])
    _run(write_file, write_yaml, tmp_path, monkeypatch, "rl:\n" + RL.format(algorithm="dapo", steps=3, refills=6))

    assert sum(b.stats["groups_filtered"] for b in batches) > 0, "no constant group came up: nothing was tested"
    assert any(b.stats["refill_rounds"] > 0 for b in batches)
    for b in batches:
        assert b.stats["groups_kept"] == 4 and b.ids.shape[0] == 4 * 4  # full steps, refilled
        assert torch.all(b.adv.view(4, 4).abs().sum(dim=1) > 0)  # every kept group is informative


# --------------------------------------------------------------------------- rows that cannot move the weights

class WithoutInert:
    """An algorithm as it is, minus its zero_advantage_inert: the rl stage then backpropagates every row."""

    def __init__(self, inner):
        self.inner, self.needs = inner, inner.needs
        if hasattr(inner, "clipped"):
            self.clipped = inner.clipped

    def advantages(self, rewards):
        return self.inner.advantages(rewards)

    def loss(self, logp, mask, adv, extra):
        return self.inner.loss(logp, mask, adv, extra)


def _updates_ctx(write_yaml, tmp_path, stage_ctx, epochs, minibatches):
    """A real StageContext of an rl entry: 3 rows a micro-batch, `epochs` x `minibatches` updates."""
    path = write_yaml(f"""\
        name: inert
        stages:
          rl:
            task: {{name: arithmetic}}
            rewards: [{{name: gsm8k}}]
            rollout: {{max_new_tokens: 30}}
            device_batch_size: 3
            updates: {{epochs: {epochs}, minibatches: {minibatches}}}
        """)
    return stage_ctx(path, "rl", Path(tmp_path) / "runs")


def _staggered_rows(seed):
    """ids (8, 30) random tokens; mask (8, 29): rows whose sampled tokens start and end at different places."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (8, 30), generator=g)
    mask = torch.zeros(8, 29)
    for r in range(8):
        mask[r, 6 + r % 3:18 + r] = 1
    return ids, mask


def _update_counting_rows(ctx, model, algorithm, ids, mask, adv, entropy=None):
    """One rl step's updates with SGD + momentum; the rows that went through a forward with / without autograd."""
    rows = {True: 0, False: 0}

    def count(module, inputs, output):
        rows[torch.is_grad_enabled()] += inputs[0].shape[0]
    hook = model.register_forward_hook(count)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    learner = rl_update.Learner(ctx, model, model, optimizer, algorithm)
    stats = rl_update.update(learner, Rows(ids, mask, adv, entropy=entropy)).reduce(ctx)
    hook.remove()
    return stats, rows


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 2)])
def test_rows_with_zero_advantage_skip_the_backward_and_the_step_is_the_same(epochs, minibatches, write_yaml,
                                                                             tmp_path, stage_ctx):
    """reinforce (no baseline) sets zero_advantage_inert: its reward-0 rows get a forward without autograd and
    no backward. The weights after the step, and what is tracked, are those of the full backward. With 2
    minibatches, the odd rows (minibatch 1) all have advantage 0: that minibatch takes a zero gradient through
    an empty pass and its optimizer step still applies the momentum, as the full backward's step does."""
    ctx = _updates_ctx(write_yaml, tmp_path, stage_ctx, epochs, minibatches)
    ids, mask = _staggered_rows(seed=0)
    adv = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # reinforce's advantages: the 0/1 rewards
    reinforce = ALGORITHMS["reinforce"]()
    assert reinforce.zero_advantage_inert

    results = {}
    for name, algorithm in (("skipping", reinforce), ("full", guard(WithoutInert(reinforce), "full", "test"))):
        torch.manual_seed(0)
        model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
        start = {k: v.clone() for k, v in model.state_dict().items()}
        stats, rows = _update_counting_rows(ctx, model, algorithm, ids, mask, adv)
        results[name] = (model.state_dict(), stats, rows)
    (skip_w, skip_stats, skip_rows), (full_w, full_stats, full_rows) = results["skipping"], results["full"]

    empty_passes = epochs if minibatches == 2 else 0  # minibatch 1 has no row to train: one 1-token pass
    assert skip_rows[True] == epochs * 3 + empty_passes  # the 3 rows whose advantage is 1, each update
    assert full_rows[True] == epochs * 8
    assert skip_stats["no_backward_frac"] == 5 / 8 and full_stats["no_backward_frac"] == 0.0
    assert any(not torch.equal(full_w[k], start[k]) for k in start), "the step moved nothing: vacuous"
    for k in full_w:
        torch.testing.assert_close(skip_w[k], full_w[k], rtol=1e-5, atol=1e-6, msg=k)
    for key in ("loss", "grad_norm", "entropy", "ratio_mean", "ratio_max", "kl_old", "clip_frac"):
        assert skip_stats[key] == pytest.approx(full_stats[key], rel=1e-5, abs=1e-7), key


# --------------------------------------------------------------------------- micro-batches of like length

def test_micro_batches_hold_rows_of_like_length_and_the_step_is_the_same(write_yaml, tmp_path, stage_ctx):
    """8 rows alternating short and long, 2 rows to a micro-batch: cut in order of length, no micro-batch
    pairs a short row with a long one, so the forwards cover 2 x 2 x 8 + 2 x 2 x 25 positions instead of
    4 x 2 x 25 in row order; the weights after the step are those of one micro-batch holding all 8 rows."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 300, (8, 30), generator=g)  # (N, L)
    mask = torch.zeros(8, 29)
    for r in range(8):
        mask[r, 5:5 + (20 if r % 2 else 3)] = 1  # short rows: targets 5..7 (x 8 wide), long: 5..24 (x 25 wide)
    adv = torch.tensor([1.0, -1.0, 0.5, 1.0, -0.5, 1.0, 2.0, -1.0])  # no 0: every row is trained
    weights = {}
    for size in (2, 8):
        path = write_yaml(f"""\
            name: like{size}
            stages:
              rl:
                task: {{name: arithmetic}}
                rewards: [{{name: gsm8k}}]
                rollout: {{max_new_tokens: 30}}
                device_batch_size: {size}
            """, name=f"like{size}.yaml")
        ctx = stage_ctx(path, "rl", Path(tmp_path) / f"runs{size}")
        torch.manual_seed(0)
        model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
        shapes = []
        hook = model.register_forward_hook(lambda m, inputs, out: shapes.append(tuple(inputs[0].shape)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        learner = rl_update.Learner(ctx, model, model, optimizer, ALGORITHMS["reinforce"]())
        rl_update.update(learner, Rows(ids, mask, adv))
        hook.remove()
        weights[size] = model.state_dict()
        if size == 2:
            assert sorted(shapes) == [(2, 8), (2, 8), (2, 25), (2, 25)]
            assert sum(b * t for b, t in shapes) == 2 * 2 * 8 + 2 * 2 * 25 < 4 * 2 * 25
    for name, w in weights[8].items():
        torch.testing.assert_close(weights[2][name], w, rtol=1e-5, atol=1e-6)


def _row_entropies(model, ids, mask):
    """(N,) each row's entropy of softmax(logits) summed over its sampled positions, from one plain forward:
    what the rollouts hand the update (written out here, not rl_update's own function)."""
    with torch.no_grad():
        p = torch.softmax(model(ids[:, :-1]).double(), dim=-1)  # (N, L-1, V): position t predicts token t+1
    return (-(p * p.log()).sum(dim=-1) * mask).sum(dim=1).float()


@pytest.mark.parametrize("name", ["reinforce", "dr_grpo"])
@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 2)])
def test_with_the_rollouts_entropy_one_update_gives_inert_rows_no_forward_and_tracks_the_same(
        name, epochs, minibatches, write_yaml, tmp_path, stage_ctx):
    """Given each row's entropy from the rollouts, a single update (no reference) runs no forward at all for
    rows whose advantage is 0: their ratio is 1 and their KL 0 as the sampling weights give. The weights and
    every tracked number equal the full backward's, which takes the entropy from its own forwards. Several
    updates still need the inert rows' forwards (their ratios move)."""
    ctx = _updates_ctx(write_yaml, tmp_path, stage_ctx, epochs, minibatches)
    ids, mask = _staggered_rows(seed=1)
    adv = torch.tensor([1.0, 0.0, -0.5, 0.0, 0.0, 0.0, 2.0, 0.0])
    algorithm = ALGORITHMS[name]()
    assert algorithm.zero_advantage_inert
    results = {}
    for way in ("rollout entropy", "full"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
        entropy = _row_entropies(model, ids, mask) if way == "rollout entropy" else None
        alg = algorithm if way == "rollout entropy" else guard(WithoutInert(algorithm), "full", "test")
        stats, rows = _update_counting_rows(ctx, model, alg, ids, mask, adv, entropy)
        results[way] = (model.state_dict(), stats, rows)
    (w, stats, rows), (full_w, full_stats, _) = results["rollout entropy"], results["full"]
    assert rows[False] == (0 if epochs * minibatches == 1 else 8 + 5 * epochs)  # 8: the old_logp pass
    assert stats["no_backward_frac"] == 5 / 8
    for k in full_w:
        torch.testing.assert_close(w[k], full_w[k], rtol=1e-5, atol=1e-6, msg=k)
    for key in ("loss", "grad_norm", "entropy", "ratio_mean", "ratio_max", "kl_old", "clip_frac"):
        assert stats[key] == pytest.approx(full_stats[key], rel=1e-5, abs=1e-7), key


# --------------------------------------------------------------------------- the step's figures in one all-reduce

def test_the_steps_figures_come_from_named_sums_in_one_all_reduce(write_yaml, tmp_path, stage_ctx, monkeypatch):
    """One update of reinforce (inert rows forwarded without autograd, the entropy from the forwards), reduced
    with the step's own figures: one all-reduce for all of them, each figure the one worked out independently."""
    ctx = _updates_ctx(write_yaml, tmp_path, stage_ctx, 1, 1)
    ids, mask = _staggered_rows(seed=2)
    adv = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0])
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=300, seq_len=64))
    entropy = float(_row_entropies(model, ids, mask).sum()) / float(mask.sum())  # before the step moves it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    learner = rl_update.Learner(ctx, model, model, optimizer, ALGORITHMS["reinforce"]())
    tally = rl_update.update(learner, Rows(ids, mask, adv))
    calls = []
    real = rl_stats.all_reduce_sum
    monkeypatch.setattr(rl_stats, "all_reduce_sum", lambda t: calls.append(t.numel()) or real(t))
    stats = tally.reduce(ctx, {"reward": torch.tensor(0.25), "groups_kept": 2})

    assert len(calls) == 1  # 2 own figures + 12 named sums + 2 max slots, one tensor
    assert list(stats)[:2] == ["reward", "groups_kept"] and stats["reward"] == 0.25 and stats["groups_kept"] == 2.0
    assert stats["no_backward_frac"] == 5 / 8  # the five rows of advantage 0
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0 and stats["kl_old"] == 0.0  # one update
    assert stats["clip_frac"] == 0.0 and "kl_ref" not in stats  # reinforce: no clip, no reference
    assert stats["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert stats["loss"] == tally.losses[0] and stats["grad_norm"] == tally.gnorms[0] > 0
