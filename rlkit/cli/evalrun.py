"""`rlkit eval CHECKPOINT_OR_RUN --task NAME[:k] [--arg key=value]`: evaluate a saved checkpoint with the code eval stages use.

    rows = evaluate_checkpoint("runs/quickstart", ["<task>"])     # [{task, title, kind, figures...}]

The target is what `init:` may name (a step, entry or run folder; rlkit.core.handoff). When it lies in
a run folder (its config.yaml is found there or above), the run's plugins, model section, device and
dtype are used, and for a task the run evaluated, the settings of the entry whose folder was named
if it evaluated the task, else of the last entry that did
(each stage's `evals(cfg)`: k, temperature, top-k, max_new_tokens, reward, examples) and that
entry's seed, so the figures repeat the run's exactly. `NAME:1` is greedy; `NAME:k` with k > 1
samples k a problem (at the entry's temperature, T=1 when it was greedy); `examples` overrides the
problem count. A task the run never evaluated, or a
checkpoint outside a run: greedy, or with `:k`, k samples at T=1, top-k 50, seed 0. `--arg key=value`
gives every task an argument (a YAML scalar), over the run's own: `--arg path=data/gsm8k` offline, say;
`--tool NAME` lets completions call a tool; `--env NAME [--max-turns N]` makes each problem an episode in
that env, rewarded by it (Overrides).
Under torchrun each rank takes a slice of the problems, as in an eval stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlkit.core.errors import RlkitError
from rlkit.core.config import PluginRef
from rlkit.lib.evaluation.evaltask import MAX_K, TOOL_FIGURES, EvalTask, headline
from rlkit.lib.evaluation.evaluate import run_task
from rlkit.core.handoff import Checkpoint

DEFAULT_EXAMPLES = 500


@dataclass(frozen=True)
class Overrides:
    """What the command line sets on every task, over the run's own settings for it."""
    task_args: dict = field(default_factory=dict)  # --arg key=value, e.g. a local `path:`
    tools: tuple[str, ...] = ()  # --tool: the tools completions may call, in place of the entry's own
    env: str | None = None  # --env: each problem is an episode in this env, rewarded by it
    max_turns: int | None = None  # --max-turns: the model's turns an episode takes at most

    def apply(self, spec: EvalTask, plugins) -> EvalTask:
        spec = replace(spec, args={**spec.args, **self.task_args})
        if self.tools:
            spec = replace(spec, tools=[PluginRef(name=t) for t in self.tools])
        if self.env is not None:
            plugins.get("env", self.env, "--env")
            spec = replace(spec, env=PluginRef(name=self.env))
        return spec if self.max_turns is None else replace(spec, max_turns=self.max_turns)


def evaluate_checkpoint(target: str | Path, tasks: list[str], examples: int | None = None,
                        extra_plugins: list[Path] = (), overrides: Overrides = Overrides()) -> list[dict]:
    """One row per --task: {task, title, kind, entry (whose settings), seed, settings, figures}, each task with
    the command line's `overrides` (--arg, --tool, --env, --max-turns) over the run's settings for it."""
    import torch

    from rlkit.core import dist, policy
    from rlkit.core.context import entry_seed
    from rlkit.core.plugins import load_plugins
    from rlkit.core.runtime import Runtime
    from rlkit.core.track import Tracker
    from rlkit.lib.training import hostmem

    if not tasks:
        raise RlkitError("rlkit eval: give at least one --task NAME[:k] (e.g. --task arithmetic:8)")
    start = Checkpoint.open(target, "rlkit eval")
    if start.path is None:
        raise RlkitError(f"rlkit eval: {target} holds a tokenizer but no model to evaluate")
    run_dir, cfg = find_run(start.path)
    base = Path(cfg.get("base_dir") or ".")
    plugins = load_plugins([base / p for p in cfg.get("plugins") or []] + list(extra_plugins))
    known = run_settings(cfg, plugins, _entry_named(Path(target), run_dir)) if run_dir is not None else {}
    hostmem.on_cpu(str(cfg.get("device") or "auto"))  # as `rlkit run` does (rlkit.lib.training.hostmem)
    info, device = dist.init(str(cfg.get("device") or "auto"))
    try:
        dtype = dist.compute_dtype(str(cfg.model.get("dtype") or "auto"), device)
        rows, loaded = [], None
        specs = [found for item in tasks for found in _specs(item, known, examples, plugins)]
        for spec, index, entry in [(overrides.apply(s, plugins), i, e) for s, i, e in specs]:
            seed = entry_seed(cfg.seed, index) if entry is not None else 0
            rt = Runtime("rlkit-eval", device, dtype, info, Tracker(), plugins, seed)
            if loaded is None:
                loaded = policy.load(plugins, start, cfg.model.get("seq_len"), "rlkit eval", device)
            model, tokenizer = loaded
            task = load_task(plugins, spec)
            with torch.no_grad():
                result = run_task(rt, model, tokenizer, task, spec, examples=spec.examples, seed=seed)
            rows.append({"task": spec.name, "title": result["title"], "kind": result["kind"], "entry": entry,
                         "seed": seed, "problems": min(spec.examples, len(task)),
                         "settings": {"k": spec.k, "temperature": spec.temperature, "top_k": spec.top_k,
                                      "max_new_tokens": spec.max_new_tokens, "reward": spec.reward,
                                      "mode": spec.mode, "args": dict(spec.args),
                                      "tools": [t.name for t in spec.tools],
                                      "env": None if spec.env is None else {"name": spec.env.name,
                                                                            "args": dict(spec.env.args)}},
                         "figures": _figures(result)})
        return rows
    finally:
        dist.shutdown()


def load_task(plugins, spec: EvalTask):
    """The task's test examples, checked as a stage checks them."""
    from rlkit.core.plugins import call_plugin, check_examples

    fn = plugins.get("task", spec.name, f"--task {spec.name}")
    task = call_plugin(f"rlkit eval: task {spec.name}", spec.name, fn, "test", **spec.args)
    if len(task) == 0:
        raise RlkitError(f"rlkit eval: task {spec.name}: task '{spec.name}' has no test examples")
    check_examples(task, f"rlkit eval: task {spec.name}: task '{spec.name}' (test)")
    return task


def _figures(result: dict) -> dict:
    """What the command prints: accuracy (and centred), or every pass@j of a sampled task."""
    passes = {k: v for k, v in result.items() if k.startswith("pass@")}
    tools = {k: result[k] for k in (*TOOL_FIGURES, "reward", "turns") if k in result and "turns" in result or
             k in TOOL_FIGURES and k in result}  # an env's episodes: also their reward and turns
    return {**passes, **tools} if passes and "accuracy" not in result else headline(result)


def find_run(step_dir: Path) -> tuple[Path | None, DictConfig]:
    """(run folder, its config.yaml) for a checkpoint inside a run; else (None, a bare config)."""
    for folder in [step_dir, *step_dir.resolve().parents][:4]:
        file = folder / "config.yaml"
        if file.is_file():
            try:
                return folder, OmegaConf.load(file)
            except Exception as e:  # noqa: BLE001 -- a damaged config: one line
                raise RlkitError(f"rlkit eval: {file} cannot be read ({type(e).__name__}: {e})") from None
    return None, OmegaConf.create({"seed": 0, "device": "auto", "plugins": [], "base_dir": ".",
                                   "model": {"name": None, "args": {}, "seq_len": 2048, "dtype": "auto"}})


def _entry_named(target: Path, run_dir: Path) -> str | None:
    """The entry folder the target names (runs/x/sft/step_000150 -> sft); None for the run folder itself."""
    try:
        parts = target.resolve().relative_to(run_dir.resolve()).parts
    except ValueError:
        return None
    return parts[0] if parts else None


def run_settings(cfg: DictConfig, plugins, stage: str | None) -> dict[str, tuple[int, str, list[EvalTask]]]:
    """{task name: (entry index, entry name, its EvalTasks for that task)}: the settings of entry `stage` (the
    entry folder named) where it evaluated the task, else of the last entry that did."""
    from rlkit.core import pipeline

    found = {}
    try:
        entries = pipeline.entries(cfg, plugins)
    except RlkitError as e:
        raise RlkitError(f"rlkit eval: the run's config.yaml no longer checks against the installed plugins ({e})") \
            from None
    for index, e in enumerate(entries):
        for spec in (e.stage.evals(e.cfg) if e.stage.evals is not None else []):
            if spec.name in found and found[spec.name][1] == stage != e.name:
                continue  # the checkpoint's own entry evaluated it: keep its settings
            if spec.name not in found or found[spec.name][0] != index:
                found[spec.name] = (index, e.name, [])
            found[spec.name][2].append(spec)
    return found


def _specs(item: str, known: dict, examples: int | None, plugins) -> list[tuple[EvalTask, int, str | None]]:
    """[(EvalTask, entry index, entry name or None)] for one --task NAME[:k]: every setting the last entry
    that evaluated NAME used (greedy and sampled, say), or with k the one that fits it (k > 1: sampled)."""
    name, colon, k_text = item.partition(":")
    plugins.get("task", name, "--task")
    k = None
    if colon:
        if not k_text.isdigit() or not 1 <= int(k_text) <= MAX_K:
            raise RlkitError(f"--task {item}: k must be a whole number from 1 to {MAX_K}, e.g. --task {name}:8")
        k = int(k_text)
    if name in known:
        index, entry, specs = known[name]
        if k is not None:
            specs = [next((s for s in specs if (s.temperature > 0) == (k > 1)), specs[0])]
    else:
        index, entry, specs = 0, None, [EvalTask(name=name, examples=DEFAULT_EXAMPLES)]
    if k is not None:
        specs = [replace(s, k=k, temperature=(s.temperature or 1.0) if k > 1 else 0.0) for s in specs]
    if examples is not None:
        specs = [replace(s, examples=examples) for s in specs]
    return [(s, index, entry) for s in specs]


def render(rows: list[dict]) -> str:
    """The results as a plain-text table, one line per task."""
    table = [["task", "metric", "value", "problems", "settings"]]
    for r in rows:
        s = r["settings"]
        how = (f"k={s['k']} T={s['temperature']:g} top-k {s['top_k']} seed {r['seed']}" if r["kind"] == "generative"
               else s["mode"]) + (f" (as {r['entry']})" if r["entry"] else "")
        for metric, value in r["figures"].items():
            table.append([r["title"], metric, f"{value:.4f}", str(r["problems"]), how])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)
