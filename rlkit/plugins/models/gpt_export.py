"""`rlkit export` for the built-in gpt: its weights as transformers' NanoChatForCausalLM (model_type "nanochat"),
with the default per-layer lambdas as NanoChat plus remote code (modeling_rlkit_gpt.py).

NanoChat is the same computation as a gpt built with `lambdas: false`, once three details are matched:
- rotary: rlkit rotates each head's pairs (x1, x2) = (x[:D/2], x[D/2:]) by +angle, NanoChat by -angle
  (its rotate_half has flipped signs). With P = diag(1, -1) per pair, R(-a) = P R(a) P, and the QK-norm and
  the dot product q.k are unchanged by P, so negating the second half of every head's q and k rows gives
  the same attention scores exactly;
- norms: F.rms_norm without eps uses the dtype's machine epsilon, so rms_norm_eps is float32's;
- vocabulary: rlkit pads it to a multiple of 64 and slices the logits; the export keeps the real rows.
The rest is a renaming: wte -> embed_tokens, c_q/c_k/c_v/c_proj -> q/k/v/o_proj, c_fc/c_proj -> fc1/fc2
(relu2), an untied lm_head, final_logit_softcapping = softcap.

What NanoChat cannot represent is the default gpt's per-layer resid_lambdas / x0_lambdas (each layer's
input is resid_lambda * x + x0_lambda * x0, x0 the normed embedding). No exact fold into NanoChat's weights
exists once an x0_lambda is not 0: its norms have no weights and its stream gets nothing but sublayer outputs.
So such a model is exported as NanoChat plus the lambdas: modeling_rlkit_gpt.py, copied into the folder as
remote code (config.json's auto_map), which transformers loads with `trust_remote_code=True`; a
`lambdas: false` gpt stays plain NanoChat, which needs no remote code.
The tokenizer goes with it (tokenizer_export.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.tokenizer_export import hf_tokenizer

REMOTE = "modeling_rlkit_gpt"  # the remote code's module name in an exported folder


def export(model, folder, tokenizer) -> list[str]:
    try:
        from transformers import NanoChatConfig, NanoChatForCausalLM

        from rlkit.plugins.models.modeling_rlkit_gpt import RlkitGPTConfig, RlkitGPTForCausalLM
    except ImportError:
        raise RlkitError("export: this transformers has no NanoChat architecture; upgrade it (pip install -U "
                         "transformers)") from None

    c = model.config
    V = c.vocab_size
    config = (RlkitGPTConfig if c.lambdas else NanoChatConfig)(
        vocab_size=V, hidden_size=c.width, intermediate_size=4 * c.width, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_head, max_position_embeddings=model.cos.size(0),
        hidden_act="relu2", rms_norm_eps=torch.finfo(torch.float32).eps, final_logit_softcapping=c.softcap,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False,
        tie_word_embeddings=False, bos_token_id=tokenizer.token_id("<|bos|>"),
        eos_token_id=tokenizer.stop_ids[0] if len(tokenizer.stop_ids) == 1 else list(tokenizer.stop_ids),
        pad_token_id=tokenizer.token_id("<|assistant_end|>"))
    hf = (RlkitGPTForCausalLM if c.lambdas else NanoChatForCausalLM)(config).float().eval()
    state = {"model.embed_tokens.weight": model.wte.weight[:V], "lm_head.weight": model.lm_head.weight[:V]}
    if c.lambdas:
        state |= {"model.resid_lambdas": model.resid_lambdas, "model.x0_lambdas": model.x0_lambdas}
        config.auto_map = {"AutoConfig": f"{REMOTE}.RlkitGPTConfig", "AutoModelForCausalLM": f"{REMOTE}.RlkitGPTForCausalLM"}
    for i, block in enumerate(model.blocks):
        at, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        attn = block.attn
        state |= {f"{at}.q_proj.weight": _flip(attn.c_q.weight, c), f"{at}.k_proj.weight": _flip(attn.c_k.weight, c),
                  f"{at}.v_proj.weight": attn.c_v.weight, f"{at}.o_proj.weight": attn.c_proj.weight,
                  f"{mlp}.fc1.weight": block.mlp.c_fc.weight, f"{mlp}.fc2.weight": block.mlp.c_proj.weight}
    result = hf.load_state_dict({k: v.detach().float().clone() for k, v in state.items()}, strict=False)
    unset = [k for k in result.missing_keys if "rotary" not in k]
    if unset or result.unexpected_keys:  # a transformers version whose NanoChat is laid out differently
        raise RlkitError(f"export: transformers' NanoChat does not match rlkit's mapping (unset {unset[:3]}, "
                         f"unknown {result.unexpected_keys[:3]})")
    hf.generation_config.eos_token_id = config.eos_token_id
    fast = hf_tokenizer(tokenizer)  # before anything is written: a failure leaves no half-written folder
    hf.save_pretrained(folder)
    fast.save_pretrained(folder)
    if not c.lambdas:
        return []
    shutil.copyfile(Path(__file__).with_name(f"{REMOTE}.py"), Path(folder) / f"{REMOTE}.py")
    return [f"this gpt has learned per-layer lambdas, which transformers' NanoChat lacks: the folder carries them "
            f"as remote code ({REMOTE}.py, NanoChat plus the lambdas); load it, and its tokenizer, with "
            "trust_remote_code=True (AutoModelForCausalLM and AutoTokenizer read its config)"]


def _flip(w: torch.Tensor, c) -> torch.Tensor:
    """Rows of a q or k projection (width, width) with the second half of every head negated (see the top)."""
    w = w.detach().clone().view(c.n_head, 2, c.head_dim // 2, -1)
    w[:, 1] = -w[:, 1]
    return w.view(c.width, -1)
