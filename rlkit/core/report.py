"""The report card: runs/<name>/report.md, rewritten as each stage finishes and at the end.

    report.stage_done(ctx, seconds, env)          # after each stage (rank 0 writes, others return)
    report.run_done(cfg, run_dir, tracker, env, seconds)

Each stage's figures (what the stage put in ctx.summary, its wall time, and
first/last/mean of every metric it tracked) are kept in runs/<name>/summary.json,
so a resumed run's card still shows the stages finished before, and are set
as the Aim run's `summary` param (what `rlkit compare` reads for wall times).
The card: environment; per stage steps, tokens, wall time, tokens/s, MFU,
final loss and bits-per-byte; for rl reward first -> last, pass@k before ->
after and completion length; the Aim run hash and how to open it; the
resolved config.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

SUMMARY_FILE = "summary.json"
UI_PORT = 43800  # `rlkit ui`'s default port


def stage_done(ctx, seconds: float, env: dict) -> None:
    """Record a finished stage in summary.json and the Aim run, then rewrite report.md (rank 0 only)."""
    if not ctx.dist.is_main:
        return
    data = _load(ctx.run_dir)
    data["stages"][ctx.name] = dict(ctx.summary) | {"wall_s": seconds, "tracked": ctx.tracker.stage_stats(ctx.name)}
    data.update(env=env, aim={"hash": ctx.tracker.hash, "repo": _repo(ctx.tracker)})
    _save(ctx.run_dir, data)
    ctx.tracker.params({"summary": {name: _headline(s) for name, s in data["stages"].items()}})
    write(ctx.run_dir, ctx.cfg, data)


def run_done(cfg, run_dir: Path, tracker, env: dict, seconds: float) -> None:
    """Mark the run finished (total wall time) and write the final report.md."""
    from rlkit.core.dist import dist_info

    if not dist_info().is_main:
        return
    data = _load(run_dir)
    data.update(env=env, aim={"hash": tracker.hash, "repo": _repo(tracker)}, finished=time.time(), wall_s=seconds)
    _save(run_dir, data)
    path = write(run_dir, cfg, data)
    where = f"; Aim run {tracker.hash} (rlkit ui --repo {_repo(tracker)})" if tracker.hash else ""
    print(f"rlkit: {cfg.name} finished in {seconds:.1f}s; report card {path}{where}", flush=True)


def write(run_dir: Path, cfg, data: dict) -> Path:
    """Render report.md from the summary data; returns its path."""
    lines = [f"# Report card: {cfg.name}", ""]
    done = f"finished {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(data['finished']))}, " \
           f"{data['wall_s']:.1f} s in all" if data.get("finished") else "in progress"
    lines += [f"Stages {', '.join(data['stages']) or '(none yet)'}; {done}.", ""]
    lines += _aim_lines(cfg, data.get("aim") or {}) + [""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v if v is not None else '-'} |" for k, v in data.get("env", {}).items()] + [""]
    lines += ["## Stages", "", "| stage | steps | tokens | wall time (s) | tokens/s | MFU | final loss | "
              "bits/byte |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_stage_row(name, s) for name, s in data["stages"].items()] + [""]
    for name, s in data["stages"].items():
        lines += _stage_details(name, s)
    lines += ["## Resolved config", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = run_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)  # never a half-written card
    return path


def _aim_lines(cfg, aim: dict) -> list[str]:
    if not aim.get("hash"):
        return ["Not tracked in Aim (tracking.enabled is false)."]
    h, repo = aim["hash"], aim["repo"]
    return [f"Aim run `{h}` in `{repo}`: open it with `rlkit ui --repo {repo}` and go to "
            f"http://127.0.0.1:{UI_PORT}/runs/{h}; compare with `rlkit compare {cfg.name} OTHER --repo {repo}`."]


def _stage_row(name: str, s: dict) -> str:
    t = s.get("tracked", {})
    if name == "rl":
        speed = f"rollout {_fmt(_mean(t, 'rollout_tok_s'))}, train {_fmt(_mean(t, 'train_tok_s'))}"
    else:
        speed = _fmt(_mean(t, "tokens_per_s"))
    loss = s.get("final_loss", _last(t, "loss"))
    wall = "-" if s.get("wall_s") is None else f"{s['wall_s']:.1f}"
    cells = [name, _fmt(s.get("steps")), _fmt(s.get("tokens")), wall, speed, _pct(_mean(t, "mfu")),
             _fmt(loss), _fmt(s.get("bpb"))]
    return "| " + " | ".join(cells) + " |"


def _stage_details(name: str, s: dict) -> list[str]:
    """Per-stage lines below the table: what matters beyond loss and speed."""
    t, out = s.get("tracked", {}), []
    if name == "tokenizer":
        out.append(f"- vocabulary {_fmt(s.get('vocab_size'))} tokens, trained on {_fmt(s.get('chars'))} characters")
    if name == "sft" and "accuracy" in s:
        out.append(f"- held-out greedy accuracy {_fmt(s['accuracy'])}")
    if name == "rl":
        for metric in [m for m in t if m == "reward" or m.startswith("reward/")]:
            out.append(f"- {metric}: {_fmt(t[metric]['first'])} (step {t[metric]['first_step']}) -> "
                       f"{_fmt(t[metric]['last'])} (step {t[metric]['last_step']}), mean {_fmt(t[metric]['mean'])}")
        if "reward_start" in s:  # single steps are noisy: the first and last tenth of the steps
            out.append(f"- reward, mean of the first / last {s['reward_window']} steps: {_fmt(s['reward_start'])} -> "
                       f"{_fmt(s['reward_end'])}")
        before, after = s.get("eval_before", {}), s.get("eval_after", {})
        ks = sorted(int(k[5:]) for k in after if k.startswith("pass@"))
        for key in [f"pass@{k}" for k in sorted({ks[0], ks[-1]})] if ks else []:  # pass@1 and pass@k
            out.append(f"- held-out {key}: {_fmt(before.get(key))} before -> {_fmt(after[key])} after")
        if "delta@1" in after:  # paired over the same problems and random numbers (core/evaluate.py)
            out.append(f"- pass@1 change: {after['delta@1']:+.4f} ± {after['delta_se']:.4f} (paired standard error)")
        if "completion_len" in t:
            c = t["completion_len"]
            out.append(f"- completion length (tokens): {_fmt(c['first'])} -> {_fmt(c['last'])}, mean {_fmt(c['mean'])}")
    return [f"### {name}", ""] + out + [""] if out else []


def _headline(s: dict) -> dict:
    """A stage's summary without the per-metric statistics (kept in Aim as the `summary` param)."""
    return {k: v for k, v in s.items() if k != "tracked"}


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


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"
