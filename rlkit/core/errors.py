"""The one exception a user sees: RlkitError, printed by the CLI as a single line."""


class RlkitError(Exception):
    """A user's mistake (bad config, bad plugin, bad data) with a message that says what would be valid."""


def first_line(e: BaseException) -> str:
    """An exception's first line of text (its type's name when it has none): what one-line errors quote."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
