"""generate(): the KV cache gives the tokens of full recomputation; seeds, stop tokens, masks, top-k, autocast;
the draw's frequencies; tokens forced into a live row."""
import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.lib.generation.draw import Sampling, row_key, top_k
from rlkit.lib.generation.loop import DecodeLoop
from rlkit.lib.generation.sampling import generate
from rlkit.lib.generation.scheduler import Scheduler
from rlkit.lib.generation.sequence import Sequence

V = 100
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [42]]


@pytest.fixture(scope="module")
def model():
    """A tiny random GPT with spread-out logits (a fresh lm_head would make them near uniform)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(depth=2, vocab_size=V, seq_len=64))
    with torch.no_grad():
        for p in [*m.param_roles()["matrix"], m.lm_head.weight]:
            p.normal_(0, 0.4)
    return m


def greedy_without_cache(model, prompt, n):
    """Reference: recompute the whole sequence for every new token, take the argmax."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_with_cache_equals_recomputing_without_cache(model):
    out = generate(model, PROMPTS, samples=2, max_new_tokens=12, temperature=0)
    for p, prompt in enumerate(PROMPTS):
        expected = greedy_without_cache(model, prompt, 12)
        assert out.completions[2 * p] == out.completions[2 * p + 1] == expected


def test_decode_steps_match_full_forward_across_suffix_growth_and_keep(model):
    """The decoder's logits at every step equal a fresh forward over each row's whole sequence, over 40
    steps (the CPU suffix grows at 16 and 32) with rows dropped by keep() before and after a growth."""
    G, steps = 3, 40
    lens = torch.tensor([len(p) for p in PROMPTS])
    idx = torch.zeros(len(PROMPTS), int(lens.max()), dtype=torch.long)
    for p, prompt in enumerate(PROMPTS):
        idx[p, :len(prompt)] = torch.tensor(prompt)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        decoder = model.decoder(torch.float32)
        logits = decoder.prefill(idx, lens, G, steps).repeat_interleave(G, dim=0)
        seqs = [list(PROMPTS[r // G]) for r in range(len(PROMPTS) * G)]
        for t in range(steps):
            if t in (10, 17):  # drop every third row, then two more, keeping a shuffled order
                rows = [i for i in range(len(seqs)) if i % 3 != 1] if t == 10 else [4, 0, 2, 5, 1, 3, 6]
                decoder.keep(torch.tensor(rows))
                seqs, logits = [seqs[i] for i in rows], logits[rows]
            full = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])
            torch.testing.assert_close(model.config.softcap * torch.tanh(logits / model.config.softcap), full,
                                       rtol=1e-4, atol=1e-4)
            tok = torch.randint(0, V, (len(seqs),), generator=gen)
            seqs = [s + [int(x)] for s, x in zip(seqs, tok)]
            logits = decoder.step(tok)


def test_rollout_layout(model):
    out = generate(model, PROMPTS, samples=3, max_new_tokens=6, temperature=1.0, top_k=10, seeds=list(range(12)),
                   pad_id=99)
    assert out.prompt_lens == [len(p) for p in PROMPTS for _ in range(3)]
    L = max(len(p) for p in PROMPTS) + 6
    assert out.ids.shape == out.mask.shape == (12, L)
    for r, comp in enumerate(out.completions):
        prompt, pl = PROMPTS[r // 3], out.prompt_lens[r]
        assert len(comp) == 6
        assert out.ids[r, :pl].tolist() == prompt and out.ids[r, pl:pl + 6].tolist() == comp
        assert out.ids[r, pl + 6:].tolist() == [99] * (L - pl - 6)
        assert out.mask[r].tolist() == [0] * pl + [1] * 6 + [0] * (L - pl - 6)


def test_seeded_rows_are_reproducible_and_independent_of_the_batch(model):
    seeds = [1000 + r for r in range(4 * 4)]
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=20)
    big = generate(model, PROMPTS, samples=4, seeds=seeds, **kwargs).completions
    assert big == generate(model, PROMPTS, samples=4, seeds=seeds, **kwargs).completions
    assert len({tuple(c) for c in big[4:8]}) > 1  # the samples of one prompt differ
    alone = generate(model, [PROMPTS[2]], samples=1, seeds=[seeds[2 * 4 + 3]], **kwargs).completions
    assert alone == [big[2 * 4 + 3]]
    pair = generate(model, [PROMPTS[3], PROMPTS[0]], samples=2, seeds=[seeds[13], seeds[12], seeds[1], seeds[0]],
                    **kwargs)
    assert pair.completions == [big[13], big[12], big[1], big[0]]
    chunked = generate(model, PROMPTS, samples=4, seeds=seeds, batch_rows=4, **kwargs).completions
    assert chunked == big
    other = generate(model, PROMPTS, samples=4, seeds=[s + 1 for s in seeds], **kwargs).completions
    assert other != big


def test_default_seeds_follow_torch_manual_seed(model):
    torch.manual_seed(5)
    a = generate(model, PROMPTS, samples=2, max_new_tokens=8, top_k=20).completions
    torch.manual_seed(5)
    assert a == generate(model, PROMPTS, samples=2, max_new_tokens=8, top_k=20).completions


def test_stop_tokens_end_rows_and_mask_covers_exactly_the_sampled_tokens(model):
    seeds = list(range(16))
    free = generate(model, PROMPTS, samples=4, max_new_tokens=16, temperature=1.0, top_k=20, seeds=seeds).completions
    stop = {free[0][2], free[5][0], free[9][6]}  # stop tokens that rows are known to hit at different steps
    out = generate(model, PROMPTS, samples=4, max_new_tokens=16, temperature=1.0, top_k=20, seeds=seeds,
                   stop_tokens=stop)
    ended = 0
    for r, (comp, whole) in enumerate(zip(out.completions, free)):
        first = next((i for i, tok in enumerate(whole) if tok in stop), None)
        # each row is its stop-free completion cut just after its first stop token (compaction changes nothing)
        assert comp == (whole if first is None else whole[:first + 1])
        ended += first is not None
        pl = out.prompt_lens[r]
        assert out.mask[r].sum().item() == len(comp)
        assert out.mask[r, pl:pl + len(comp)].all() and out.ids[r, pl:pl + len(comp)].tolist() == comp
    assert ended >= 3


def test_entropy_is_each_rows_sum_over_its_sampled_tokens_of_the_full_forwards_entropy(model):
    """entropy=True: row r's sum, over the tokens it sampled, of the entropy of softmax(softcap(logits)) that a
    plain forward over the finished row gives at the positions that predicted them (written out here). 32
    rows and a stop token few rows hit: rows that ended wait, still in the batch, until 4 have (an eighth),
    and must stop counting from the step after their stop token."""
    seeds = list(range(32))
    free = generate(model, PROMPTS, samples=8, max_new_tokens=16, temperature=0.7, top_k=20, seeds=seeds).completions
    out = generate(model, PROMPTS, samples=8, max_new_tokens=16, temperature=0.7, top_k=20, seeds=seeds,
                   stop_tokens={free[5][0]}, entropy=True)
    lengths = [len(c) for c in out.completions]
    assert out.entropy.shape == (32,) and 1 <= sum(n <= 2 for n in lengths) < 32 // 8  # ended, not yet compacted
    for r, comp in enumerate(out.completions):
        pl = out.prompt_lens[r]
        with torch.no_grad():
            logits = model(out.ids[r:r + 1, :pl + len(comp)].clone())[0].double()  # softcapped by the model
        p = torch.softmax(logits[pl - 1:pl - 1 + len(comp)], dim=-1)  # the positions that predicted comp
        expected = float(-(p * p.log()).sum())
        assert abs(float(out.entropy[r]) - expected) < 1e-4 * max(1.0, expected), (r, float(out.entropy[r]), expected)


def test_top_k_1_is_greedy(model):
    greedy = generate(model, PROMPTS, samples=2, max_new_tokens=10, temperature=0).completions
    top1 = generate(model, PROMPTS, samples=2, max_new_tokens=10, temperature=1.0, top_k=1, seeds=list(range(8)))
    top1 = top1.completions
    assert top1 == greedy


def test_two_stage_top_k_equals_torch_topk():
    torch.manual_seed(0)
    logits = torch.randn(5, 64 * 64)
    values, ids = top_k(logits, 10)
    expected = torch.topk(logits, 10, dim=-1)
    assert torch.equal(values.sort(dim=-1).values, expected.values.sort(dim=-1).values)
    assert torch.equal(ids.sort(dim=-1).values, expected.indices.sort(dim=-1).values)


def test_generate_under_bf16_autocast_keeps_the_model(model):
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, PROMPTS, samples=2, max_new_tokens=6, temperature=0)
    assert model.training and model.lm_head.weight.dtype == torch.float32
    assert all(len(c) == 6 for c in out.completions)
    assert all(0 <= t < V for c in out.completions for t in c)


def test_mistakes_raise_rlkit_errors(model):
    with pytest.raises(RlkitError, match="seeds"):
        generate(model, PROMPTS, samples=2, max_new_tokens=4, seeds=[1, 2])
    with pytest.raises(RlkitError, match="empty"):
        generate(model, [[1], []], samples=1, max_new_tokens=4)
    with pytest.raises(RlkitError, match="640 positions"):
        generate(model, PROMPTS, samples=1, max_new_tokens=10_000)


def test_rollout_tensors_can_enter_a_training_forward(model):
    out = generate(model, PROMPTS, samples=2, max_new_tokens=4, temperature=0)
    assert not out.ids.is_inference()
    loss = model(out.ids[:, :-1], out.ids[:, 1:].masked_fill(out.mask[:, 1:] == 0, -1))
    loss.backward()
    assert model.lm_head.weight.grad is not None


@pytest.fixture(scope="module")
def capped():
    """A tiny GPT whose logits spread well past a soft cap of 2 (raw logits of several units), so the cap, the
    temperature and top-k each change the distribution a lot."""
    torch.manual_seed(1)
    m = GPT(GPTConfig(depth=1, vocab_size=V, seq_len=64, softcap=2.0))
    with torch.no_grad():
        for p in [*m.param_roles()["matrix"], m.lm_head.weight]:
            p.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("temperature, k", [(0.6, None), (1.7, 30), (1.0, 3)])
def test_drawn_frequencies_follow_softmax_of_capped_logits_over_temperature_within_top_k(capped, temperature, k):
    """20,000 seeded rows of one prompt each draw a first token; their frequencies must match softmax(z / T)
    over the top-k of z, z the model's own (soft-capped) logits, written out here: a chi-square statistic
    within 6 standard deviations of its mean (df), and no token outside the top k. A sampler that ignores the
    temperature, top-k or the cap, or draws u unevenly, fails (each was tried)."""
    n, prompt = 20_000, [5, 17, 3]
    with torch.no_grad():
        z = capped(torch.tensor([prompt]))[0, -1].double()  # (V,), capped by the model's forward
    p = torch.softmax(z / temperature, dim=-1)
    if k is not None:
        p = torch.where(z >= z.topk(k).values[-1], p, 0.0)
        p /= p.sum()
    out = generate(capped, [prompt], samples=n, max_new_tokens=1, temperature=temperature, top_k=k,
                   seeds=list(range(n)), batch_rows=n)
    counts = torch.bincount(torch.tensor([c[0] for c in out.completions]), minlength=V).double()
    support = p > 0
    assert counts[~support].sum() == 0
    expected = n * p[support]
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5, (chi2, df)


def test_forced_tokens_enter_a_live_row_with_mask_0_and_the_row_samples_on_from_them(model):
    """A row's `resume` (an environment's reply, a tool's output) is called at its stop token; the tokens it
    returns are fed into the row, mask 0, while the other rows of the batch decode on; the row then samples
    from its prompt + everything so far, here greedily: as recomputation without a cache says."""
    free = generate(model, PROMPTS, 1, 24, temperature=0).completions
    stop = free[0][4]
    cut = free[0].index(stop) + 1  # row 0 hits the stop token after `cut` tokens
    reply, calls = [3, 1, 4, 1, 5], []

    def resume(seq):
        calls.append(list(seq.tokens))
        return reply if len(calls) == 1 else None

    rows = [Sequence(p, row_key(r), 24, Sampling(0.0), resume=resume if r == 0 else None)
            for r, p in enumerate(PROMPTS)]
    scheduler = Scheduler(64, {stop}, joining=False)
    for seq in rows:
        scheduler.submit([seq])
    with torch.inference_mode():
        DecodeLoop(model.decoder(torch.float32), scheduler, torch.device("cpu")).run()
    first = rows[0]
    assert calls[0] == free[0][:cut] and first.tokens[cut:cut + len(reply)] == reply
    rest = first.tokens[cut + len(reply):]
    after = greedy_without_cache(model, PROMPTS[0] + first.tokens[:cut + len(reply)], len(rest))
    assert rest == after and len(rest) > 0
    assert first.mask == [1] * cut + [0] * len(reply) + [1] * len(rest)
    assert first.finish == ("stop" if stop in rest else "length")
    for seq, whole in zip(rows[1:], free[1:]):  # the other rows: their own completions, cut at the stop token
        end = whole.index(stop) + 1 if stop in whole else len(whole)
        assert seq.tokens == whole[:end] and seq.mask == [1] * end


def lowbias32(x):
    """The draw's hash, written out again on Python ints."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_each_token_is_the_inverse_cdf_draw_of_its_seed_and_step(model):
    """Row r's t-th token is the first candidate (top-k, in token-id order) whose cumulative probability under
    softmax(z / T) reaches u = hash(key(seed_r) ^ hash(t + 0x9E3779B9)): written out here on the logits of a
    full forward, so the same seed and step give the same token as in every earlier release."""
    seeds, T, k = [11, 2**40 + 3, 7], 0.8, 10
    out = generate(model, PROMPTS[:3], 1, 6, temperature=T, top_k=k, seeds=seeds)
    for prompt, seed, comp in zip(PROMPTS[:3], seeds, out.completions):
        key = lowbias32((seed & 0xFFFFFFFF) ^ lowbias32(seed >> 32))
        for t, token in enumerate(comp):
            with torch.no_grad():
                z = model(torch.tensor([prompt + comp[:t]]))[0, -1].double()  # capped by the model
            ids = z.topk(k).indices.sort().values
            cdf = torch.softmax(z[ids] / T, dim=-1).cumsum(0)
            u = ((lowbias32(key ^ lowbias32((t + 0x9E3779B9) & 0xFFFFFFFF)) >> 8) + 0.5) * 2.0**-24
            assert token == int(ids[int((cdf < u * cdf[-1]).sum())]), (seed, t)
