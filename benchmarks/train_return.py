"""The training return of runs as the MinAtar paper plots it: the mean of the last (at least) 100 episodes that
ended by a given env step, epsilon-greedy, from a run dir's metrics.jsonl. Each log row holds the mean and the count
of the episodes that ended (on every rank) since the row before, so the mean goes back whole rows until they hold
100 episodes or more: a row's episodes are weighted by their count. Asserts nothing.

    .venv/bin/python benchmarks/train_return.py RUN_DIR [RUN_DIR ...] [--at 100000 150000] [--episodes 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def trailing_mean(rows: list[dict], at: int, episodes: int) -> tuple[float, int] | None:
    """(mean, episodes counted) over the last whole log rows at or before env step ``at`` holding ``episodes``
    episodes or more; None if the run has fewer by then."""
    total = count = 0.0
    for row in reversed([r for r in rows if r["env_steps"] <= at]):
        n = row.get("charts/episodes") or 0
        if n:
            total += row["charts/episodic_return"] * n
            count += n
        if count >= episodes:
            return total / count, int(count)
    return None


def train_curve(rows: list[dict], episodes: int = 100) -> list[list]:
    """The training return at every log row, as the MinAtar paper plots it (the mean of the last ``episodes``
    or more epsilon-greedy episodes, ``trailing_mean``): [env steps, mean, updates per rank, wall s] from the first
    row that has that many episodes behind it."""
    curve = []
    for row in rows:
        if "charts/episodes" not in row:
            continue
        got = trailing_mean(rows, row["env_steps"], episodes)
        if got is not None:
            curve.append([row["env_steps"], got[0], row["updates"], row["wall_s"]])
    return curve


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--at", type=int, nargs="+", default=[100_000, 150_000])
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args()
    print("| run | " + " | ".join(f"at {a:,}" for a in args.at) + " |")
    print("| --- |" + " --- |" * len(args.at))
    by_step: dict[int, list[float]] = {a: [] for a in args.at}
    for run in args.run_dirs:
        rows = read_metrics(run)
        cells = []
        for a in args.at:
            got = trailing_mean(rows, a, args.episodes)
            if got is None:
                cells.append("-")
            else:
                by_step[a].append(got[0])
                cells.append(f"{got[0]:.2f} ({got[1]} episodes)")
        print(f"| {run.name} | " + " | ".join(cells) + " |")
    print("| median | " + " | ".join(f"{statistics.median(v):.2f}" if v else "-" for v in by_step.values()) + " |")


if __name__ == "__main__":
    main()
