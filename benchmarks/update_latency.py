"""Time of one synchronous gradient update (CartPole's 64x64 MLP, global batch 128) on 1 rank and on 2 ranks
under each Horovod controller and cycle time: the figure that bounds multi-rank DQN on small networks, where
every update waits for one allreduce of a few kilobytes. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/update_latency.py [--cycle-ms 1 0.1] [--controllers mpi gloo] [--rounds 2]

Each configuration runs ``--rounds`` times, interleaved, so a load that comes and goes falls on all of them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PHASES, UPDATES = 20, 128  # timed phases of 128 updates each, after 3 warm-up phases


def worker() -> None:
    import numpy as np

    from hvd_dqn import distributed
    from hvd_dqn.config import Config
    from hvd_dqn.learner import Learner
    from hvd_dqn.replay import ReplayBuffer

    world = distributed.init()
    cfg = Config(env_id="CartPole-v1", hidden_sizes=(64, 64), batch_size=128)
    rng = np.random.default_rng(world.rank)
    n = 5000
    replay = ReplayBuffer(n, (4,))
    replay.add(
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.integers(0, 2, n),
        rng.normal(size=n),
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.random(n) < 0.1,
        np.zeros(n, bool),
    )
    learner = Learner(cfg, (4,), 2, world.size)
    learner.broadcast_initial_weights()
    shape = (UPDATES, cfg.batch_size // world.size)
    for _ in range(3):
        learner.run_updates(replay.gather(rng.integers(0, n, size=shape)), 1e-3)
    start = time.perf_counter()
    for _ in range(PHASES):
        learner.run_updates(replay.gather(rng.integers(0, n, size=shape)), 1e-3)
    ms = (time.perf_counter() - start) / (PHASES * UPDATES) * 1e3
    equal = len(set(distributed.gather_checksums(learner.online.variables))) == 1
    if world.is_chief:
        print(f"RESULT {ms:.3f} {equal}", flush=True)


def measure(ranks: int, controller: str, cycle_ms: str) -> tuple[float, bool]:
    cmd = [sys.executable, __file__, "--worker"]
    if ranks > 1:
        cmd = [str(BIN / "horovodrun"), "-np", str(ranks), f"--{controller}"] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), HOROVOD_CYCLE_TIME=cycle_ms)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "RESULT " in ln)
    ms, equal = line.split("RESULT ", 1)[1].split()[:2]
    return float(ms), equal == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cycle-ms", nargs="+", default=["1", "0.1"], help="HOROVOD_CYCLE_TIME values (ms)")
    ap.add_argument("--controllers", nargs="+", default=["mpi", "gloo"], choices=["mpi", "gloo"])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.worker:
        return worker()
    configs = [(1, "-", "-")] + [(2, c, t) for c in args.controllers for t in args.cycle_ms]
    results: dict = {c: [] for c in configs}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for ranks, controller, cycle in configs:
            ms, equal = measure(ranks, controller, cycle if cycle != "-" else "1")
            results[(ranks, controller, cycle)].append(ms)
            if not equal:
                print(f"WARNING: replicas differ ({ranks} ranks, {controller})", flush=True)
    print("ranks | controller | HOROVOD_CYCLE_TIME ms | ms per update (each round) | best")
    for (ranks, controller, cycle), times in results.items():
        print(f"{ranks} | {controller} | {cycle} | {' / '.join(f'{t:.2f}' for t in times)} | {min(times):.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
