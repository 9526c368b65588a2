"""The one exception a user sees: RlkitError, printed by the CLI as a single line."""


class RlkitError(Exception):
    """A user's mistake (bad config, bad plugin, bad data) with a message that says what would be valid."""
