"""``hvd-dqn train --config FILE [--run-dir DIR] [--set key=value ...]``.

Started plainly it is one rank; under horovodrun, mpirun or srun each process is one rank of the job.
User mistakes print one line on stderr and exit 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from hvd_dqn.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvd-dqn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a DQN on every rank of the job")
    train.add_argument("--config", required=True, help="YAML experiment file (see configs/)")
    train.add_argument("--run-dir", help="where rank 0 writes metrics, summary and the model (default runs/<env>-<time>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable); the value is parsed as YAML")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except UserError as exc:
        print(f"hvd-dqn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 1


def _train(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ start-up chatter (CUDA plugins on CPU hosts) hides our lines
    from hvd_dqn.config import Config

    config = Config.from_yaml(args.config, args.overrides)
    from hvd_dqn.trainer import Trainer

    summary = Trainer(config, run_dir=args.run_dir).train()
    from hvd_dqn import distributed

    if distributed.world().is_chief:
        print("hvd-dqn summary: " + json.dumps({k: summary[k] for k in (
            "world_size", "env_steps", "wall_s", "final_eval_return_mean", "solved_env_steps", "solved_wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
