"""The configuration of the built-in GPT (gpt_model.py), kept free of torch: `rlkit check` validates a model's
values and counts its parameters from it without importing torch or building a network."""
import math
from dataclasses import dataclass

from rlkit.core.errors import RlkitError


@dataclass
class GPTConfig:
    depth: int
    vocab_size: int
    seq_len: int
    head_dim: int = 64
    softcap: float = 15.0
    lambdas: bool = True  # the per-layer resid / x0 scalars; False: the plain pre-norm stack (exportable)

    def __post_init__(self):  # bounded, so a typo reaches no allocator: 10x seq_len rotary rows are real memory
        for name, high in (("depth", 512), ("vocab_size", 2**24), ("seq_len", 2**17), ("head_dim", 1024)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= high:
                raise RlkitError(f"model.{name}: got {value!r}; valid: a whole number from 1 to {high}")
        if self.head_dim % 2:
            raise RlkitError(f"model.head_dim: got {self.head_dim}; rotary embeddings need an even head_dim (e.g. 64)")
        if not 0 < self.softcap < float("inf"):
            raise RlkitError(f"model.softcap: got {self.softcap!r}; it must be a positive number (e.g. 15.0)")

    @property
    def n_layer(self) -> int:
        return self.depth

    @property
    def width(self) -> int:
        return math.ceil(self.depth * 64 / self.head_dim) * self.head_dim

    @property
    def n_head(self) -> int:
        return self.width // self.head_dim

    @property
    def padded_vocab(self) -> int:
        return math.ceil(self.vocab_size / 64) * 64

    def param_count(self) -> int:
        """GPT(self)'s parameters, counted from the shapes above (no torch): embedding and lm_head over the
        padded vocabulary, 4 attention and 2 MLP (4x wide) matrices a layer, and two lambdas a layer."""
        w, layers = self.width, self.n_layer
        return 2 * self.padded_vocab * w + layers * (4 * w * w + 2 * 4 * w * w) + (2 * layers if self.lambdas else 0)
