"""The `hf` plugin's decoder (hf_decode.py, hf_cache.py) against transformers' own forward without a cache: every
step's logits of every active row, through prefill of prompts of different lengths, G rows a prompt, rows that
diverge, and keep() dropping rows mid-way; on the in-place cache (Llama, Qwen2) and on the DynamicCache fallback
(a sliding-window Qwen2), and with attention other than sdpa (eager Llama)."""
import pytest
import torch

from rlkit.plugins.models.hf_policy import HFPolicy

ARCHS = ["llama", "llama-eager", "qwen2", "qwen2-sliding"]


def _policy(arch):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=None,
                  eos_token_id=None)
    if arch.startswith("llama"):  # eager attention: the in-place cache under transformers' own mask and attention
        attention = "eager" if arch.endswith("eager") else "sdpa"
        config, cls = LlamaConfig(**common, attn_implementation=attention), LlamaForCausalLM
    else:
        sliding = dict(use_sliding_window=True, sliding_window=6, max_window_layers=0)  # every layer slides
        sliding = sliding if arch.endswith("sliding") else {}
        config, cls = Qwen2Config(**common, **sliding), Qwen2ForCausalLM
    torch.manual_seed(0)
    return HFPolicy(cls(config).eval(), {}, max_len=128)


def _drive(decoder, prompts, G, steps, keep_at):
    """Prefill, then `steps` random tokens a row (rows diverge), keep() every other row at step keep_at ->
    [(sequence, logits)] for every active row after every step, and the decoder's cache."""
    gen = torch.Generator().manual_seed(0)
    lens = torch.tensor([len(p) for p in prompts])
    idx = torch.zeros(len(prompts), int(lens.max()), dtype=torch.long)
    for p, prompt in enumerate(prompts):
        idx[p, :len(prompt)] = torch.tensor(prompt)
    seqs = [list(prompts[r // G]) for r in range(len(prompts) * G)]
    seen = []
    with torch.inference_mode():
        first = decoder.prefill(idx, lens, G, steps + 1)
        seen += [(prompts[p], first[p]) for p in range(len(prompts))]
        for t in range(steps):
            if t == keep_at:
                rows = torch.arange(0, len(seqs), 2)
                decoder.keep(rows)
                seqs = [seqs[r] for r in rows.tolist()]
            tok = torch.randint(1, 97, (len(seqs),), generator=gen)
            for seq, x in zip(seqs, tok.tolist()):
                seq.append(x)
            logits = decoder.step(tok)
            assert logits.dtype == torch.float32 and logits.shape == (len(seqs), 97)
            seen += [(list(seq), row.clone()) for seq, row in zip(seqs, logits)]
    return seen, decoder.cache


@pytest.mark.parametrize("arch", ARCHS)
def test_every_steps_logits_equal_a_fresh_forward_through_keep(arch):
    policy = _policy(arch)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]  # right-padded to 7 together
    seen, cache = _drive(policy.decoder(torch.float32), prompts, G=3, steps=8, keep_at=3)
    assert type(cache).__name__ == ("DynamicCache" if arch.endswith("sliding") else "RowCache")
    assert policy.model.config._attn_implementation == ("eager" if arch.endswith("eager") else "sdpa")  # restored
    with torch.inference_mode():
        for seq, logits in seen:
            ref = policy.model(torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)


def test_bf16_decoding_keeps_float32_keys_on_cpu_and_matches_a_bf16_forward():
    policy = _policy("llama")
    with torch.autocast("cpu", torch.bfloat16):
        decoder = policy.decoder(torch.bfloat16)
        seen, cache = _drive(decoder, [[5, 6, 7, 8, 9], [10, 11]], G=2, steps=6, keep_at=2)
    assert cache.layers[0].keys.dtype == torch.float32  # CPU SDPA over float32 keys: 3x faster than over bf16
    with torch.inference_mode():
        for seq, logits in seen:
            ref = decoder.net(torch.tensor([seq])).logits[0, -1].float()  # the bf16 copy, plain bf16 attention
            torch.testing.assert_close(logits, ref, rtol=0, atol=0.05 * float(ref.abs().max()))
