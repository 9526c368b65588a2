"""Tiny Hugging Face models built offline for the tests: a byte-level BPE tokenizer trained with `tokenizers` on
the arithmetic task's text, with a ChatML chat template, and random LlamaConfig / Qwen2Config models saved with
save_pretrained. Nothing touches the hub."""
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# ChatML with Hermes/Qwen tool calls: a system turn listing the tools, an assistant's calls as
# <tool_call>\n{"name", "arguments"}\n</tool_call>, a tool's reply as a user turn holding <tool_response>
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{{ m.content }}{% for c in m.tool_calls %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{% elif m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n{% else %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOL_SPECIALS = ["<tool_call>", "</tool_call>"]


def hf_tokenizer(folder: Path, vocab_size: int = 400, chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlkit.core.plugins import load_plugins
    from rlkit.lib.text.task import example_text

    texts = [example_text(ex) for ex in load_plugins().tables["task"]["arithmetic"]("train", size=500)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tools = TOOL_SPECIALS if chat_template == TOOLS_TEMPLATE else []  # the tool template's markers, one token each
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                                         *tools],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    return tok


def hf_model(folder: Path, arch: str = "llama", seed: int = 0, chat_template: str | None = CHAT_TEMPLATE,
             vocab_extra: int = 0) -> Path:
    """folder/ with a tiny random causal LM of `arch` (llama | qwen2) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = hf_tokenizer(folder, chat_template=chat_template)
    kinds = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = kinds[arch]
    config = config_cls(vocab_size=len(tok) + vocab_extra, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(folder)
    return folder
