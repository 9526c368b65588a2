"""A small verifiers v1 taskset for tests/test_verifiers.py, importable by its id "vf_addition" (verifiers
loads a taskset as a module exporting its Taskset subclass in __all__): "What is a + b?" for 60 seeded
pairs, with two weighted reward signals, offline (no harness, no runtime)."""
import random

import verifiers.v1 as vf


class AdditionData(vf.TaskData):
    a: int
    b: int


class AdditionTask(vf.Task[AdditionData, vf.State, vf.TaskConfig]):
    @vf.reward
    async def correct(self, task, trace) -> float:
        """1.0 when the reply's last '####' (or the whole reply) is the sum."""
        return 1.0 if trace.last_reply.split("####")[-1].strip() == str(task.a + task.b) else 0.0

    @vf.reward(weight=0.5)
    async def replied(self, trace) -> float:
        """1.0 for a reply of at least one character, as the trace's messages show it."""
        return 1.0 if trace.messages and (trace.messages[-1].content or "").strip() else 0.0


class AdditionConfig(vf.TasksetConfig):
    count: int = 60
    seed: int = 0


class AdditionTaskset(vf.Taskset[AdditionTask, AdditionConfig]):
    def load(self):
        rng = random.Random(self.config.seed)
        for _ in range(self.config.count):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            yield AdditionTask(AdditionData(prompt=f"What is {a} + {b}?", a=a, b=b), self.config.task)


__all__ = ["AdditionTaskset"]
