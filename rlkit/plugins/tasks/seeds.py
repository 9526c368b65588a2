"""seeds: numbered rows for environments that make their own problems (guess_number, textarena games).

    task: {name: seeds, args: {size: 1000}}

Example i of a split is {"messages": [{"role": "user", "content": "episode <i>"}], "seed": i}: an env ignores the
message and may read the seed. Train rows are 0..size-1, test rows start at 1_000_000, so the two never share one.
"""
import rlkit
from rlkit.lib.text.task import Task

TEST_OFFSET = 1_000_000


def seeds(split: str, size: int = 1000, test_size: int = 100) -> Task:
    first, n = (0, size) if split == "train" else (TEST_OFFSET, test_size)
    rows = [{"messages": [{"role": "user", "content": f"episode {i}"}], "seed": i} for i in range(first, first + n)]
    return Task(rows, "seeds")


@rlkit.hookimpl
def rlkit_tasks():
    return {"seeds": seeds}
