"""A Hugging Face tokenizer behind rlkit's tokenizer interface, with the model's own chat template.

- render_for_completion(messages): `apply_chat_template(messages, add_generation_prompt=True)`, the ids a
  reply is sampled after;
- render_conversation(messages): the whole chat, and a loss mask that is 1 on every assistant turn's
  tokens, its end-of-turn token included: the template is rendered up to each assistant turn (with the
  generation prompt) and through it, and the difference is that turn (the template must render a chat's
  prefix as a prefix of the chat, as chat templates do);
- stop_ids: the tokenizer's EOS and the model's generation EOS ids (an end-of-turn token such as
  <|im_end|>), where a reply ends;
- tool_tokens: for a template that declares tools and renders Hermes/Qwen calls (<tool_call> and </tool_call>
  single tokens of the vocabulary), the engine's ToolTokens (rlkit.lib.text.tokenizer): the calls' JSON between
  those two, and the output wrapper taken from the template itself: it renders [user, an assistant's call,
  a tool message "<OUT>"] with the generation prompt, and what comes after </tool_call> up to <OUT> is
  forced before a tool's output, what follows <OUT> after it (Qwen: end of turn, a user turn holding
  <tool_response>...</tool_response>, then the assistant's generation prompt); else None.
Tasks and rewards never see token ids, so they work unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rlkit.core.errors import RlkitError
from rlkit.core.policy import ToolTokens

TOOL_SCHEMA = {"type": "function", "function": {"name": "f", "description": "a tool", "parameters": {
    "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}


class HFTokenizer:
    def __init__(self, tok, eos_ids: Iterable[int] = (), source: str = ""):
        self.tok, self.source = tok, source
        if not getattr(tok, "chat_template", None):
            raise RlkitError(f"the tokenizer at {source} has no chat template; give one that has, or train the model "
                             "with rlkit's tokenizer (a tokenizer stage)")
        ends = [tok.eos_token_id, *eos_ids]
        self.stop_ids = sorted({int(i) for i in ends if i is not None})
        if not self.stop_ids:
            raise RlkitError(f"the tokenizer at {source} has no EOS token and the model names none: replies could not end")
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else self.stop_ids[0]  # documents' separator

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 4) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self):
        """UTF-8 bytes of each token decoded alone (special tokens 0): for bits per byte, approximate where a
        token holds part of a character."""
        import torch

        special = set(self.tok.all_special_ids)
        return torch.tensor([0 if i in special else len(self.tok.decode([i]).encode()) for i in range(self.vocab_size)])

    @property
    def tool_tokens(self) -> ToolTokens | None:
        """See the module docstring."""
        vocab = self.tok.get_vocab()
        if "tools" not in str(self.tok.chat_template) or not {"<tool_call>", "</tool_call>"} <= set(vocab):
            return None
        call = {"type": "function", "function": {"name": "f", "arguments": {"x": "1"}}}
        chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "f", "content": "<OUT>"}]
        try:
            text = self.tok.apply_chat_template(chat, tools=[TOOL_SCHEMA], add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 -- a template that cannot render tool turns has no tool format
            return None
        end = text.find("</tool_call>")
        if end < 0 or "<OUT>" not in text[end:]:
            return None
        before, after = text[end + len("</tool_call>"):].split("<OUT>", 1)
        return ToolTokens(vocab["<tool_call>"], vocab["</tool_call>"], tuple(self.encode(before)),
                          tuple(self.encode(after)), json_calls=True)

    def render_for_completion(self, messages: Sequence[Mapping]) -> list[int]:
        messages = list(messages)
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        return self._ids(messages, generation_prompt=True)

    def render_conversation(self, messages: Sequence[Mapping], max_len: int | None = None):
        messages = list(messages)
        ids = self._ids(messages, generation_prompt=False)
        mask = [0] * len(ids)
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = self._ids(messages[:i], generation_prompt=True)
            through = self._ids(messages[:i + 1], generation_prompt=False)
            if ids[:len(through)] != through or through[:len(before)] != before:
                raise RlkitError(f"the chat template of {self.source} does not render a chat's beginning as a prefix "
                                 "of the chat, so the assistant's tokens cannot be found for the loss mask")
            mask[len(before):len(through)] = [1] * (len(through) - len(before))
        if max_len is not None:
            ids, mask = ids[:max_len], mask[:max_len]
        return ids, mask

    def _ids(self, messages, generation_prompt: bool) -> list[int]:
        if not messages:
            return []
        try:
            return list(self.tok.apply_chat_template([dict(m) for m in messages],
                                                     add_generation_prompt=generation_prompt, tokenize=True,
                                                     return_dict=False))
        except Exception as e:  # noqa: BLE001 -- a template's raise_exception(...) or a Jinja error: the template's
            roles = ", ".join(str(m.get("role")) for m in messages)  # verdict on these messages, in one line
            raise RlkitError(f"the chat template of {self.source} refused a chat with roles [{roles}]: "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:300]}; give messages it accepts (many "
                             "templates want user and assistant alternating, some no system message)") from None
