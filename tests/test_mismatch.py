"""No mismatch between sampling and training: every sampled token's log-probability, as generate(logprobs=True)
reports it, against the training forward (rl_update.forward, as the rl update computes log-probs of targets)
on the finished rows, in fp32, for rlkit's GPT (with a soft cap) and a tiny Hugging Face Llama.

Two checks a token, each against the training logits z (softcapped by the model's forward):
- the model's log-probability: Rollout.model_logprobs equals log_softmax(z)[token] (the RL loss's T=1 one);
- the sampling distribution: Rollout.logprobs equals log_softmax(topk(z) / T)[token], recomputed here from z
  with the temperature and top-k generate() was given, and the token is the inverse-CDF draw of that
  distribution at the row's uniform u (so the sampler drew from what it reports, not only reported it).
The rl update's mismatch/* figures are checked against a hand computation, and are 0 on fp32 rollouts.
The mutant tests break the sampler on purpose (no softcap; another temperature, reported or only drawn;
bf16 decoding while the model is fp32) and assert that these checks see it.
"""
from pathlib import Path

import pytest
import torch

from rlkit.core.plugins import load_plugins
from rlkit.lib.generation import draw as draw_mod
from rlkit.lib.generation.draw import row_key, uniform
from rlkit.lib.generation.sampling import generate
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.models.hf_policy import HFPolicy
from rlkit.lib.training.guard import guard
from rlkit.plugins.stages import rl, rl_batch, rl_update
from rlkit.plugins.stages.rl_plan import Rows
from rlkit.plugins.stages.rl_update import forward

ALGORITHMS = load_plugins().tables["algorithm"]

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
G, NEW, T, K = 3, 12, 0.7, 20
SEEDS = list(range(100, 100 + len(PROMPTS) * G))


@pytest.fixture(scope="module")
def gpt():
    """A tiny random fp32 GPT with spread-out logits and a soft cap that bends them (4.0)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(depth=2, vocab_size=100, seq_len=64, softcap=4.0))
    with torch.no_grad():
        for p in [*m.param_roles()["matrix"], m.lm_head.weight]:
            p.normal_(0, 0.4)
    return m.eval()


@pytest.fixture(scope="module")
def llama():
    """A tiny random fp32 Llama (transformers, built offline) behind the `hf` plugin, lm_head spread out."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None)
    net = LlamaForCausalLM(config)
    with torch.no_grad():
        net.lm_head.weight.normal_(0, 0.5)
    return HFPolicy(net.eval(), {}, max_len=128)


def gaps(model, temperature=T, top_k=K):
    """Sample, run the training forward on the finished rows, -> (max |model_logprobs - training logp|,
    max |logprobs - log-prob under the sampling distribution recomputed from the training logits|,
    tokens that are not the inverse-CDF draw of that distribution, sampled tokens)."""
    out = generate(model, PROMPTS, samples=G, max_new_tokens=NEW, temperature=temperature, top_k=top_k,
                   seeds=SEEDS, logprobs=True)
    ids, mask = out.ids.clone(), out.mask[:, 1:] > 0
    x, y = ids[:, :-1], torch.where(mask, ids[:, 1:], -1)
    with torch.no_grad():
        logp, z = forward(model, x, y)  # as the rl update computes them; z (N, L-1, V), softcapped
    model_gap = (out.model_logprobs[:, 1:] - logp)[mask].abs().max().item()
    z = z.double()
    values, cand = z.topk(top_k, dim=-1)
    cand, order = cand.sort(dim=-1)  # token-id order, as the sampler lays out its candidates
    q = torch.softmax(values.gather(-1, order) / temperature, dim=-1)  # (N, L-1, k)
    hit = cand == y[..., None]
    expected = torch.log((q * hit).sum(-1))
    sample_gap = (out.logprobs[:, 1:].double() - expected)[mask].abs().max().item()
    cdf = q.cumsum(-1)
    below = (cdf * hit).sum(-1) - (q * hit).sum(-1)  # the CDF up to the token, and through it
    through = (cdf * hit).sum(-1)
    bad = 0
    for r in range(len(ids)):
        pl = out.prompt_lens[r]
        keys = torch.tensor([row_key(SEEDS[r])])
        for i in range(len(out.completions[r])):
            u = uniform(keys, i).double().item()
            pos = pl + i - 1
            bad += not (below[r, pos] - 1e-5 <= u <= through[r, pos] + 1e-5)
    return model_gap, sample_gap, bad, int(mask.sum())


def test_gpt_sampler_logprobs_equal_the_training_forwards_in_fp32(gpt):
    model_gap, sample_gap, bad, tokens = gaps(gpt)
    assert tokens == len(PROMPTS) * G * NEW  # no stop tokens: every row samples NEW tokens
    assert model_gap < 1e-5 and sample_gap < 1e-5 and bad == 0


def test_hf_sampler_logprobs_equal_the_training_forwards_in_fp32(llama):
    model_gap, sample_gap, bad, tokens = gaps(llama)
    assert tokens == len(PROMPTS) * G * NEW
    assert model_gap < 1e-5 and sample_gap < 1e-5 and bad == 0


def test_without_top_k_and_at_temperature_1_both_log_probs_are_the_models(gpt):
    out = generate(gpt, PROMPTS, samples=2, max_new_tokens=6, temperature=1.0, seeds=SEEDS[:6], logprobs=True)
    torch.testing.assert_close(out.logprobs, out.model_logprobs, rtol=0, atol=1e-6)
    assert (out.logprobs[out.mask == 0] == 0).all() and (out.logprobs[out.mask > 0] < 0).all()


def test_greedy_rows_report_log_probability_0_for_the_sampler_and_the_models_own(gpt):
    out = generate(gpt, PROMPTS, samples=1, max_new_tokens=5, temperature=0, logprobs=True)
    assert (out.logprobs == 0).all() and (out.model_logprobs[out.mask > 0] < 0).all()


# the rl update tracks the gap (mismatch/*) from the rollouts' log-probs


def _rl_ctx(write_yaml, tmp_path, stage_ctx, epochs, minibatches):
    path = write_yaml(f"""\
        name: mismatch
        stages:
          rl:
            task: {{name: arithmetic}}
            rewards: [{{name: gsm8k}}]
            rollout: {{max_new_tokens: {NEW}}}
            device_batch_size: 3
            updates: {{epochs: {epochs}, minibatches: {minibatches}}}
        """)
    return stage_ctx(path, "rl", Path(tmp_path) / "runs")


def _update(ctx, model, ids, mask, sample_logp):
    """One rl step's updates (reinforce, some rows inert) -> the step's reduced figures."""
    adv = torch.tensor([1.0, 0.0, -1.0] * (len(ids) // 3) + [2.0] * (len(ids) % 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay the sampling weights
    learner = rl_update.Learner(ctx, model, model, optimizer, guard(ALGORITHMS["reinforce"](), "reinforce", "test"))
    return rl_update.update(learner, Rows(ids, mask, adv, sample_logp=sample_logp)).reduce(ctx)


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 2)])
def test_the_update_tracks_the_mismatch_as_computed_by_hand(write_yaml, tmp_path, stage_ctx, gpt, epochs, minibatches):
    """A known gap: sample_logp = the training log-prob + delta; the step's mismatch/* are its |mean|, max and k3."""
    ctx = _rl_ctx(write_yaml, tmp_path, stage_ctx, epochs, minibatches)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (8, 20), generator=g)
    mask = torch.zeros(8, 19)
    for r in range(8):
        mask[r, 4 + r % 3:10 + r] = 1
    with torch.no_grad():
        train = forward(gpt, ids[:, :-1], torch.where(mask > 0, ids[:, 1:], -1))[0]
    delta = 0.1 + torch.randn(mask.shape, generator=g) * 0.2  # lopsided: k3 tells KL(p||q) from KL(q||p)
    stats = _update(ctx, gpt, ids, mask, train + delta)
    d = -delta[mask > 0].double()  # log p_train - log p_sample
    assert stats["mismatch/logratio_mean"] == pytest.approx(float(d.abs().mean()), abs=2e-6)
    assert stats["mismatch/logratio_max"] == pytest.approx(float(d.abs().max()), abs=2e-6)
    assert stats["mismatch/kl"] == pytest.approx(float((d.exp() - d - 1).mean()), rel=1e-4)


def test_fp32_rollouts_give_a_mismatch_of_0_and_the_report_card_shows_it(write_yaml, tmp_path, stage_ctx, gpt):
    ctx = _rl_ctx(write_yaml, tmp_path, stage_ctx, 1, 1)
    out = generate(gpt, PROMPTS, samples=G, max_new_tokens=NEW, temperature=T, top_k=K, seeds=SEEDS, logprobs=True)
    stats = _update(ctx, gpt, out.ids.clone(), out.mask[:, 1:].float(), out.model_logprobs[:, 1:])
    assert stats["mismatch/logratio_max"] < 1e-5 and stats["mismatch/kl"] < 1e-9
    tracked = {f"mismatch/{m}": {"first": v, "last": v, "mean": v, "max": v, "min": v}
               for m, v in [("logratio_mean", 0.0123), ("logratio_max", 0.5), ("kl", 4.5e-4)]}
    (line,) = [x for x in rl.report({}, tracked) if "mismatch" in x]
    assert "mean 0.0123" in line and "max 0.5" in line and "KL (k3) mean 0.00045" in line


def test_a_step_whose_rows_get_no_forward_tracks_no_mismatch(write_yaml, tmp_path, stage_ctx, gpt):
    """One update, reinforce, every advantage 0: no row gets a forward, so nothing was measured (not a 0)."""
    ctx = _rl_ctx(write_yaml, tmp_path, stage_ctx, 1, 1)
    out = generate(gpt, PROMPTS, samples=G, max_new_tokens=NEW, temperature=T, top_k=K, seeds=SEEDS, entropy=True,
                   logprobs=True)
    mask = out.mask[:, 1:].float()
    rows = Rows(out.ids.clone(), mask, torch.zeros(len(mask)), entropy=out.entropy,
                sample_logp=out.model_logprobs[:, 1:])
    learner = rl_update.Learner(ctx, gpt, gpt, torch.optim.SGD(gpt.parameters(), lr=0.0),
                                guard(ALGORITHMS["reinforce"](), "reinforce", "test"))
    stats = rl_update.update(learner, rows).reduce(ctx)
    assert "loss" in stats and not any(k.startswith("mismatch/") for k in stats)


def test_the_rl_batch_carries_the_models_own_log_probs_of_the_kept_rows(gpt):
    """rl_batch.merge keeps, for the kept groups, the sampler's model log-probs (T=1, full vocabulary): the ones a
    training forward computes, not the tempered top-k ones."""
    out = generate(gpt, PROMPTS, samples=G, max_new_tokens=NEW, temperature=T, top_k=K, seeds=SEEDS, entropy=True,
                   logprobs=True)
    mine = torch.tensor([True, False, True])
    sample_logp = rl_batch.merge([(out, mine)], G)[3]
    rows = mine.repeat_interleave(G)
    assert torch.equal(sample_logp, out.model_logprobs[rows])
    assert not torch.allclose(sample_logp, out.logprobs[rows])  # at T=0.7 and top-k they differ


# mutants: each breaks the sampler in one way, and the checks above must see it


def test_mutant_sampler_that_ignores_the_softcap_is_caught(gpt, monkeypatch):
    from rlkit.plugins.models import gpt_decode

    init = gpt_decode.GPTDecoder.__init__

    def uncapped(self, net, dtype):
        init(self, net, dtype)
        self.logit_softcap = None
    monkeypatch.setattr(gpt_decode.GPTDecoder, "__init__", uncapped)
    model_gap, sample_gap, _, _ = gaps(gpt)
    assert model_gap > 1e-3 and sample_gap > 1e-3


@pytest.mark.parametrize("reports", ["the temperature it drew at", "the temperature it was given"])
def test_mutant_sampler_that_draws_at_another_temperature_is_caught(gpt, monkeypatch, reports):
    choose = draw_mod.choose

    def hotter(values, ids, keys, t, temperature, softcap=None, logp=False):
        tok = choose(values, ids, keys, t, temperature * 1.3, softcap, logp)
        if logp and reports == "the temperature it was given":
            tok = tok[0], choose(values, ids, keys, t, temperature, softcap, True)[1]
        return tok
    monkeypatch.setattr(draw_mod, "choose", hotter)
    model_gap, sample_gap, bad, _ = gaps(gpt)
    assert model_gap < 1e-5  # the model's own log-probability does not depend on the temperature
    assert bad > 0  # the draws are not the reported distribution's
    if reports == "the temperature it drew at":
        assert sample_gap > 1e-3


@pytest.mark.parametrize("which", ["gpt", "llama"])
def test_mutant_sampler_that_decodes_in_bf16_while_the_model_is_fp32_is_caught(gpt, llama, monkeypatch, which):
    model = {"gpt": gpt, "llama": llama}[which]
    decoder = type(model).decoder

    def bf16(self, dtype):  # the inference copy in bf16, its forwards under bf16 autocast (as generate() runs it)
        inner = decoder(self, torch.bfloat16)
        for name in ("prefill", "step"):
            call = getattr(inner, name)
            setattr(inner, name, lambda *a, call=call: autocast_bf16(call, *a))
        return inner
    monkeypatch.setattr(type(model), "decoder", bf16)
    model_gap, _, _, _ = gaps(model)
    assert model_gap > 1e-3


def autocast_bf16(call, *args):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return call(*args)
