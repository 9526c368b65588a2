"""Talking to a saved model: open any checkpoint for inference, and turn streamed tokens into text.

load(path) takes what `init:` takes (a step folder, a stage folder, or a run folder: its last finished
stage), rebuilds the model through its model plugin from the checkpoint's spec (rlkit.core.policy.load),
loads the weights (hashes checked) and returns (model in eval mode, tokenizer, the Checkpoint handle).
The sequence length is the one the checkpoint records, else the run's config.yaml beside it
(`model.seq_len`), else `seq_len`.

TextStream turns a completion's tokens into text as they arrive: it holds back a trailing incomplete
UTF-8 character (byte-level BPE splits characters across tokens) and any tail that could be the start
of a stop string, and ends the text before the first stop string, as the OpenAI API's `stop` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlkit.core import policy
from rlkit.core.handoff import Checkpoint


def load(path, device: str | torch.device = "cpu", seq_len: int = 512, plugins=None):
    """(model, tokenizer, handle) for the checkpoint at `path`; see the module docstring."""
    from rlkit.core.plugins import load_plugins

    where = str(path)
    handle = Checkpoint.open(path, where)
    recorded = (handle.model or {}).get("seq_len") or (_run_seq_len(handle.path) if handle.path else None)
    model, tokenizer = policy.load(plugins or load_plugins([]), handle, recorded or seq_len, where, device)
    return model.eval(), tokenizer, handle


def load_with_tools(path, device, tools: list[str], plugin_files=()):
    """load() with the plugins of `plugin_files` too, and a Toolbox of the tool plugins named (--tool; None if
    none are named): (model, tokenizer, handle, toolbox)."""
    from rlkit.core.plugins import load_plugins
    from rlkit.lib.generation.tools import toolbox

    found = load_plugins(plugin_files)
    model, tokenizer, handle = load(path, device, plugins=found)
    return model, tokenizer, handle, toolbox(found, [{"name": name} for name in tools], tokenizer, "--tool")


def _run_seq_len(step_dir: Path) -> int | None:
    """model.seq_len from the config.yaml of the run that wrote `step_dir` (run/entry/step_x), if any."""
    import yaml

    for folder in (step_dir.parent.parent, step_dir.parent):
        try:
            value = yaml.safe_load((folder / "config.yaml").read_text())["model"]["seq_len"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


class TextStream:
    """The text of one completion, fed token by token; see the module docstring."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters already handed out
        self.text = ""  # all of them
        self.stopped = False  # a stop string was found: the text is final

    def feed(self, ids: Sequence[int]) -> str:
        """Add tokens (stop tokens left out) -> the new text that is now certain ("" while held back)."""
        if self.stopped:
            return ""
        self.ids += ids
        text = self.tokenizer.decode(self.ids)
        hits = [j for j in (text.find(s) for s in self.stop) if j >= 0]
        if hits:
            self.stopped = True
            return self._take(text[:min(hits)])
        safe = len(text.rstrip("\ufffd"))  # an incomplete character decodes as U+FFFD until its last byte
        held = max((k for s in self.stop for k in range(1, len(s)) if text[:safe].endswith(s[:k])), default=0)
        return self._take(text[:safe - held])

    def finish(self) -> str:
        """The rest of the text once the completion has ended."""
        return "" if self.stopped else self._take(self.tokenizer.decode(self.ids))

    def _take(self, text: str) -> str:
        new = text[self.sent:]
        self.sent = max(self.sent, len(text))
        self.text += new
        return new
