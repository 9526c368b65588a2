"""A reward plugin, written as a user would: one file, named under `plugins:` in the YAML.

`format_bonus` pays a small bonus when the completion ends with a clean final-answer line
('#### <number>'), the format the gsm8k reward reads. Combined with gsm8k in
custom_reward.yaml, the total reward is 1.0 * gsm8k + 1.0 * format_bonus.
"""
import re

import rlkit

FINAL_LINE = re.compile(r"####\s*-?[\d,]+(\.\d+)?\s*$")


@rlkit.hookimpl
def rlkit_rewards():
    return {"format_bonus": format_bonus}


def format_bonus(completion, example, bonus=0.1):
    """`bonus` if the last line is '#### N', else 0."""
    return bonus if FINAL_LINE.search(completion.strip()) else 0.0
