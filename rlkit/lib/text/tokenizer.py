"""Byte-level BPE tokenizer: trained with rustbpe, run with tiktoken, rendering chats with loss masks.

Training (`train_tokenizer`): rustbpe splits the text with a regex (SPLIT_PATTERN), then greedily merges
the most frequent adjacent pair of tokens, starting from the 256 single bytes, until the vocabulary is
full. Its merges ("mergeable ranks": token bytes -> rank) plus the special tokens become a
`tiktoken.Encoding`, which does the fast encoding from then on. Every byte is a token, so any text
round-trips exactly.

Split pattern: GPT-4's, except numbers split into single digits (`\\p{N}` where GPT-4 has `\\p{N}{1,3}`
and nanochat `\\p{N}{1,2}`). rlkit's embedded task is arithmetic: with single digits "19" is always
"1" "9", so a small model sees the same place-value units in every number and learns ten digits'
facts instead of a hundred two-digit tokens' (with `{1,2}` "123" is "12" "3" but "23" is one token).
The cost is longer number spans, which is small at these sequence lengths. Pass `pattern=` to change it.

Specials come after the merges: ids vocab_size - len(SPECIALS) .. vocab_size - 1. User text can never
produce them (`encode` is tiktoken's encode_ordinary), so "<|bos|>" typed by a user is plain text.

Chat format (`render_conversation`):
    <|bos|> <|user_start|> question <|user_end|> <|assistant_start|> solution <|assistant_end|> ...
the loss mask is 1 on the assistant's content tokens and its <|assistant_end|> (the model must learn to
stop), 0 elsewhere, including <|assistant_start|> (it is given, not predicted).

Saved without pickle: `tokenizer.tiktoken` (one "base64(token bytes) rank" line per merge, tiktoken's
own format) and `tokenizer.json` (its kind for rlkit.core.policy.load_tokenizer, split pattern and special
tokens with their ids). The `bpe` tokenizer plugin (rlkit/plugins/tokenizers/bpe.py) loads such a folder.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import tiktoken

from rlkit.core.errors import RlkitError
from rlkit.core.files import atomic_write, sha256
from rlkit.core.policy import ToolTokens  # noqa: F401 -- re-exported: the contract lives in core



SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Append here (never reorder) to add special tokens.
SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>"]
TOOL_SPECIALS = ["<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]  # nanochat's, opt-in
KIND = "bpe"  # what tokenizer.json says loads this folder: the tokenizer plugin of that name
MIN_VOCAB_SIZE = 256 + len(SPECIALS) + 1  # bytes + specials + at least one merge
RANKS_FILE, META_FILE = "tokenizer.tiktoken", "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN,
                    tools: bool = False) -> "Tokenizer":
    """Train a BPE of `vocab_size` tokens (specials included) on `texts`; tools: TOOL_SPECIALS too.

    The result can be smaller than asked when the text runs out of pairs to merge; read
    `.vocab_size` from the result, never from the config.
    """
    import rustbpe

    names = SPECIALS + (TOOL_SPECIALS if tools else [])
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE + len(names) - len(SPECIALS):
        raise RlkitError(
            f"stages.tokenizer.vocab_size: {vocab_size!r} is too small; it must be an integer of at least "
            f"{MIN_VOCAB_SIZE + len(names) - len(SPECIALS)} (256 byte tokens + {len(names)} special tokens + 1 merge)"
        )
    n_docs = 0

    def counted():
        nonlocal n_docs
        for text in texts:
            n_docs += 1
            yield text

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(counted(), vocab_size - len(names), pattern=pattern)
    if n_docs == 0:
        raise RlkitError("stages.tokenizer.data: the training text is empty; point data.source at some text")
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    return Tokenizer(ranks, bpe.get_pattern(), {name: len(ranks) + i for i, name in enumerate(names)})


class Tokenizer:
    """A tiktoken Encoding plus rlkit's special tokens and chat rendering.

    ranks: token bytes -> id for the byte tokens and merges (ids 0 .. len(ranks) - 1);
    specials: special token string -> id, by default SPECIALS numbered after the ranks. A tokenizer trained
    with tools=True also has TOOL_SPECIALS, after SPECIALS (so theirs keep their ids), and reports them as
    `tool_tokens`; one saved without them (any older checkpoint) loads as before, with tool_tokens None.
    """

    def __init__(self, ranks: dict[bytes, int], pattern: str, specials: dict[str, int] | None = None):
        self.ranks, self.pattern = ranks, pattern
        self.specials = specials or {name: len(ranks) + i for i, name in enumerate(SPECIALS)}
        self.enc = tiktoken.Encoding(name="rlkit", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.specials)
        self.bos_id = self.token_id("<|bos|>")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a sampled assistant reply: <|assistant_end|>, and <|bos|> (a new document)."""
        return [self.token_id("<|assistant_end|>"), self.bos_id]

    @property
    def tool_tokens(self) -> ToolTokens | None:
        """nanochat's format: <|python_start|> call <|python_end|> <|output_start|> output <|output_end|>."""
        if not all(name in self.specials for name in TOOL_SPECIALS):
            return None
        start, end, out, out_end = (self.specials[name] for name in TOOL_SPECIALS)
        return ToolTokens(start, end, (out,), (out_end,))

    def token_id(self, name: str) -> int:
        """Id of a special token, given as "<|user_start|>" or "user_start"."""
        full = name if name.startswith("<|") else f"<|{name}|>"
        if full not in self.specials:
            raise RlkitError(f"tokenizer: no special token {name!r}; known: {', '.join(self.specials)}")
        return self.specials[full]

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text; special-token strings inside it stay ordinary text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 4) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self):
        """LongTensor[vocab_size]: UTF-8 bytes each token stands for, 0 for specials (for bits per byte)."""
        import torch

        sizes = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, rank in self.ranks.items():
            sizes[rank] = len(token)
        return sizes

    # --- chat rendering -------------------------------------------------------------------------

    def render_conversation(self, messages: Sequence[Mapping], max_len: int | None = None):
        """(ids, mask): the chat as token ids, and 1 where the model is trained (assistant content + end)."""
        ids, mask = [self.bos_id], [0]
        for role, content in _turns(messages):
            start, end = self.token_id(f"{role}_start"), self.token_id(f"{role}_end")
            body, train = self._body(content), int(role == "assistant")
            ids += [start, *(t for t, _ in body), end]
            mask += [0] + [train * m for _, m in body] + [train]
        if max_len is not None:
            ids, mask = ids[:max_len], mask[:max_len]
        return ids, mask

    def _body(self, content) -> list[tuple[int, int]]:
        """(token, trained) pairs of a turn's content: a string, or an assistant message's `parts` (nanochat's
        [{"type": "text" | "python" | "python_output", "text": str}], beside its plain `content`): a call is
        <|python_start|> text <|python_end|>, trained; a tool's output is <|output_start|> text
        <|output_end|>, never trained (the engine forces it at sampling)."""
        if isinstance(content, str):
            return [(t, 1) for t in self.encode(content)]
        out = []
        for part in content:
            kind, text = part["type"], self.encode(part["text"])
            if kind == "text":
                out += [(t, 1) for t in text]
            else:
                start, end = ("python_start", "python_end") if kind == "python" else ("output_start", "output_end")
                out += [(t, int(kind == "python")) for t in [self.token_id(start), *text, self.token_id(end)]]
        return out

    def render_for_completion(self, messages: Sequence[Mapping]) -> list[int]:
        """Prompt ids for sampling: the chat minus its last assistant turn, ending in <|assistant_start|>."""
        messages = list(messages)
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation(messages)
        return ids + [self.token_id("assistant_start")]

    # --- save / load ----------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Both files atomically, the merges first; tokenizer.json, written last, records their sha256."""
        directory = Path(directory)
        ranks = sorted(self.ranks.items(), key=lambda kv: kv[1])
        lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in ranks]
        atomic_write(directory / RANKS_FILE, "".join(lines))
        meta = {"kind": KIND, "pattern": self.pattern, "special_tokens": self.specials, "ranks_sha256": sha256(directory / RANKS_FILE)}
        atomic_write(directory / META_FILE, json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        directory = Path(directory)
        for name in (RANKS_FILE, META_FILE):
            if not (directory / name).is_file():
                raise RlkitError(f"tokenizer: {directory / name} not found; run the tokenizer stage first")
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta.get("ranks_sha256", sha256(directory / RANKS_FILE)) != sha256(directory / RANKS_FILE):
                raise ValueError(f"{RANKS_FILE} does not match the sha256 recorded in {META_FILE}")
            ranks = {}
            for line in (directory / RANKS_FILE).read_text().splitlines():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            return cls(ranks, meta["pattern"], meta["special_tokens"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise RlkitError(f"tokenizer: {directory} is damaged ({type(e).__name__}: {str(e)[:120]}); rerun its "
                             "tokenizer stage (delete that folder and --resume) or restore it") from None


def _turns(messages: Sequence[Mapping]):
    """(role, content) pairs, an assistant's `parts` in place of its content when it has them; a leading system
    message is folded into the first user turn."""
    messages = list(messages)
    if messages and messages[0].get("role") == "system" and len(messages) > 1:
        system, first = messages[0], messages[1]
        messages = [{"role": first["role"], "content": system["content"] + "\n\n" + first["content"]}, *messages[2:]]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise RlkitError(
                f"chat message {i}: expected {{'role': 'user' | 'assistant', 'content': str}}, "
                f"got {dict(message)!r:.120}"
            )
        parts = message.get("parts")
        if parts is not None and not (role == "assistant" and _parts(parts)):
            raise RlkitError(f"chat message {i}: 'parts' must be an assistant's list of {{'type': 'text' | 'python' | "
                             f"'python_output', 'text': str}}, got {parts!r:.120}")
        yield role, content if parts is None else parts


def _parts(content) -> bool:
    return isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") in ("text", "python", "python_output") and isinstance(p.get("text"), str)
        for p in content)
