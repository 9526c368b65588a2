"""The eval stage's run (the config and its checks: eval.py): each task evaluated as it declares, ChatCORE over
the chat tasks that ran, and CORE when the config asks for it.
"""
from __future__ import annotations

from rlkit.lib.evaluation import corebench
from rlkit.core.context import StageContext
from rlkit.core.handoff import Checkpoint
from rlkit.core.session import load_model
from rlkit.core.dist import print0
from rlkit.core.errors import RlkitError
from rlkit.lib.evaluation.evalbundle import bundle
from rlkit.lib.evaluation.evaltask import headline
from rlkit.lib.evaluation.evaluate import run_task
from rlkit.plugins.stages.eval import EvalConfig, evals

CHAT_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")  # nanochat's ChatCORE set


def run(ctx: StageContext[EvalConfig], start: Checkpoint | None) -> Checkpoint:
    if start is None or start.path is None:
        raise RlkitError(f"stages.{ctx.name}: no model to evaluate (the entry before handed on none)")
    model, tokenizer, _ = load_model(ctx, start)
    step = start.meta.get("step", 0)
    found, centred = ctx.summary.setdefault("evals", {}), {}
    for i, spec in enumerate(evals(ctx.cfg)):
        task = ctx.task(spec, ctx.cfg.split, key=f"tasks[{i}]")
        result = run_task(ctx.runtime, model, tokenizer, task, spec, examples=spec.examples, seed=ctx.seed(),
                          timeout=ctx.cfg.reward_timeout)
        figures = headline(result)
        print0(f"[{ctx.name}] {result['title']}: " + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()) +
               f" | {min(spec.examples, len(task))} problems" +
               (f", T={spec.temperature:g}" if result["kind"] == "generative" else f", {spec.mode}"))
        ctx.tracker.metrics(figures, step=step, stage=ctx.name, task=spec.name)
        found.setdefault(result["title"], {}).update(figures)
        centred[result["title"]] = result["centred"]  # ChatCORE averages it, every kind
    if ctx.cfg.core is not None:
        run_core(ctx, model, tokenizer, step, found)
    chat = [centred[t] for t in CHAT_TASKS if t in centred]
    if chat:
        found["ChatCORE"] = {"score": sum(chat) / len(chat), "tasks": len(chat)}
        ctx.tracker.metrics({"ChatCORE": found["ChatCORE"]["score"]}, step=step, stage=ctx.name)
        print0(f"[{ctx.name}] ChatCORE {found['ChatCORE']['score']:.4f} (mean centred accuracy of {len(chat)} of "
               f"{len(CHAT_TASKS)} chat tasks)")
    return start


def run_core(ctx, model, tokenizer, step: int, found: dict) -> None:
    """CORE over the eval bundle's tasks: each task's accuracy and centred accuracy, and their mean."""
    path = ctx.cfg.core.path
    folder = bundle(None if path is None else str(ctx.base_dir / path))
    result = corebench.evaluate_core(ctx.runtime, model, tokenizer, folder, ctx.cfg.core.max_per_task)
    for label, figures in result["tasks"].items():
        print0(f"[{ctx.name}] CORE {label}: accuracy {figures['accuracy']:.4f} | centred {figures['centred']:.4f}")
        ctx.tracker.metrics(figures, step=step, stage=ctx.name, task=f"core/{label}")
    print0(f"[{ctx.name}] CORE {result['core']:.4f} (mean centred accuracy of {len(result['tasks'])} tasks)")
    ctx.tracker.metrics({"CORE": result["core"]}, step=step, stage=ctx.name)
    found["CORE"] = {"score": result["core"], "tasks": len(result["tasks"])}
    ctx.summary["core_tasks"] = result["tasks"]
