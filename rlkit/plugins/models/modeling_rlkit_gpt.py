"""rlkit's default GPT (learned per-layer lambdas) as a transformers model: transformers' NanoChat plus the lambdas.

`rlkit export` copies this file into the exported folder as its remote code, so
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` builds it (config.json's auto_map names
the two classes below). It needs torch and transformers only; it never imports rlkit.

NanoChat already computes what a gpt with `lambdas: false` computes (gpt_export.py lists the three details that
make it exact). The default gpt differs in one place: before each layer i the stream becomes
    x = resid_lambdas[i] * x + x0_lambdas[i] * x0,   x0 the normed token embedding (the first layer's input).
A forward pre-hook on every decoder layer applies that, so NanoChat's own forward, attention mask, cache and
generation code run unchanged. The two vectors are weights of the model (model.resid_lambdas,
model.x0_lambdas), saved in model.safetensors beside the others.
"""
from functools import partial

import torch
from torch import nn
from transformers import NanoChatConfig
from transformers.models.nanochat.modeling_nanochat import NanoChatForCausalLM, NanoChatModel, NanoChatPreTrainedModel


class RlkitGPTConfig(NanoChatConfig):
    model_type = "rlkit_gpt"


class RlkitGPTModel(NanoChatModel):
    config_class = RlkitGPTConfig

    def __init__(self, config: RlkitGPTConfig):
        super().__init__(config)
        self.resid_lambdas = nn.Parameter(torch.ones(config.num_hidden_layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self._x0 = None  # the current forward's first-layer input, set by layer 0's hook
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(partial(self._mix_in_x0, i), with_kwargs=True)

    def _mix_in_x0(self, i: int, layer, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if i == 0:
            self._x0 = x
        x = self.resid_lambdas[i].to(x.dtype) * x + self.x0_lambdas[i].to(x.dtype) * self._x0
        if i == len(self.layers) - 1:
            self._x0 = None  # the forward is done with it: hold no activation between calls
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})


class RlkitGPTForCausalLM(NanoChatForCausalLM):
    config_class = RlkitGPTConfig

    def __init__(self, config: RlkitGPTConfig):
        NanoChatPreTrainedModel.__init__(self, config)  # NanoChatForCausalLM's own __init__ would build a NanoChatModel
        self.model = RlkitGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
