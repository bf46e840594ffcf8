"""``hvd-dqn train|plan|evaluate|export|plot|table``: train on every rank of a job, then use what it produced.

Started plainly it is one rank; under horovodrun, mpirun or srun each process is one rank of the job.
User mistakes print one line on stderr and exit 2; no traceback. A run stopped by SIGTERM or SIGUSR1 writes a
checkpoint and exits 75 (``hvd-dqn train --resume RUN_DIR`` continues it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hvd_dqn import quiet
from hvd_dqn.errors import JobRefused, UserError, one_line, say

MAX_EPISODES = 1000  # evaluate holds one env per episode
GROUP_KEY = "exp_name"  # hvd_dqn.sweeps.DEFAULT_GROUP_KEY, named here so that --help needs no numpy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvd-dqn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a DQN on every rank of the job")
    train.add_argument("--config", help="YAML experiment file (see configs/); with --resume, default: the run's own")
    train.add_argument(
        "--run-dir", help="where rank 0 writes metrics, summary and the model (default runs/<env>-<time>)"
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint (on any number of ranks, but "
        "an Atari run on the number that wrote it)",
    )
    train.add_argument(
        "--restart",
        action="store_true",
        help="with --run-dir: start afresh there, deleting an earlier run's outputs (only files a run "
        "writes: refused if the dir holds anything else, or if a job is using it)",
    )
    train.add_argument(
        "--elastic",
        action="store_true",
        help="run under horovodrun's elastic mode (--min-np/--max-np/--host-discovery-script): "
        "survive workers that die, take in workers that join",
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable); the value is parsed as YAML",
    )

    pn = sub.add_parser(
        "plan",
        help="what a job of N ranks will do for a config, before it runs: per-rank batch, "
        "learning rate, updates and replay memory",
    )
    pn.add_argument("--config", required=True, help="YAML experiment file (see configs/)")
    pn.add_argument("--np", dest="world_size", type=int, required=True, metavar="N", help="ranks in the job")
    pn.add_argument(
        "--ranks-per-host",
        type=int,
        metavar="R",
        help="ranks sharing one host's memory (default: N, at most this host's cores)",
    )
    pn.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable); the value is parsed as YAML",
    )
    pn.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    ev = sub.add_parser("evaluate", help="greedy episodes of a trained model (a run dir, an export dir or a .keras)")
    ev.add_argument("model", metavar="RUN_DIR_OR_MODEL")
    ev.add_argument("--episodes", type=int, default=10, help=f"greedy episodes, 1 to {MAX_EPISODES} (default 10)")
    ev.add_argument("--seed", type=int, default=12345, help="seeds of the episodes: seed, seed+1, ...")
    ev.add_argument("--env", dest="env_id", help="env id (default: the one the model was trained on)")
    ev.add_argument("--epsilon", type=float, default=0.0, help="probability of a random action (default 0)")
    ev.add_argument("--video", metavar="DIR", help="record every episode as an MP4 into DIR")

    ex = sub.add_parser("export", help="write the Q-network as a TF SavedModel and a .keras file")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("out_dir", metavar="OUT_DIR")

    pl = sub.add_parser("plot", help="learning curves of one or more run dirs into a PNG")
    pl.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png")
    pl.add_argument(
        "--group",
        action="store_true",
        help="one mean curve and min-max band per group of runs (runs of one config: a seed sweep) "
        "instead of one line per run",
    )
    pl.add_argument(
        "--group-by",
        metavar="KEY",
        help=f"with --group: the config key that names a run's group (default {GROUP_KEY}: the config file's name)",
    )

    tb = sub.add_parser("table", help="the results of a set of runs, one markdown line per group (e.g. runs/*)")
    tb.add_argument("run_dirs", metavar="RUN_DIR", nargs="*")
    tb.add_argument(
        "--group-by",
        metavar="KEY",
        default=GROUP_KEY,
        help=f"the config key that names a run's group (default {GROUP_KEY}: the config file's name)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.command in ("evaluate", "export"):
            quiet.install()
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "export":
            from hvd_dqn.serving import export

            print(f"exported to {export(args.run_dir, args.out_dir)}")
            return 0
        if args.command == "plan":
            return _plan(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "table":
            return _table(args)
    except UserError as exc:
        if not getattr(exc, "quiet", False):  # said once for the whole job, by rank 0
            say(f"hvd-dqn: error: {one_line(exc)}")
        return exc.exit_code
    except OSError as exc:
        if args.command == "train":  # a rank's failure: the trainer has already ended the job and said why
            raise
        # a full disk or a vanished file while writing an export or a plot: what was there before is kept
        say(f"hvd-dqn: error: {args.command} failed: {one_line(exc)}")
        return 1
    return 1


def _train(args) -> int:
    # TF C++ start-up chatter (CUDA plugins on CPU hosts) hides our lines
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet.install()  # and what TF_CPP_MIN_LOG_LEVEL cannot silence
    from hvd_dqn.config import Config

    if args.restart and (args.resume is not None or args.run_dir is None or args.elastic):
        raise UserError(
            "--restart starts a new run in an existing --run-dir: it needs --run-dir, and neither "
            "--resume nor --elastic (an elastic job's new rank 0 would delete the job's own checkpoints)"
        )
    if args.resume is not None:
        if args.run_dir is not None and Path(args.run_dir).resolve() != Path(args.resume).resolve():
            raise UserError("--resume RUN_DIR continues in RUN_DIR; drop --run-dir or give the same directory")
        config = Config.from_yaml(args.config, args.overrides) if args.config else _run_config(args)
    elif args.config is None:
        raise UserError("train needs --config CONFIG (a new run) or --resume RUN_DIR (continue one)")
    else:
        config = Config.from_yaml(args.config, args.overrides)
    from hvd_dqn import distributed
    from hvd_dqn.preemption import Preempted, grace_seconds, ignore_stop_signals

    grace_seconds()  # a bad HVD_DQN_TERM_GRACE_S fails here, before Horovod and TensorFlow start
    if args.elastic and config.parameter_server != "none":
        raise UserError(
            f"parameter_server: {config.parameter_server} runs a fixed set of ranks around its server; "
            "it cannot be combined with --elastic"
        )
    if args.elastic:
        from hvd_dqn.elastic import ElasticTrainer as Trainer
    else:
        from hvd_dqn.trainer import Trainer

    try:
        summary = Trainer(
            config, run_dir=args.resume or args.run_dir, resume=args.resume is not None, restart=args.restart
        ).train()
    except JobRefused:
        # every rank of the job is leaving with 2; a launcher that SIGTERMs the others once the first has exited
        # (horovodrun --gloo) must not turn a rank's 2 into 143, so no rank leaves before all ignore the signals.
        # Every rank learnt the refusal from the same collective, so every rank reaches the barrier.
        ignore_stop_signals()
        distributed.barrier()
        raise
    except Preempted as exc:
        ignore_stop_signals()
        if distributed.world().is_chief:
            again = "train --elastic --resume" if args.elastic else "train --resume"
            say(f"hvd-dqn: {exc}; continue with: hvd-dqn {again} {exc.checkpoint.parent.parent}")
        return exc.exit_code
    if distributed.world().is_chief:
        print(
            "hvd-dqn summary: "
            + json.dumps(
                {
                    k: summary[k]
                    for k in (
                        "world_size",
                        "env_steps",
                        "wall_s",
                        "final_eval_return_mean",
                        "solved_env_steps",
                        "solved_wall_s",
                        "best_env_steps",
                        "best_eval_return_mean",
                    )
                }
            )
        )
    return 0


def _run_config(args):
    """The config a run was started with (its config.json), with --set overrides on top."""
    from hvd_dqn import rundir
    from hvd_dqn.config import Config
    from hvd_dqn.yamlinput import parse_overrides

    path = Path(args.resume) / rundir.CONFIG
    if not path.is_file():
        raise UserError(f"--resume {args.resume}: no config.json (not a run directory? give --config)")
    data = rundir.read_json_object(path)
    for recorded in ("world_size", "per_rank"):  # recorded next to the config, not part of it
        data.pop(recorded, None)
    return Config.from_dict({**data, **parse_overrides(args.overrides)}, source=str(path))


def _plan(args) -> int:
    from hvd_dqn.config import Config
    from hvd_dqn.plan import plan, table

    config = Config.from_yaml(args.config, args.overrides)
    result = plan(config, args.world_size, args.ranks_per_host)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.config} ({config.env_id}) on {args.world_size} rank(s):")
        print(table(result))
    return 0


def _plot(args) -> int:
    from hvd_dqn.plotting import plot_runs

    if args.group_by and not args.group:
        raise UserError("--group-by KEY names the groups of --group: give --group too")
    notes: list[str] = []
    out = plot_runs(
        [Path(d) for d in args.run_dirs],
        Path(args.output),
        group_by=(args.group_by or GROUP_KEY) if args.group else None,
        notes=notes,
    )
    for note in notes:
        print(f"hvd-dqn: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _table(args) -> int:
    from hvd_dqn import sweeps

    runs = sweeps.read_runs([Path(d) for d in args.run_dirs])
    groups = sweeps.group(runs, args.group_by)
    print(sweeps.table({name: sweeps.results(members) for name, members in groups.items()}))
    for run in runs:
        for note in run["notes"]:
            print(f"hvd-dqn: {note}", file=sys.stderr)
        if not run["summary"]:
            print(f"hvd-dqn: {run['dir']}: not finished (no summary.json), not counted", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    import gymnasium as gym
    import numpy as np

    from hvd_dqn.envs import atari_options, check_env_id, env_options, make_env
    from hvd_dqn.evaluation import run_episodes, summarize
    from hvd_dqn.rundir import CONFIG, read_json_object
    from hvd_dqn.serving import EXPORT_META, check_matches_env, load_policy

    if not 1 <= args.episodes <= MAX_EPISODES:
        raise UserError(f"--episodes must be 1 to {MAX_EPISODES}, got {args.episodes}")
    if not 0.0 <= args.epsilon <= 1.0:
        raise UserError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    policy = load_policy(args.model)
    env_id = args.env_id or policy.env_id
    if env_id is None:
        raise UserError(f"{args.model}: the env it was trained on is not recorded; name one with --env")
    try:
        check_env_id(env_id)
    except ValueError as exc:
        raise UserError(f"--env: {exc}") from None
    render = {}
    if args.video:
        render = {"render_mode": "rgb_array"}
        # off-screen rendering: no display or sound device is opened (pygame would complain on a headless host)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    # Atari: the preprocessing and episode cap the model was trained with (a run's config.json, an export's
    # export.json; a bare .keras file gets the defaults)
    meta = [Path(args.model) / name for name in (CONFIG, EXPORT_META)]
    trained = next((read_json_object(m) for m in meta if m.is_file()), {})
    # the env's constructor keywords too, where the model is evaluated on the env it was trained on
    same_env = trained.get("env_id") == env_id
    options = (env_options if same_env else atari_options)({**trained, "env_id": env_id})
    envs = [make_env(env_id, **options, **render) for _ in range(args.episodes)]
    check_matches_env(policy, envs[0])
    seeds = [args.seed + i for i in range(args.episodes)]
    if args.video:
        import warnings

        from gymnasium.wrappers import RecordVideo

        with warnings.catch_warnings():  # one wrapper per episode, all into one folder: that is intended
            warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
            # files: seed-<seed>-episode-0.mp4, so each video names the seed that replays it
            envs = [
                RecordVideo(e, args.video, name_prefix=f"seed-{s}", episode_trigger=lambda _: True, disable_logger=True)
                for s, e in zip(seeds, envs)
            ]
    try:
        returns = run_episodes(env_id, policy.q_fn, seeds, args.epsilon, np.random.default_rng(args.seed), envs=envs)
    except gym.error.DependencyNotInstalled as exc:
        raise UserError(f"--video: {exc}") from None
    for env in envs:
        env.close()
    result = summarize(returns)
    print(
        f"{env_id}: {result['eval_episodes']} episodes, mean {result['eval_return_mean']:.2f}, "
        f"std {result['eval_return_std']:.2f}, min {result['eval_return_min']:.2f}, "
        f"max {result['eval_return_max']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
