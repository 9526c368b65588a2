"""generate(): the KV cache gives the tokens of full recomputation; seeds, stop tokens, masks, top-k, autocast."""
import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt import GPT, GPTConfig
from rlkit.lib.generation.draw import top_k
from rlkit.lib.generation.sampling import generate

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
