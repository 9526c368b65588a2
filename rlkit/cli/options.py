"""Command-line values shared by commands: `--arg key=value` pairs, each value read as a YAML scalar."""
from __future__ import annotations

from rlkit.core.errors import RlkitError


def key_values(pairs: list[str], flag: str) -> dict:
    """{key: value} of "key=value" strings; values parse as YAML scalars (3 -> int, 0.5 -> float, true -> bool,
    [2, 3] -> a list, anything else a string), as in an experiment's YAML."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise RlkitError(f"{flag} {pair!r}: give key=value, e.g. {flag} operands=3")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise RlkitError(f"{flag} {pair!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out
