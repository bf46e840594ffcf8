"""The Atari pipeline's parts, one at a time on this machine: env steps/s per rank (our vector env, and ale-py's
C++ AtariVectorEnv for comparison), Nature CNN updates/s and acting calls/s, the CNN update in float32 and in each
mixed precision this machine runs fast, at 1 and 4 updates per TF call, bytes per stored transition, and the peak
memory of a filled 100k-transition frame replay. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/atari.py [--game Pong] [--seconds 5] [--replay 100000] [--rounds 5]
    .venv/bin/python benchmarks/atari.py --cnn-only [--precisions mixed_bfloat16 mixed_float16]

One process, one core's worth of work at a time (the replay fill runs in a child process so its peak RSS is its
own). docs/atari-cost.md quotes these figures and the 10M-step estimate built from them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def rate(fn, seconds: float, per_call: int = 1) -> float:
    """Calls of ``fn`` per second (times ``per_call``), after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * per_call / (time.perf_counter() - start)


def env_rates(game: str, seconds: float, rounds: int = 6) -> None:
    """Env steps/s per rank of both vector envs, 1 and 4 envs, measured in interleaved rounds (median and best
    of ``rounds``), so that load from other jobs on a shared machine falls on all four alike."""
    from hvd_dqn.envs import make_vector_env

    envs = {}
    for backend in ("ale", "gymnasium"):
        for num_envs in (1, 4):
            envs[backend, num_envs] = make_vector_env(f"ALE/{game}-v5", num_envs, backend=backend, threads=1)
            envs[backend, num_envs].reset(seed=list(range(num_envs)))
    rates = {key: [] for key in envs}
    for _ in range(rounds):
        for (backend, num_envs), env in envs.items():
            actions = np.zeros(num_envs, np.int64)
            rates[backend, num_envs].append(rate(lambda: env.step(actions), seconds / rounds * 2, num_envs))
    names = {"ale": "ale-py AtariVectorEnv (C++, 1 thread)", "gymnasium": "gymnasium wrappers, SyncVectorEnv"}
    for (backend, num_envs), values in rates.items():
        print(
            f"env steps/s per rank, {names[backend]}, num_envs {num_envs}: median {np.median(values):,.0f}, "
            f"best {max(values):,.0f}"
        )
        envs[backend, num_envs].close()


def learner_rates(seconds: float) -> None:
    from hvd_dqn import distributed
    from hvd_dqn.config import Config
    from hvd_dqn.learner import Learner
    from hvd_dqn.replay import FrameReplayBuffer, ReplayShard

    distributed.init()
    cfg = Config.from_yaml(ROOT / "configs" / "pong.yaml", ["replay_capacity=20000"])
    learner = Learner(cfg, (4, 84, 84), 6, 1)
    replay = FrameReplayBuffer(20_000, 1)
    rng = np.random.default_rng(0)
    stacks = rng.integers(0, 256, size=(1, 4, 84, 84), dtype=np.uint8)
    replay.start(stacks)
    for t in range(20_000):
        replay.add(stacks, np.zeros(1, np.int32), np.zeros(1), stacks, np.array([t % 1000 == 999]), np.zeros(1, bool))
    shard = ReplayShard(replay, cfg.gamma)
    sample = lambda: shard.sample(rng, (1, 32))  # noqa: E731
    batch = sample()[0]
    print(f"replay sample + stack rebuild, batch 32: {rate(sample, seconds):,.0f} batches/s")
    print(
        f"Nature CNN updates/s, batch 32, one update per call (as configs/pong.yaml): "
        f"{rate(lambda: learner.run_updates(batch, 1e-4), seconds):,.1f}"
    )
    print(
        f"  with sampling from the frame replay: {rate(lambda: learner.run_updates(sample()[0], 1e-4), seconds):,.1f}"
    )
    act = learner.q_fn()
    for n in (1, 4):
        calls = rate(lambda: act(batch.obs[0, :n]), seconds)
        print(f"Nature CNN acting calls/s, {n} observation(s) per call: {calls:,.0f}")


def mixed_precisions() -> list[str]:
    """The mixed-precision policies worth timing here: mixed_bfloat16 where the CPU has bf16 instructions
    (AVX512-BF16 or AMX) or there is a GPU, mixed_float16 only on a GPU (a CPU emulates float16)."""
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    bf16 = gpu or bool(flags & {"avx512_bf16", "amx_bf16"})
    return (["mixed_bfloat16"] if bf16 else []) + (["mixed_float16"] if gpu else [])


def cnn_update_rates(seconds: float, rounds: int, precisions: list[str], ks: tuple[int, ...] = (1, 4)) -> None:
    """Nature CNN updates/s at batch 32 (the learner's update: double DQN, Huber loss, Adam) for each precision and
    K updates per TF call, on fixed uint8 batches (no sampling). The variants take turns in ``rounds`` rounds, so
    that load from other jobs falls on all alike; median and best of the rounds."""
    from hvd_dqn import distributed
    from hvd_dqn.config import Config
    from hvd_dqn.learner import Learner
    from hvd_dqn.replay import Batch

    distributed.init()
    rng = np.random.default_rng(0)
    variants = {}
    for precision in precisions:
        cfg = Config.from_yaml(
            ROOT / "configs" / "pong.yaml", ["replay_capacity=20000", "double_dqn=true", f"precision={precision}"]
        )
        learner = Learner(cfg, (4, 84, 84), 6, 1)
        for k in ks:
            frames = lambda: rng.integers(0, 256, size=(k, 32, 4, 84, 84), dtype=np.uint8)  # noqa: E731
            batch = Batch(
                frames(),
                rng.integers(0, 6, (k, 32)).astype(np.int32),
                rng.choice([-1.0, 0.0, 1.0], (k, 32)).astype(np.float32),
                frames(),
                np.zeros((k, 32), bool),
                np.zeros((k, 32), bool),
            )
            variants[precision, k] = (learner, batch)
            learner.run_updates(batch, 1e-4)  # trace and warm up this K
    rates = {key: [] for key in variants}
    for _ in range(rounds):
        for key, (learner, batch) in variants.items():
            rates[key].append(rate(lambda: learner.run_updates(batch, 1e-4), seconds, per_call=key[1]))
    for (precision, k), values in rates.items():
        print(
            f"Nature CNN updates/s, batch 32, {precision}, K = {k} update(s) per call: median "
            f"{np.median(values):,.1f}, best {max(values):,.1f} ({rounds} rounds)"
        )


def replay_memory(capacity: int) -> None:
    """In a child process: resident memory before allocating and after filling the ring once, and the peak."""
    code = f"""
import resource, sys, numpy as np, psutil
sys.path.insert(0, {str(ROOT)!r})
from hvd_dqn.replay import FrameReplayBuffer
from hvd_dqn.replay import ReplayShard
before = psutil.Process().memory_info().rss
replay = FrameReplayBuffer({capacity}, 1)
shard = ReplayShard(replay, 0.99)
stacks = np.random.default_rng(0).integers(0, 256, size=(1, 4, 84, 84), dtype=np.uint8)
replay.start(stacks)
for t in range({capacity}):
    shard.add(stacks, np.zeros(1, np.int32), np.zeros(1), stacks, np.zeros(1, bool), np.zeros(1, bool))
batch = shard.sample(np.random.default_rng(0), (1, 32))
after = psutil.Process().memory_info().rss
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
total = replay.nbytes + shard.discount.nbytes
print(total / replay.capacity, total, before, after, peak)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    per, nbytes, before, after, peak = (float(x) for x in out[-5:])
    print(
        f"bytes per stored transition (frame replay + discount column): {per:,.1f}; "
        f"1M transitions: {per * 1e6 / 1e9:.2f} GB"
    )
    print(
        f"{capacity:,}-transition frame replay, filled: arrays {nbytes / 1e6:,.0f} MB; process RSS "
        f"{before / 1e6:,.0f} MB before allocating, {after / 1e6:,.0f} MB filled, peak {peak / 1e6:,.0f} MB"
    )


def train_rate(steps: int) -> None:
    """configs/pong.yaml on one rank, shortened (a small replay, learning from step steps/3): the whole loop."""
    import json
    import tempfile

    run_dir = Path(tempfile.mkdtemp(prefix="hvd-dqn-atari-bench-")) / "run"
    cmd = [
        sys.executable,
        "-m",
        "hvd_dqn.cli",
        "train",
        "--config",
        str(ROOT / "configs" / "pong.yaml"),
        "--run-dir",
        str(run_dir),
    ]
    for override in (
        f"total_env_steps={steps}",
        f"learning_starts={steps // 3}",
        "replay_capacity=20000",
        f"eval_every={10 * steps}",
        "eval_episodes=1",
        "max_episode_frames=2000",
        f"log_every={steps // 3}",
    ):
        cmd += ["--set", override]
    subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    learning = rows[1]  # the second third of the run: all learning, no evaluation
    print(
        f"whole loop, 1 rank, pong.yaml (1 update per 4 env steps, 1 env), while learning: "
        f"{learning['perf/env_steps_per_s']:,.0f} env steps/s, {learning['perf/updates_per_s']:,.1f} updates/s "
        f"(env steps {rows[0]['env_steps']:,}-{learning['env_steps']:,})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="Pong")
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--replay", type=int, default=100_000, help="transitions in the memory measurement")
    ap.add_argument("--train-steps", type=int, default=3000, help="env steps of the whole-loop run (0: skip)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the CNN precision/K comparison")
    ap.add_argument(
        "--precisions",
        nargs="*",
        default=None,
        help="mixed-precision policies to time besides float32 (default: those this machine runs fast)",
    )
    ap.add_argument("--cnn-only", action="store_true", help="only the CNN precision/K comparison")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    precisions = ["float32"] + (mixed_precisions() if args.precisions is None else args.precisions)
    if args.cnn_only:
        cnn_update_rates(args.seconds / 2, args.rounds, precisions)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    env_rates(args.game, args.seconds)
    replay_memory(args.replay)
    learner_rates(args.seconds)
    cnn_update_rates(args.seconds / 2, args.rounds, precisions)
    print(
        f"peak RSS of this process (TensorFlow, CNN, a 20k replay): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6:,.0f} MB"
    )
    if args.train_steps:
        train_rate(args.train_steps)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
