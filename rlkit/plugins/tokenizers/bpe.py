"""Tokenizer plugin `bpe`: reads the byte-level BPE tokenizer folders that the tokenizer stage writes
(rlkit.lib.text.tokenizer: tokenizer.tiktoken + tokenizer.json, no pickle)."""
import rlkit
from rlkit.lib.text.tokenizer import KIND, Tokenizer


@rlkit.hookimpl
def rlkit_tokenizers():
    return {KIND: Tokenizer.load}
