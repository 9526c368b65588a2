"""rlkit's own tokenizer (rlkit.lib.text.tokenizer: tiktoken ranks, split pattern, specials) as a Hugging Face
PreTrainedTokenizerFast for `rlkit export`: transformers' TikTokenConverter turns the ranks into a byte-level BPE
with the same merges and pre-tokenizer regex, the specials keep their ids, and rlkit's chat format is its chat
template, so AutoTokenizer encodes text and renders chats to the same ids as rlkit. One difference: typed in a
message, "<|bos|>" and the other special strings are special tokens to transformers but plain text to rlkit.
"""
from __future__ import annotations

# rlkit's chat format (rlkit.lib.text.tokenizer.render_conversation: a leading system message is folded into the
# next turn) for apply_chat_template
CHAT_TEMPLATE = (
    "{% set ns = namespace(prefix='') %}<|bos|>{% for m in messages %}"
    "{% if loop.first and m['role'] == 'system' and messages|length > 1 %}{% set ns.prefix = m['content'] + '\\n\\n' %}"
    "{% elif m['role'] == 'assistant' %}<|assistant_start|>{{ ns.prefix + m['content'] }}<|assistant_end|>"
    "{% set ns.prefix = '' %}{% else %}<|user_start|>{{ ns.prefix + m['content'] }}<|user_end|>{% set ns.prefix = '' %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}")


def hf_tokenizer(tokenizer):
    """rlkit's tiktoken BPE as a PreTrainedTokenizerFast (transformers' TikTokenConverter: the same ranks, merges
    and split pattern), its specials at their ids, and the chat template above."""
    import base64
    import tempfile
    from pathlib import Path

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = tokenizer.enc
    with tempfile.TemporaryDirectory() as tmp:
        ranks = str(Path(tmp) / "ranks.tiktoken")  # tiktoken's file format: "base64(token bytes) rank" lines
        Path(ranks).write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                                       for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1])))
        specials = sorted(enc._special_tokens, key=enc._special_tokens.get)  # in id order: appended after the ranks
        fast = TikTokenConverter(vocab_file=ranks, pattern=enc._pat_str, extra_special_tokens=specials).converted()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=fast, bos_token="<|bos|>", eos_token="<|assistant_end|>",
                                      pad_token="<|assistant_end|>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
