"""rlkit-brevity: a reward that prefers short completions, packaged as an installable plugin.

    rewards:
      - {name: gsm8k, weight: 1.0}
      - {name: brevity, weight: 0.1, args: {max_chars: 300}}
"""
import rlkit


@rlkit.hookimpl
def rlkit_rewards():
    return {"brevity": brevity}


def brevity(completion, example, max_chars=400):
    """1.0 for an empty completion, falling linearly to 0.0 at `max_chars` characters and beyond."""
    return max(0.0, 1.0 - len(completion) / max_chars)
