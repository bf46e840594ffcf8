"""The parameter server against allreduce and federated averaging at the same number of learners (issue 34):
updates/s, env steps/s, env steps to the threshold, solved and held, per mode, task and job size. Prints figures
and a markdown table; asserts nothing.

    .venv/bin/python benchmarks/ps_compare.py [--tasks cartpole acrobot] [--ranks 3 5 9] [--seeds 0 1 2 3 4]
        [--modes allreduce federated ps-sync ps-async] [--straggler 0 2] [--set KEY=VALUE ...]
        [--results benchmarks/ps_results.jsonl] [--dry-run]
    .venv/bin/python benchmarks/ps_compare.py --table benchmarks/ps_results.jsonl

The defaults are the whole comparison: both tasks, N = 3, 5 and 9, 5 seeds, every mode, without a straggler and
with one slowed 2x (240 runs).

``--ranks N`` is the parameter server's job size: 1 server and N - 1 workers; allreduce and federated run on
N - 1 ranks, the same number of learners. ``--straggler F`` slows rank 1 (a learner in every mode) F times in its
learning (the HVD_DQN_SLOW_RANK test hook): a synchronous update waits for it, an asynchronous server does not;
``--straggler 0`` is the run without one. Federated averaging runs every 16 local updates with scaling strong (it
refuses the other rules). One job at a time, every launch with horovodrun --mpi; each run is appended to
``--results`` as one JSON line, and a run already there (same task, mode, N, seed, straggler and --set) is not run
again, so a comparison that was stopped resumes where it stopped (a failed run is recorded and run again).
``--dry-run`` lists the runs still to do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    # scaling_replay_boost=1: acrobot.yaml's boost is a parameter of its adam_sqrt rule, refused with strong
    "federated": (lambda n: n - 1, ["federated_every=16", "scaling=strong", "scaling_replay_boost=1"]),
    "ps-sync": (lambda n: n, ["parameter_server=sync"]),
    "ps-async": (lambda n: n, ["parameter_server=async"]),
}


def run_key(task: str, mode: str, ranks: int, seed: int, straggler: float | None, extra: list[str]) -> tuple:
    """What makes a run the same run, in a results row and in the runs asked for."""
    return (task, mode, ranks, seed, straggler or None, tuple(extra))


def row_key(row: dict) -> tuple:
    return run_key(row["task"], row["mode"], row["ranks"], row["seed"], row["straggler"], row["extra"])


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(task: str, mode: str, ranks: int, seed: int, straggler: float | None, extra: list[str], out: Path) -> dict:
    np_of, overrides = MODES[mode]
    n = np_of(ranks)
    run_dir = out / f"{task}-{mode}-n{ranks}-s{seed}-x{straggler or 0:g}"
    cmd = [str(BIN / "hvd-dqn"), "train", "--config", str(CONFIGS[task]), "--run-dir", str(run_dir)]
    for item in [f"seed={seed}", *overrides, *extra]:
        cmd += ["--set", item]
    if n > 1:
        # -H localhost:N gives N slots, so mpirun oversubscribes the cores without complaint
        cmd = [str(BIN / "horovodrun"), "-np", str(n), "--mpi", "-H", f"localhost:{n}"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_MCA_mpi_yield_when_idle="1", PYTHONPATH=str(ROOT))
    if n > (os.cpu_count() or 1):
        env.setdefault("HOROVOD_CYCLE_TIME", "1")  # as benchmarks/scaling.py: idle Horovod threads off the cores
    if straggler:
        env.update(HVD_DQN_TEST_HOOKS="1", HVD_DQN_SLOW_RANK=f"1:{straggler}")
    start = time.time()
    # a session of its own: Ctrl-C or SIGTERM ends horovodrun, mpirun and every rank together
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    base = {
        "task": task,
        "mode": mode,
        "ranks": ranks,
        "launched_np": n,
        "seed": seed,
        "straggler": straggler or None,
        "extra": extra,
        "date": time.strftime("%Y-%m-%d", time.gmtime(start)),
        "process_s": time.time() - start,
    }
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or [""]
        return {**base, "failed": f"exit {proc.returncode}: {tail[0][:300]}"}
    s = json.loads((run_dir / "summary.json").read_text())
    threshold = s["reward_threshold"]
    return {
        **base,
        "updates_per_s": s["updates_per_s"],
        "env_steps_per_s": s["env_steps_per_s"],
        "solved_env_steps": s["solved_env_steps"],
        "held": threshold is not None and (s["final_eval_return_mean"] or float("-inf")) >= threshold,
        "ps_staleness_max": s.get("ps_staleness_max"),
        "ps_rejected": s.get("ps_rejected"),
    }


def table(rows: list[dict]) -> str:
    rows = [r for r in rows if "failed" not in r]
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
    parser.add_argument("--tasks", "--task", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 5, 9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--straggler", type=float, nargs="+", default=[0.0, 2.0], metavar="F")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "ps_results.jsonl")
    parser.add_argument("--dry-run", action="store_true", help="only list the runs not yet in --results")
    parser.add_argument("--table", type=Path, default=None, help="only print the table of this results file")
    args = parser.parse_args()
    if args.table is not None:
        print(table(read_results(args.table)))
        return
    # SIGTERM (kill, a batch system) as Ctrl-C: run_one then ends the run's whole session
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    done = {row_key(r) for r in read_results(args.results) if "failed" not in r}
    # seeds outside N and mode: a load that comes and goes falls on every mode alike
    todo = [
        (task, mode, ranks, seed, straggler or None)
        for task in args.tasks
        for straggler in args.straggler
        for seed in args.seeds
        for ranks in args.ranks
        for mode in args.modes
        if run_key(task, mode, ranks, seed, straggler, args.extra) not in done
    ]
    print(f"{len(todo)} run(s) to do, results in {args.results}", flush=True)
    if args.dry_run:
        for task, mode, ranks, seed, straggler in todo:
            print(f"{task} {mode} N={ranks} seed={seed} straggler={straggler or '-'}")
        return
    with tempfile.TemporaryDirectory(prefix="ps_compare_") as tmp:
        for task, mode, ranks, seed, straggler in todo:
            row = run_one(task, mode, ranks, seed, straggler, args.extra, Path(tmp))
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(read_results(args.results)))


if __name__ == "__main__":
    main()
