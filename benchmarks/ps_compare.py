"""The parameter server against allreduce and federated averaging at the same number of learners (issue 34):
updates/s, env steps/s, env steps to the threshold, solved and held, per mode, task and job size. Prints figures
and a markdown table; asserts nothing.

    .venv/bin/python benchmarks/ps_compare.py --task cartpole --ranks 3 5 9 --seeds 0 1 2 3 4
        [--modes allreduce federated ps-sync ps-async] [--straggler 2] [--set KEY=VALUE ...]
        [--results benchmarks/ps_results.jsonl]
    .venv/bin/python benchmarks/ps_compare.py --table benchmarks/ps_results.jsonl

``--ranks N`` is the parameter server's job size: 1 server and N - 1 workers; allreduce and federated run on
N - 1 ranks, the same number of learners. ``--straggler F`` slows rank 1 (a learner in every mode) F times in its
learning (the HVD_DQN_SLOW_RANK test hook): a synchronous update waits for it, an asynchronous server does not.
Federated averaging runs every 16 local updates with scaling strong (it refuses the other rules). One job at a
time, every launch with horovodrun --mpi; each finished run is appended to ``--results`` as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = {"cartpole": ROOT / "configs" / "cartpole.yaml", "acrobot": ROOT / "configs" / "acrobot.yaml"}
# mode -> (ranks for a parameter-server job of N ranks, overrides)
MODES = {
    "allreduce": (lambda n: n - 1, []),
    "federated": (lambda n: n - 1, ["federated_every=16", "scaling=strong"]),
    "ps-sync": (lambda n: n, ["parameter_server=sync"]),
    "ps-async": (lambda n: n, ["parameter_server=async"]),
}


def run_one(task: str, mode: str, ranks: int, seed: int, straggler: float | None, extra: list[str], out: Path) -> dict:
    np_of, overrides = MODES[mode]
    n = np_of(ranks)
    run_dir = out / f"{task}-{mode}-n{ranks}-s{seed}"
    cmd = [str(BIN / "hvd-dqn"), "train", "--config", str(CONFIGS[task]), "--run-dir", str(run_dir)]
    for item in [f"seed={seed}", *overrides, *extra]:
        cmd += ["--set", item]
    if n > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(n), "--mpi"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_MCA_mpi_yield_when_idle="1", PYTHONPATH=str(ROOT))
    if straggler is not None:
        env.update(HVD_DQN_TEST_HOOKS="1", HVD_DQN_SLOW_RANK=f"1:{straggler}")
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{task} {mode} N={ranks} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    threshold = s["reward_threshold"]
    return {
        "task": task,
        "mode": mode,
        "ranks": ranks,
        "launched_np": n,
        "seed": seed,
        "straggler": straggler,
        "extra": extra,
        "date": time.strftime("%Y-%m-%d", time.gmtime(start)),
        "updates_per_s": s["updates_per_s"],
        "env_steps_per_s": s["env_steps_per_s"],
        "solved_env_steps": s["solved_env_steps"],
        "held": threshold is not None and (s["final_eval_return_mean"] or float("-inf")) >= threshold,
        "ps_staleness_max": s.get("ps_staleness_max"),
        "ps_rejected": s.get("ps_rejected"),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| task | N | straggler | mode | updates/s | env steps/s | env steps to threshold (median) | solved | held |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted(
        {(r["task"], r["ranks"], r["straggler"] or 0, r["mode"]) for r in rows},
        key=lambda k: (k[0], k[1], k[2], list(MODES).index(k[3])),
    )
    for task, ranks, straggler, mode in keys:
        group = [
            r for r in rows if (r["task"], r["ranks"], r["straggler"] or 0, r["mode"]) == (task, ranks, straggler, mode)
        ]
        solved = [r["solved_env_steps"] for r in group if r["solved_env_steps"] is not None]
        lines.append(
            f"| {task} | {ranks} | {straggler or '-'} | {mode} "
            f"| {statistics.median(r['updates_per_s'] for r in group):.0f} "
            f"| {statistics.median(r['env_steps_per_s'] for r in group):.0f} "
            f"| {statistics.median(solved) if solved else '-'} "
            f"| {len(solved)}/{len(group)} | {sum(r['held'] for r in group)}/{len(group)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(CONFIGS), default="cartpole")
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 5, 9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--straggler", type=float, default=None)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "ps_results.jsonl")
    parser.add_argument("--table", type=Path, default=None, help="only print the table of this results file")
    args = parser.parse_args()
    if args.table is not None:
        print(table([json.loads(ln) for ln in args.table.read_text().splitlines() if ln.strip()]))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="ps_compare_") as tmp:
        for ranks in args.ranks:
            for mode in args.modes:
                for seed in args.seeds:
                    row = run_one(args.task, mode, ranks, seed, args.straggler, args.extra, Path(tmp))
                    print(json.dumps(row), flush=True)
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
