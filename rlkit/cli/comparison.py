"""`rlkit compare`: runs side by side, read from Aim through its SDK (no second store).

    result = compare(".aim", ["quickstart", "quickstart-s1"], metrics=[])
    print(render(result))            # or json.dumps(result)

A run is named by its run name (the experiment's resolved `name`) or its Aim
hash (a unique prefix will do); with none named, the last two runs of the
most recent run's experiment. Rows: the final and best value of each key
metric per stage (best = lowest for losses, highest otherwise), each stage's
wall time (from the run's `summary` param, written by the report card), and
every config key whose value differs between the runs.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from rlkit.lib.tracking.aimrepo import probe, reading
from rlkit.core.config import config_diff
from rlkit.core.errors import RlkitError

# shown by default, per stage, when a run tracked them; after reward: pass@ the smallest and largest k tracked
# and delta@1, pass@1's paired change from step 0
KEY_METRICS = ("loss", "bpb", "accuracy", "reward", "completion_len", "tokens_per_s", "rollout_tok_s", "mfu")
LOWER_IS_BETTER = ("loss", "bpb")
EVAL_METRIC = re.compile(r"^([^/]+/(accuracy|centred|pass@\d+)|CORE|ChatCORE)$")  # an eval's, with a task context
NO_BEST = ("delta@1", "completion_len", "lr_mult", "grad_norm", "adv_std", "vocab_size", "train_chars")


def compare(repo: str | Path, refs: list[str], metrics: list[str] | None = None) -> dict:
    """{'runs': [...], 'metrics': [{stage, metric, values: [{final, best, last_step} | None per run]}],
    'wall_s': [{stage, values}], 'config': [{key, values}]} for the named runs (JSON-ready)."""
    with reading(repo, "--repo"):  # a damaged repository, found now or when a run's data is read: one line
        return _compare(open_repo(repo), refs, metrics)


def _compare(opened, refs: list[str], metrics: list[str] | None) -> dict:
    runs = find_runs(opened, refs)
    infos = [{"name": r.name, "hash": r.hash, "experiment": r.experiment, "created": r.creation_time,
              "status": status(r), "error": _param(r, "error")} for r in runs]
    series = [read_metrics(r) for r in runs]
    hparams = [_param(r, "hparams") or {} for r in runs]
    order = list(dict.fromkeys(entry for h in hparams for entry in (h.get("stages") or {})))  # the YAMLs' order
    rows = []
    for stage, metric in _metric_rows(series, metrics, order):
        values = [_final_best(s.get((stage, metric)), metric, policy=(stage, "reward") in s) for s in series]
        rows.append({"stage": stage, "metric": metric, "values": values})
    summaries = [_param(r, "summary") or {} for r in runs]
    stages = _ordered({st for s in summaries for st in s}, order)
    wall = [{"stage": st, "values": [s.get(st, {}).get("wall_s") for s in summaries]} for st in stages]
    diff = config_diff(hparams)
    return {"runs": infos, "metrics": rows, "wall_s": wall, "config": diff}


def open_repo(repo: str | Path):
    from aim import Repo

    if not Repo.exists(str(repo)):
        raise RlkitError(f"--repo: no Aim repository at {repo}; run an experiment first (tracking.repo in its "
                         f"YAML says where it goes, default .aim)")
    probe(repo, "--repo")
    return Repo.from_path(str(repo))


def find_runs(repo, refs: list[str]) -> list:
    """The runs named by hash, hash prefix or run name (the latest such run); none named: the last two
    finished runs of the newest finished run's experiment (a failed, interrupted or running one is skipped)."""
    runs = sorted(repo.iter_runs(), key=lambda r: r.creation_time)
    if not refs:
        done = [r for r in runs if status(r) == "finished"]
        if not done:
            raise RlkitError(f"rlkit compare: the Aim repository {repo.path} holds no finished runs yet"
                             f"{_skipped(runs)}")
        same = [r for r in done if r.experiment == done[-1].experiment]
        if len(same) < 2:
            raise RlkitError(f"rlkit compare: experiment '{done[-1].experiment}' has one finished run only"
                             f"{_skipped(runs)}; name two runs (run names or hashes), e.g. rlkit compare "
                             f"{same[-1].name} OTHER")
        return same[-2:]
    return [_find(runs, ref) for ref in refs]


def status(run) -> str:
    """The run's `status` param ("running", "finished", "failed", "interrupted"); runs tracked before rlkit
    recorded one count as finished."""
    return _param(run, "status") or "finished"


def _skipped(runs: list) -> str:
    not_done = [f"{r.name} ({status(r)})" for r in runs if status(r) != "finished"]
    return f" (not counted: {', '.join(not_done[-4:])})" if not_done else ""


def _find(runs: list, ref: str):
    by_name = [r for r in runs if r.name == ref]
    if by_name:
        return by_name[-1]
    by_hash = [r for r in runs if r.hash.startswith(ref)] if len(ref) >= 6 else []
    if len(by_hash) == 1:
        return by_hash[0]
    if len(by_hash) > 1:
        raise RlkitError(f"rlkit compare: '{ref}' is the start of {len(by_hash)} run hashes; give more of it")
    names = sorted({r.name for r in runs})
    close = difflib.get_close_matches(ref, names, n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"runs: {', '.join(names[-8:])}"
    raise RlkitError(f"rlkit compare: no run named or hashed '{ref}' ({hint})")


def read_metrics(run) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """{(stage, metric): (steps, values)} of every metric the run tracked with a stage context."""
    out = {}
    for name, context, _ in run.iter_metrics_info():
        stage, task = context.to_dict().get("stage"), context.to_dict().get("task")
        if stage is None:
            continue  # Aim's own system metrics
        metric = run.get_metric(name, context)
        steps, columns = metric.data.view("val").items_list()
        out[(stage, f"{task}/{name}" if task else name)] = (steps, columns[0])  # an eval's: "<task>/<metric>"
    return out


def _metric_rows(series: list[dict], wanted: list[str] | None, order: list[str]) -> list[tuple[str, str]]:
    present = {key for s in series for key in s}
    if not wanted:  # the key metrics, with pass@ the smallest and largest k tracked after reward
        ks = sorted({int(m[5:]) for _, m in present if m.startswith("pass@") and m[5:].isdigit()})
        passes = [f"pass@{k}" for k in sorted({ks[0], ks[-1]})] + ["delta@1"] if ks else []  # + paired change
        evals = sorted({m for _, m in present if EVAL_METRIC.match(m)})  # "<task>/accuracy", "<task>/pass@8", ...
        names = [*KEY_METRICS[:4], *passes, *evals, *KEY_METRICS[4:]]
    else:
        names = list(wanted)
        unknown = [m for m in wanted if not any(m == name for _, name in present)]
        if unknown:
            known = sorted({name for _, name in present})
            raise RlkitError(f"--metric: {', '.join(unknown)} not tracked by these runs (tracked: {', '.join(known)})")
    return [(stage, m) for stage in _ordered({st for st, _ in present}, order) for m in names if (stage, m) in present]


def _final_best(points, metric: str, policy: bool) -> dict | None:
    """Final and best value; `policy`: the stage tracked a reward, so its loss is a policy loss with no "best"."""
    if points is None:
        return None
    steps, values = points
    finite = [v for v in values if v == v]
    no_best = metric in NO_BEST or (policy and metric == "loss") or not finite
    best = None if no_best else (min if metric in LOWER_IS_BETTER else max)(finite)
    return {"final": values[-1], "best": best, "last_step": steps[-1]}


def _param(run, key: str):
    try:
        return run[key]
    except KeyError:
        return None



def _ordered(stages: set[str], order: list[str]) -> list[str]:
    """Stage entries in the runs' YAML order; any the configs do not list, after them by name."""
    return sorted(stages, key=lambda s: (order.index(s) if s in order else len(order), s))


def render(result: dict) -> str:
    """The comparison as a plain-text table: one column per run."""
    heads = [f"{r['name']} ({r['hash'][:8]})" for r in result["runs"]]
    table = [["", *heads]]
    table.append(["experiment", *(r["experiment"] or "-" for r in result["runs"])])
    table.append(["status", *(r.get("status") or "-" for r in result["runs"])])
    for row in result["metrics"]:
        best = any(v is not None and v["best"] is not None for v in row["values"])
        table.append([f"{row['stage']} {row['metric']} ({'final / best' if best else 'final'})",
                      *(_cell(v, row["metric"]) for v in row["values"])])
    for row in result["wall_s"]:
        table.append([f"{row['stage']} wall time (s)", *(_num(v) for v in row["values"])])
    if result["config"]:
        table.append(["config differences:", *[""] * len(heads)])
        for row in result["config"]:
            table.append([f"  {row['key']}", *(_value(v) for v in row["values"])])
    else:
        table.append(["config: identical", *[""] * len(heads)])
    widths = [max(len(r[i]) for r in table) for i in range(len(heads) + 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def _cell(v: dict | None, metric: str) -> str:
    if v is None:
        return "-"
    final, best = _num(v["final"], metric), _num(v["best"], metric)
    return final if v["best"] is None else f"{final} / {best}"


def _num(v, metric: str = "") -> str:
    if v is None:
        return "-"
    if metric == "mfu":
        return f"{v:.1%}"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _value(v) -> str:
    if isinstance(v, dict):
        return f"{{...{len(v)} keys}}"
    return "-" if v is None else str(v)
