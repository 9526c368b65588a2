"""A nanochat-style GPT in which one dial, `depth`, sets the whole model.

Architecture (after nanochat and modded-nanogpt):
- n_layer = depth; width = depth * 64 rounded up to a multiple of head_dim; n_head = width // head_dim.
- Token embedding `wte`, then a parameter-free RMSNorm (F.rms_norm, no gain).
- Each layer starts from x = resid_lambda * x + x0_lambda * x0 (x0: the normed embedding; two learnable
  scalars a layer, 1 and 0 at init, so a fresh model is a plain pre-norm transformer), then
  x = x + attn(norm(x)) and x = x + mlp(norm(x)). `lambdas: false` leaves the scalars out (x stays x):
  exactly transformers' NanoChat architecture, so `rlkit export` can write it (gpt_export.py).
- Attention: separate q, k, v projections, rotary embeddings (base 10000), QK-norm (RMSNorm of each head),
  causal F.scaled_dot_product_attention. MLP: width -> 4*width -> width with ReLU² (relu_squared.py).
- Final norm, an untied `lm_head`, logits soft-capped in float32: softcap * tanh(logits / softcap); the training
  loss runs that and the cross-entropy in row chunks (softcap_loss.py: the same numbers, a fraction of the time);
  under torch.compile, with a hand-written gradient (two fused passes over the logits; float rounding differs).
- No biases, no dropout, no GQA, no sliding windows. Weights stay float32; run the forward under
  torch.autocast(bf16) for bf16 compute (the residual stream then stays float32).
- The vocabulary is padded to a multiple of 64 inside the model; logits are sliced back to vocab_size.

Init (deterministic given torch.manual_seed): wte ~ N(0, 1) (it is normed right away); q, k, v and the MLP's
input ~ U(-a, a) with a = sqrt(3 / width) (std 1/sqrt(width)); both output projections zero, so each block
starts as the identity; lm_head ~ N(0, 0.001), so the first logits are near uniform.

Sampling: `decoder(dtype)` hands rlkit's sampler a GPTDecoder (gpt_decode.py) over a KV cache this
model owns; attention calls `kv_cache.attend(layer, q, k, v)`, and `trunk(idx, kv_cache)` takes each
row's rotary positions from `kv_cache.begin(T)`.

Registered as the model plugin `gpt` by gpt.py (`model: {name: gpt, args: {depth: 4}, seq_len: 512}`), which
imports this module, and torch, only when a model is built.
"""
import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_config import GPTConfig  # noqa: F401 -- GPT's config; imported from here too
from rlkit.plugins.models.relu_squared import relu_squared
from rlkit.plugins.models.softcap_loss import fused_softcap_cross_entropy, softcap_cross_entropy


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(n_pos, head_dim, base=10000.0, device=None):
    """cos, sin of shape (n_pos, head_dim // 2): angle pos * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x (B, T, H, D) by the angles in cos/sin (B|1, T, 1, D/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        width = config.width
        self.c_q = nn.Linear(width, width, bias=False)
        self.c_k = nn.Linear(width, width, bias=False)
        self.c_v = nn.Linear(width, width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x, cos, sin, kv_cache=None, layer=0):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        else:
            y = kv_cache.attend(layer, q, k, v)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.width, 4 * config.width, bias=False)
        self.c_proj = nn.Linear(4 * config.width, config.width, bias=False)

    def forward(self, x):
        return self.c_proj(relu_squared(self.c_fc(x)))  # relu(x)², with a two-pass backward (relu_squared.py)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None, layer=0):
        x = x + self.attn(norm(x), cos, sin, kv_cache, layer)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.width, config.padded_vocab, bias=False)
        if config.lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        # rotary tables reach 10x seq_len so sampling may run past the training length; not saved in checkpoints
        cos, sin = rotary_tables(10 * config.seq_len, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        width = self.config.width
        a = math.sqrt(3.0 / width)
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -a, a)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        if self.config.lambdas:
            self.resid_lambdas.fill_(1.0)
            self.x0_lambdas.fill_(0.0)
        cos, sin = rotary_tables(self.cos.size(0), self.config.head_dim, device=self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def trunk(self, idx, kv_cache=None):
        """Token ids (B, T) -> final normed hidden states (B, T, width): everything but the lm_head."""
        B, T = idx.shape
        if kv_cache is None:
            cos, sin = self.cos[None, :T, None], self.sin[None, :T, None]  # (1, T, 1, D/2)
        else:
            positions = kv_cache.begin(T)  # (B, T): each row's own positions
            cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # (B, T, 1, D/2)
        x = x0 = norm(self.wte(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            if self.config.lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, kv_cache, i)
        if kv_cache is not None:
            kv_cache.end(T)
        return norm(x)

    def forward(self, idx, targets=None, loss_reduction="mean", kv_cache=None):
        """idx (B, T) -> logits (B, T, vocab) float32, or with targets (B, T) the cross-entropy loss:
        "mean" over targets != -1, or "none" -> (B, T) with 0 where the target is -1."""
        x = self.trunk(idx, kv_cache)
        logits = self.lm_head(x)[..., : self.config.vocab_size]  # (B, T, V)
        c = self.config.softcap
        if targets is None:
            return c * torch.tanh(logits.float() / c)
        # compiled: the loss's gradient is computed in its forward pass (softcap_loss.py), half the plain formula's
        # cost under inductor; eager on a GPU the chunks would be thousands of small kernel launches a step
        # (unmeasured there), so only eager CPU steps take the chunked path
        if torch.compiler.is_compiling():
            loss = fused_softcap_cross_entropy(logits.flatten(0, 1), targets.flatten(), c, loss_reduction)
        elif logits.device.type != "cpu":
            logits = c * torch.tanh(logits.float() / c)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=loss_reduction)
        else:  # the same numbers, bit for bit, in cache-sized row chunks (softcap_loss.py)
            loss = softcap_cross_entropy(logits.flatten(0, 1), targets.flatten(), c, loss_reduction)
        return loss.view(targets.shape) if loss_reduction == "none" else loss

    def param_roles(self):
        """Parameters by optimizer role; every parameter is in exactly one list."""
        matrices = [p for block in self.blocks for p in block.parameters()]
        return {
            "matrix": matrices,
            "embedding": [self.wte.weight],
            "unembedding": [self.lm_head.weight],
            "scalar": [self.resid_lambdas, self.x0_lambdas] if self.config.lambdas else [],
        }

    def shard_units(self):
        """The modules fsdp shards one by one (rlkit.lib.training.parallel): the blocks; the root holds the rest."""
        return list(self.blocks)

    def flops_per_token(self):
        """Training FLOPs per token, counted as nanochat does: 6 * (matmul weights, lm_head included,
        embedding excluded) + 12 * n_layer * width * seq_len for attention scores and values."""
        c = self.config
        matmul = sum(p.numel() for p in self.param_roles()["matrix"]) + self.lm_head.weight.numel()
        return 6 * matmul + 12 * c.n_layer * c.width * c.seq_len

    def spec(self) -> dict:
        """The factory args that rebuild this architecture (vocab_size and seq_len come from the run)."""
        c = dataclasses.asdict(self.config)
        return {k: c[k] for k in ("depth", "head_dim", "softcap")} | ({} if c["lambdas"] else {"lambdas": False})

    def export(self, folder, tokenizer) -> list[str]:
        """`rlkit export`: a transformers NanoChatForCausalLM folder (gpt_export.py)."""
        from rlkit.plugins.models.gpt_export import export

        return export(self, folder, tokenizer)

    def decoder(self, dtype):
        """The sampler's prefill/decode over this model's KV cache, with matmul weights in `dtype`."""
        from rlkit.plugins.models.gpt_decode import GPTDecoder

        same = dtype == self.lm_head.weight.dtype
        return GPTDecoder(self if same else self.inference_copy(dtype), dtype)

    def inference_copy(self, dtype):
        """A copy whose matmul weights (blocks and lm_head) are stored in `dtype` (e.g. bfloat16), for sampling
        under torch.autocast(dtype): the same numbers as autocasting the float32 weights, without recasting
        every weight on every forward. The embedding, scalars and rotary tables are shared, not copied."""
        memo = {id(t): t for t in [*self.parameters(), *self.buffers()]}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                memo[id(m.weight)] = nn.Parameter(m.weight.detach().to(dtype), requires_grad=False)
        return copy.deepcopy(self, memo)
