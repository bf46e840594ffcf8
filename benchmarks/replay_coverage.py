"""Which replay slots a real training run samples: a short Atari-100k-style run (configs/roadrunner-100k.yaml by
default) with prioritized replay and n-step returns, its shard's draws counted through a callback. Prints the
complete transitions in replay at the end, how many of them were ever sampled, how many the sum-tree can no
longer draw (priority 0), and a histogram of draws per slot. Asserts nothing.

    .venv/bin/python benchmarks/replay_coverage.py [--config configs/roadrunner-100k.yaml] [--steps 6000]
        [--set prioritized_replay=true --set n_step=3 ...]

One process (world size 1); the run dir is a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hvd_dqn import Callback, Config, Trainer  # noqa: E402


class CountDraws(Callback):
    """Wraps the shard's ``sample`` once the trainer is set up, counting every slot it returns."""

    def on_train_begin(self, trainer) -> None:
        shard = trainer.shard
        self.shard, self.counts = shard, np.zeros(shard.capacity, np.int64)
        sample = shard.sample

        def counted(rng, shape, beta=1.0):
            out = sample(rng, shape, beta)
            np.add.at(self.counts, out[3].ravel(), 1)
            return out

        shard.sample = counted


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "roadrunner-100k.yaml"))
    p.add_argument("--steps", type=int, default=6000, help="total env steps of the run")
    p.add_argument(
        "--set",
        action="append",
        default=["prioritized_replay=true", "n_step=3"],
        help="config overrides KEY=VALUE (default: prioritized_replay=true, n_step=3)",
    )
    args = p.parse_args(argv)
    config = Config.from_yaml(
        args.config,
        [
            *args.set,
            f"total_env_steps={args.steps}",
            f"eval_every={args.steps}",
            "eval_episodes=1",
            f"log_every={args.steps}",
        ],
    )
    counter = CountDraws()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, run_dir=Path(tmp) / "run", callbacks=[counter]).train()
    shard, counts = counter.shard, counter.counts
    slots = np.arange(len(shard))
    complete = slots[shard.buffer.sampleable(slots)]
    drawn = complete[counts[complete] > 0]
    zeroed = int(np.count_nonzero(shard.tree.get(complete) == 0)) if shard.tree is not None else 0
    print(f"config {args.config} {' '.join(args.set)}, {args.steps} env steps")
    print(f"draws: {int(counts.sum())} in all; complete transitions in replay: {len(complete)}")
    print(
        f"complete transitions ever sampled: {len(drawn)} ({len(drawn) / max(1, len(complete)):.1%}); "
        f"at priority 0 (never drawn again): {zeroed}"
    )
    edges = [0, 1, 2, 5, 10, 20, 50, 100, 10**9]
    hist = np.histogram(counts[complete], bins=edges)[0]
    print(
        "draws per complete transition: "
        + ", ".join(
            f"{lo}{'' if hi - lo == 1 else f'-{hi - 1}' if hi < 10**9 else '+'}: {n}"
            for lo, hi, n in zip(edges[:-1], edges[1:], hist)
        )
    )


if __name__ == "__main__":
    main()
