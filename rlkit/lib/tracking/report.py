"""The report card: runs/<name>/report.md, rewritten as each stage finishes and at the end.

    report.stage_done(ctx, seconds, env)          # after each stage (rank 0 writes, others return)
    report.run_done(cfg, run_dir, tracker, env, seconds)

Each stage's figures (what the stage put in ctx.summary, its wall time, and
first/last/mean of every metric it tracked) are kept in runs/<name>/summary.json,
so a resumed run's card still shows the stages finished before, and are set
as the Aim run's `summary` param (what `rlkit compare` reads for wall times).
The card: environment (with MFU's peak and where it came from); per entry tokens/s, steps, tokens, wall time, MFU,
final loss and bits-per-byte; nanochat's evaluation table (one row per
metric, one column per entry that evaluated: summary["evals"]) with the
run's wall time, device and world size; below it the lines each entry's stage gives
(its `report`: an rl stage's reward and pass@k, say); the Aim run hash and
how to open it; the resolved config.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

SUMMARY_FILE = "summary.json"
UI_PORT = 43800  # `rlkit ui`'s default port


def stage_done(ctx, seconds: float, env: dict, stage) -> None:
    """Record a finished entry in summary.json and the Aim run, with the lines its stage's `report` gives,
    then rewrite report.md (rank 0 only)."""
    if not ctx.dist.is_main:
        return
    data = _load(ctx.run_dir)
    tracked = ctx.tracker.stage_stats(ctx.name)
    lines = list(stage.report(dict(ctx.summary), tracked)) if stage.report is not None else []
    data["stages"][ctx.name] = dict(ctx.summary) | {"wall_s": seconds, "tracked": tracked, "lines": lines}
    data.update(env=env, aim={"hash": ctx.tracker.hash, "repo": _repo(ctx.tracker)}, status="running", error=None)
    _save(ctx.run_dir, data)
    ctx.tracker.params({"summary": {name: _headline(s) for name, s in data["stages"].items()}})
    write(ctx.run_dir, ctx.experiment, data)


def run_done(cfg, run_dir: Path, tracker, env: dict, seconds: float) -> None:
    """Mark the run finished (total wall time) and write the final report.md."""
    from rlkit.core.dist import dist_info

    if not dist_info().is_main:
        return
    data = _load(run_dir)
    data.update(env=env, aim={"hash": tracker.hash, "repo": _repo(tracker)}, finished=time.time(), wall_s=seconds,
                status="finished", error=None)
    _save(run_dir, data)
    path = write(run_dir, cfg, data)
    where = f"; Aim run {tracker.hash} (rlkit ui --repo {_repo(tracker)})" if tracker.hash else ""
    print(f"rlkit: {cfg.name} finished in {seconds:.1f}s; report card {path}{where}", flush=True)


def run_failed(cfg, run_dir: Path, tracker, env: dict, status: str, error: str, seconds: float) -> None:
    """Mark the run failed or interrupted in summary.json (`status`, `error`: its one line) and on the card."""
    from rlkit.core.dist import dist_info

    if not dist_info().is_main:
        return
    data = _load(run_dir)
    data.update(env=env, aim={"hash": tracker.hash, "repo": _repo(tracker)}, finished=None, wall_s=seconds,
                status=status, error=error)
    _save(run_dir, data)
    write(run_dir, cfg, data)


def write(run_dir: Path, cfg, data: dict) -> Path:
    """Render report.md from the summary data; returns its path."""
    lines = [f"# Report card: {cfg.name}", ""]
    done = f"finished {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(data['finished']))}, " \
           f"{data['wall_s']:.1f} s in all" if data.get("finished") else "in progress"
    if data.get("status") in ("failed", "interrupted"):
        done = f"**{data['status'].upper()}** after {data['wall_s']:.1f} s: {data.get('error')}"
    lines += [f"Stages {', '.join(data['stages']) or '(none yet)'}; {done}.", ""]
    lines += _aim_lines(cfg, data.get("aim") or {}) + [""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v if v is not None else '-'} |" for k, v in data.get("env", {}).items()] + [""]
    lines += ["## Stages", "", "| stage | tokens/s | steps | tokens | wall time (s) | MFU | final loss | "
              "bits/byte |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_stage_row(name, s) for name, s in data["stages"].items()] + [""]
    lines += eval_table(data)
    for name, s in data["stages"].items():
        lines += _stage_details(name, s)
    lines += ["## Resolved config", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = run_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)  # never a half-written card
    return path


def eval_table(data: dict) -> list[str]:
    """nanochat's report-card table: one row per metric, one column per entry that evaluated (what its stage put
    in summary["evals"]: {title: {metric: value}}), then the run's wall time and what it ran on."""
    columns = [(name, s["evals"]) for name, s in data["stages"].items() if s.get("evals")]
    if not columns:
        return []
    rows = []  # (title, metric) in the order they first appear
    for _, evals in columns:
        for title, figures in evals.items():
            rows += [(title, m) for m in figures if m not in ("tasks",) and (title, m) not in rows]
    out = ["## Evaluation", "", "| metric | " + " | ".join(name.upper() for name, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
    for title, metric in rows:
        label = title if metric == "score" else f"{title} {metric}"
        out.append(f"| {label} | " + " | ".join(_cell(evals.get(title, {}).get(metric)) for _, evals in columns) + " |")
    env = data.get("env", {})
    wall = f"{data['wall_s']:.1f} s" if data.get("wall_s") is not None else "in progress"
    out += ["", f"Wall time {wall} on {env.get('device', '-')}, world size {env.get('world_size', '-')}.", ""]
    return out


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _aim_lines(cfg, aim: dict) -> list[str]:
    if not aim.get("hash"):
        return ["Not tracked in Aim (tracking.enabled is false)."]
    h, repo = aim["hash"], aim["repo"]
    return [f"Aim run `{h}` in `{repo}`: open it with `rlkit ui --repo {repo}` and go to "
            f"http://127.0.0.1:{UI_PORT}/runs/{h}; compare with `rlkit compare {cfg.name} OTHER --repo {repo}`."]


def _stage_row(name: str, s: dict) -> str:
    t = s.get("tracked", {})
    loss = s.get("final_loss", _last(t, "loss"))
    wall = "-" if s.get("wall_s") is None else f"{s['wall_s']:.1f}"
    cells = [name, fmt(_mean(t, "tokens_per_s")), fmt(s.get("steps")), fmt(s.get("tokens")), wall,
             _pct(_mean(t, "mfu")), fmt(loss), fmt(s.get("bpb"))]
    return "| " + " | ".join(cells) + " |"


def _stage_details(name: str, s: dict) -> list[str]:
    """The lines the entry's stage gave for the card (its `report`), below the table."""
    out = [f"- {line}" for line in s.get("lines", [])]
    return [f"### {name}", ""] + out + [""] if out else []


def tracked_change(t: dict, metric: str) -> str:
    """'first (step a) -> last (step b), mean m' of a tracked metric, for a stage's report lines."""
    m = t[metric]
    return f"{fmt(m['first'])} (step {m['first_step']}) -> {fmt(m['last'])} (step {m['last_step']}), mean {fmt(m['mean'])}"


def _headline(s: dict) -> dict:
    """A stage's summary without the per-metric statistics (kept in Aim as the `summary` param)."""
    return {k: v for k, v in s.items() if k not in ("tracked", "lines")}


def _repo(tracker) -> str | None:
    return str(tracker.repo) if tracker.repo is not None else None


def _load(run_dir: Path) -> dict:
    path = run_dir / SUMMARY_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("stages", {})
    return data


def _save(run_dir: Path, data: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    tmp.replace(run_dir / SUMMARY_FILE)


def _jsonable(value):
    return value.item() if hasattr(value, "item") else str(value)


def _mean(t: dict, metric: str):
    return t[metric]["mean"] if metric in t else None


def _last(t: dict, metric: str):
    return t[metric]["last"] if metric in t else None


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"
