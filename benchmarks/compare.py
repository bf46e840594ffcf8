"""The algorithms comparison of docs/algorithms.md: plain DQN, each component on its own, all together, and 2-rank
synchronous vs federated training, on CartPole-v1 and Acrobot-v1, several seeds each. Prints figures and a
markdown table; asserts nothing.

    .venv/bin/python benchmarks/compare.py --task cartpole [--seeds 0 1 2] [--variants plain dueling ...]
        [--results results.jsonl]

One job at a time (a 2-core machine measures nothing useful with two at once). Every finished run is appended
to ``--results`` as one JSON line, so an interrupted comparison keeps what it measured; ``--table`` only
prints the table of a results file. np=2 runs use horovodrun with MPI and OMPI_MCA_mpi_yield_when_idle=1.
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
CONFIGS = {
    "cartpole": ROOT / "benchmarks" / "configs" / "cartpole.yaml",
    "acrobot": ROOT / "benchmarks" / "configs" / "acrobot.yaml",
    # kept for the rows it produced: plain DQN never left -200 in 60k steps (docs/algorithms.md)
    "mountaincar": ROOT / "benchmarks" / "configs" / "mountaincar.yaml",
}

# variant -> (ranks, --set overrides). The first five change one thing against "plain" (np=1); "apex-eps"
# needs several actors, so it is compared with "sync-np2"; "fedavg-np2" is 2 ranks averaging weights every
# 16 local updates instead of averaging gradients at every update.
VARIANTS = {
    "plain": (1, []),
    "dueling": (1, ["dueling=true"]),
    "nstep3": (1, ["n_step=3"]),
    "per": (1, ["prioritized_replay=true"]),
    "soft-target": (1, ["target_tau=0.01"]),
    "all": (1, ["dueling=true", "n_step=3", "prioritized_replay=true", "target_tau=0.01"]),
    "sync-np2": (2, []),
    "apex-eps-np2": (2, ["num_envs=4", "epsilon_spread=7"]),
    "fedavg-np2": (2, ["federated_every=16"]),
}


def run_one(task: str, variant: str, seed: int, out: Path) -> dict:
    ranks, overrides = VARIANTS[variant]
    run_dir = out / f"{task}-{variant}-seed{seed}"
    cmd = [
        str(BIN / "hvd-dqn"),
        "train",
        "--config",
        str(CONFIGS[task]),
        "--run-dir",
        str(run_dir),
        "--set",
        f"seed={seed}",
    ]
    for o in overrides:
        cmd += ["--set", o]
    if ranks > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(ranks), "--mpi"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_MCA_mpi_yield_when_idle="1", PYTHONPATH=str(ROOT))
    load = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "ranks": ranks,
        "overrides": overrides,
        "solved_env_steps": summary["solved_env_steps"],
        "solved_wall_s": summary["solved_wall_s"],
        "final_eval": summary["final_eval_return_mean"],
        "wall_s": summary["wall_s"],
        "process_s": time.perf_counter() - t0,
        "updates": summary["updates"],
        "load_before": load,
        "load_after": os.getloadavg(),
        "replicas_equal": len(set(summary["replica_checksums"])) == 1,
    }


def table(rows: list[dict]) -> str:
    """One markdown row per (task, variant): medians over seeds, solved count, mean final return."""
    out = [
        "| task | variant | ranks | solved | env steps to threshold (median) | time to threshold, s (median) "
        "| final greedy return (mean ± sd) | wall s (median) | load avg (1 min, range) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = []
    for r in rows:
        if (r["task"], r["variant"]) not in keys:
            keys.append((r["task"], r["variant"]))
    for task, variant in keys:
        rs = [r for r in rows if r["task"] == task and r["variant"] == variant]
        solved = [r for r in rs if r["solved_env_steps"] is not None]
        # unsolved seeds count as infinitely slow, so a median over all seeds is honest about failures
        med = lambda k, f: (lambda v: "never" if v == float("inf") else format(v, f))(  # noqa: E731
            statistics.median([r[k] if r[k] is not None else float("inf") for r in rs])
        )
        finals = [r["final_eval"] for r in rs]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        loads = [r["load_before"][0] for r in rs] + [r["load_after"][0] for r in rs]
        out.append(
            f"| {task} | {variant} | {rs[0]['ranks']} | {len(solved)}/{len(rs)} "
            f"| {med('solved_env_steps', '.0f')} "
            f"| {med('solved_wall_s', '.1f')} | {statistics.mean(finals):.1f} ± {sd:.1f} "
            f"| {statistics.median(r['wall_s'] for r in rs):.1f} | {min(loads):.2f}-{max(loads):.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(CONFIGS), default="cartpole")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "compare_results.jsonl")
    ap.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temp dir)")
    ap.add_argument("--table", action="store_true", help="only print the table of --results")
    args = ap.parse_args()
    if not args.table:
        out = args.out or Path(tempfile.mkdtemp(prefix="hvd-dqn-compare-"))
        print(f"load average before: {os.getloadavg()}  (run dirs in {out})", flush=True)
        for variant in args.variants:
            for seed in args.seeds:
                row = run_one(args.task, variant, seed, out)
                print(json.dumps(row), flush=True)
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        print(f"load average after: {os.getloadavg()}", flush=True)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
