"""reasoning_gym_curriculum: a reasoning-gym generator whose difficulty rises as the rl stage's reward does.

    task: {name: reasoning_gym_curriculum, args: {name: basic_arithmetic, threshold: 0.7, patience: 2}}
    rewards: [{name: reasoning_gym}]                    # pip install -e '.[envs]'

Levels are reasoning-gym's own curriculum for the generator (reasoning_gym.factory.create_curriculum):
level L sets every attribute to its L-th value (set_global_level), e.g. basic_arithmetic's terms 2..6 and
digits 1..4, from `start` up to `max_level` (default: the curriculum's top). Other args are the generator's
config (attributes the curriculum sets win), `size`, `seed` and `instruction`, as in the reasoning_gym task.

Train: `size` problems of the current level (each level its own draws; the rl stage's shuffled order
over indices stays the same). After each rl step the task sees the step's tracked figures (Task.observe):
when `metric` (default "reward", the step's mean reward: for a 0/1 reward, the mean pass@1 of its groups)
reaches `threshold` for `patience` steps in a row, the next step draws from the next level. Tracked:
curriculum/level (the level the step was drawn from) and curriculum/metric. The level and the streak are
saved in the rl checkpoint (state_dict), so a resumed run draws what the unbroken run would have.

Test: a fixed mix, problem i from level start + i mod (levels), so held-out accuracy before and after
covers every level the curriculum can reach. Train and test never share a question (the reasoning_gym
task's hash partition holds across levels). Prompts grow with the level: give model.seq_len room for the
top level's (the rl stage checks the first level's only), or cap it with `max_level`.
"""
from __future__ import annotations

import dataclasses

import rlkit
from rlkit.core.errors import RlkitError
from rlkit.lib.text.task import Task
from rlkit.plugins.tasks.reasoninggym import DEFAULT_SIZE, check_config, problems, require


@rlkit.hookimpl
def rlkit_tasks():
    return {"reasoning_gym_curriculum": reasoning_gym_curriculum}


@dataclasses.dataclass
class Levels:
    """What draws a level's problems: the generator, its config per level, and the task's own args."""
    name: str
    configs: list[dict]  # level (0 .. max_level) -> the generator's config at that level
    size: int
    seed: int
    instruction: str | None

    def problems(self, split: str, level: int, size: int) -> list[dict]:
        return problems(self.name, self.configs[level], split, size, self.seed, self.instruction, f"level{level}")


class Curriculum(Task):
    """The train split: the current level's problems; observe() moves up a level (module docstring)."""

    def __init__(self, levels: Levels, start: int, threshold: float, patience: int, metric: str):
        self.levels, self.start, self.threshold, self.patience, self.metric = levels, start, threshold, patience, metric
        self.cache: dict[int, list[dict]] = {}
        super().__init__(self._examples(start), f"reasoning_gym_curriculum-{levels.name}-train",
                         reward="reasoning_gym", title=f"reasoning-gym {levels.name} (curriculum)")
        self.level, self.streak = start, 0

    def observe(self, step: int, stats) -> dict:
        if self.metric not in stats:
            raise RlkitError(f"reasoning_gym_curriculum: metric {self.metric!r} is not among the step's figures "
                             f"({', '.join(sorted(stats))})")
        value = float(stats[self.metric])
        tracked = {"curriculum/level": float(self.level), "curriculum/metric": value}
        self.streak = self.streak + 1 if value >= self.threshold else 0
        if self.streak >= self.patience and self.level + 1 < len(self.levels.configs):
            self.load_state_dict({"level": self.level + 1, "streak": 0})
        return tracked

    def state_dict(self) -> dict:
        return {"level": self.level, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.streak = int(state["level"]), int(state["streak"])
        self.examples = self._examples(self.level)

    def _examples(self, level: int) -> list[dict]:
        if level not in self.cache:
            self.cache[level] = self.levels.problems("train", level, self.levels.size)
        return self.cache[level]


def reasoning_gym_curriculum(split: str, name: str, threshold: float = 0.7, patience: int = 2, start: int = 0,
                             max_level: int | None = None, metric: str = "reward", size: int | None = None,
                             seed: int = 0, instruction: str | None = None, **config) -> Task:
    """The train split adapts (Curriculum); the test split mixes every level (module docstring)."""
    if split not in DEFAULT_SIZE:
        raise RlkitError(f"reasoning_gym_curriculum: split must be 'train' or 'test', got {split!r}")
    for key, value, ok in [("threshold", threshold, isinstance(threshold, (int, float))),
                           ("patience", patience, isinstance(patience, int) and patience >= 1),
                           ("size", size, size is None or isinstance(size, int) and size >= 1)]:
        if not ok:
            raise RlkitError(f"reasoning_gym_curriculum: {key} must be {'a number' if key == 'threshold' else 'an int >= 1'}, "
                             f"got {value!r}")
    size = DEFAULT_SIZE[split] if size is None else size
    levels = Levels(name, level_configs(name, check_config(name, config), start, max_level), size, seed, instruction)
    if split == "train":
        return Curriculum(levels, start, threshold, patience, metric)
    n = len(levels.configs) - start
    per_level = [levels.problems("test", start + level, -(-size // n)) for level in range(n)]
    examples = [per_level[i % n][i // n] for i in range(size)]
    return Task(examples, f"reasoning_gym_curriculum-{name}-test", reward="reasoning_gym",
                title=f"reasoning-gym {name} (curriculum)")


def level_configs(name: str, config: dict, start: int, max_level: int | None) -> list[dict]:
    """The generator's config at each level from 0 to `max_level` (checked: 0 <= start <= max_level <= top)."""
    factory = require().factory
    if not factory.has_curriculum(name):
        raise RlkitError(f"reasoning_gym_curriculum: generator {name!r} has no curriculum in reasoning-gym; use the "
                         f"reasoning_gym task with a fixed config")
    curriculum = factory.create_curriculum(name)
    top = max(len(attr.levels) for attr in curriculum.attributes.values()) - 1
    last = top if max_level is None else max_level
    if not (isinstance(start, int) and isinstance(last, int) and 0 <= start <= last <= top):
        raise RlkitError(f"reasoning_gym_curriculum: need 0 <= start <= max_level <= {top} ({name}'s top level), "
                         f"got start={start!r}, max_level={max_level!r}")
    configs = []
    for level in range(last + 1):
        curriculum.set_global_level(level)
        made = dataclasses.asdict(curriculum.generate_configuration(defaults=config))
        configs.append({k: v for k, v in made.items() if k not in ("seed", "size")})
    return configs
