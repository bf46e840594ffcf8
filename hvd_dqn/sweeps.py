"""A set of runs read together (a sweep over seeds or settings): run dirs grouped by a label, each group's mean
learning curve with its min-max band, and the table of results per group.

Everything here reads what rank 0 wrote (config.json, metrics.jsonl, summary.json) and computes; the plotting
and the printing are the callers'. A run's label is its config's ``exp_name`` (the config file's name) unless
another config key is asked for.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn import best, rundir
from hvd_dqn.errors import UserError, excerpt
from hvd_dqn.rundir import read_json_object

DEFAULT_GROUP_KEY = "exp_name"
EVAL_KEY = "eval_return_mean"  # the greedy evaluation's mean return in a metrics.jsonl row
INF = float("inf")


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run dir's metrics rows, summary (empty while the run has not finished), config and best/ evaluation
    ({} if none), with its path and ``notes`` for the user. A run's best/ reads as the run. A last line that is
    not JSON (a row cut short by a kill mid-write) is left out, with a note; any other is an error."""
    run_dir = best.run_of(Path(run_dir))
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    metrics = run_dir / rundir.METRICS
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl in it (is it a hvd-dqn run dir?)")
    rows, notes = [], []
    lines = metrics.read_text(errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise UserError(f"{metrics}: line {n} is not JSON") from None
            notes.append(
                f"{metrics}: its last line (line {n}) is cut short, as a run killed while writing it "
                f"leaves it; left out"
            )
    summary = read_json_object(run_dir / rundir.SUMMARY, missing={})
    config = read_json_object(run_dir / rundir.CONFIG, missing={})
    return {
        "dir": run_dir,
        "rows": rows,
        "summary": summary,
        "config": config,
        "best": best.read(run_dir),
        "notes": notes,
    }


def label(run: dict[str, Any], key: str = DEFAULT_GROUP_KEY) -> str:
    """The group a run belongs to: its config's ``key`` (``exp_name``: the config file's name; runs recorded
    before exp_name existed fall back to their env id)."""
    config = run["config"]
    if key == DEFAULT_GROUP_KEY:
        return str(config.get("exp_name") or config.get("env_id") or "?")
    if key not in config:
        raise UserError(f"--group-by {excerpt(key)}: {run['dir']}'s config.json has no such key")
    return f"{key}={json.dumps(config[key])}"


def group(runs: list[dict[str, Any]], key: str = DEFAULT_GROUP_KEY) -> dict[str, list[dict[str, Any]]]:
    """Runs by label, labels in sorted order, each group's runs in the order given."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(label(run, key), []).append(run)
    return dict(sorted(groups.items()))


def eval_curve(rows: list[dict[str, Any]], x: str = "env_steps") -> tuple[list[float], list[float]]:
    """The greedy evaluations of a run as (x values, mean returns), by increasing x; of two evaluations at the
    same x (a run resumed from a checkpoint before one) the later row wins."""
    points: dict[float, float] = {}
    for row in rows:
        if row.get(EVAL_KEY) is not None and row.get(x) is not None:
            points[row[x]] = row[EVAL_KEY]
    xs = sorted(points)
    return xs, [points[v] for v in xs]


@dataclass(frozen=True)
class Band:
    """A group's curve: the mean over its runs at each x, and the lowest and highest run there."""

    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: int
    interpolated: bool  # some run has no evaluation at some x of the grid: its value there is interpolated
    cut: bool  # some run evaluated outside the range all runs cover, which the band leaves out


def band(curves: list[tuple[list[float], list[float]]]) -> Band:
    """Mean, min and max over the runs' curves. Where every run evaluated at the same x values (runs of one
    config do) these are exact; otherwise each run is interpolated linearly onto the common grid: every x at
    which some run evaluated, within the range that all runs cover (nothing is extrapolated)."""
    curves = [(list(xs), list(ys)) for xs, ys in curves if xs]
    if not curves:
        raise ValueError("no run has an evaluation")
    lo, hi = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
    grid = sorted({v for xs, _ in curves for v in xs if lo <= v <= hi})
    if not grid:
        raise ValueError(f"the runs' evaluations share no range (one ends at {hi:g}, another starts at {lo:g})")
    values = np.array([np.interp(grid, xs, ys) for xs, ys in curves])
    return Band(
        x=grid,
        mean=values.mean(axis=0).tolist(),
        low=values.min(axis=0).tolist(),
        high=values.max(axis=0).tolist(),
        runs=len(curves),
        interpolated=any(not set(grid) <= set(xs) for xs, _ in curves),
        cut=any(xs[0] < lo or xs[-1] > hi for xs, _ in curves),
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one group. Only finished runs (with a summary.json) count; a run that never reached the
    threshold counts as never (infinity) in the medians, so a median says "never" when half the runs failed."""
    done = [r["summary"] for r in runs if r["summary"]]
    finals = [s["final_eval_return_mean"] for s in done if s.get("final_eval_return_mean") is not None]
    solved = [s for s in done if s.get("solved_env_steps") is not None]
    return {
        "runs": len(done),
        "unfinished": len(runs) - len(done),
        "ranks": sorted({s["world_size"] for s in done if s.get("world_size") is not None}),
        "thresholds": sorted({s["reward_threshold"] for s in done if s.get("reward_threshold") is not None}),
        "solved": len(solved),
        "steps_to_threshold": _median(
            [s["solved_env_steps"] if s.get("solved_env_steps") is not None else INF for s in done]
        ),
        "time_to_threshold": _median(
            [s["solved_wall_s"] if s.get("solved_env_steps") is not None else INF for s in done]
        ),
        "final_median": _median(finals),
        "final_min": min(finals) if finals else math.nan,
        "final_max": max(finals) if finals else math.nan,
    }


def _fmt(value: float, spec: str) -> str:
    if value == INF:
        return "never"
    return "-" if math.isnan(value) else format(value, spec)


def _listed(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"


def table(groups: dict[str, dict[str, Any]]) -> str:
    """A markdown table, one line per group, from ``{label: results(...)}``."""
    out = [
        "| group | runs | ranks | threshold | solved | env steps to threshold (median) "
        "| time to threshold, s (median) | final greedy return: median (min to max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in groups.items():
        runs = f"{r['runs']}" + (f" (+{r['unfinished']} unfinished)" if r["unfinished"] else "")
        final = (
            "-"
            if math.isnan(r["final_median"])
            else f"{r['final_median']:.1f} ({r['final_min']:.1f} to {r['final_max']:.1f})"
        )
        out.append(
            f"| {name} | {runs} | {_listed(r['ranks'])} | {_listed(r['thresholds'])} | "
            f"{r['solved']}/{r['runs']} | {_fmt(r['steps_to_threshold'], ',.0f')} | "
            f"{_fmt(r['time_to_threshold'], '.1f')} | {final} |"
        )
    return "\n".join(out)


def read_runs(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Every run dir given, read; a path that is not a run dir (no config.json) is a one-line UserError."""
    if not run_dirs:
        raise UserError("no run dirs given (e.g. runs/*)")
    runs = []
    for d in run_dirs:
        run = read_run(Path(d))
        if not run["config"]:
            raise UserError(f"{d}: no config.json in it (is it a hvd-dqn run dir?)")
        runs.append(run)
    return runs
