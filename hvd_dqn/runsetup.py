"""Opening a run directory for a job, before anything trains: the Trainer's arguments, the run dir's name, its
lock (and ``--restart``'s clearing of an earlier run's outputs under it), the checkpoint to resume from, the output
files rank 0 writes, and the replay shard, refused before it is allocated when the host's ranks together would not
fit in its memory.

Each step that leads to a collective makes the same call on every rank (the refusals are broadcast), so the ranks
of a refused job all leave together instead of waiting for rank 0 in the next collective.
"""

from __future__ import annotations

import time
from pathlib import Path

from hvd_dqn import checkpoint, distributed, rundir, trainstate
from hvd_dqn.config import Config
from hvd_dqn.errors import JobRefused, UserError, say
from hvd_dqn.metrics import RunLogger
from hvd_dqn.runlock import RunDirInUse, RunLock
from hvd_dqn.scaling import PerRank


def check_arguments(config, run_dir, resume: bool, restart: bool, q_network) -> None:
    """The Trainer's arguments, before anything starts: a one-line error for a combination that cannot run."""
    if not isinstance(config, Config):
        raise TypeError("Trainer needs a hvd_dqn.Config")
    if resume and run_dir is None:
        raise UserError("resume needs the run directory of the run to continue")
    if restart and (resume or run_dir is None):
        raise UserError("restart starts a new run in an existing run directory: give run_dir, without resume")
    if q_network is not None and not callable(q_network):
        raise TypeError("q_network must be a function (observation_space, n_actions, config) -> tf_keras Model")


def resolve(run_dir: Path | None, env_id: str, world: distributed.World) -> Path:
    """The run dir, created by rank 0: the one given, else a new ``runs/<env>-<time>`` named by rank 0 (two runs
    started in the same second get -2, -3, ...) and broadcast."""
    if run_dir is None:
        name = None
        if world.is_chief:
            base = name = f"{env_id.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
            n = 1
            while (Path(rundir.RUNS) / name).exists():
                n += 1
                name = f"{base}-{n}"
        run_dir = Path(rundir.RUNS) / distributed.broadcast_object(name)
    try:
        if world.is_chief:
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"run dir {run_dir}: cannot create it ({exc.strerror})") from None
    return run_dir


def lock(run_dir: Path, world: distributed.World, restart: bool) -> RunLock | None:
    """Rank 0 locks the run dir (docs/reliability.md) before anything in it is read, written or pruned, and tells
    every rank the outcome: a refusal raises RunDirInUse on every rank, and only rank 0 says why. ``restart``: the
    earlier run's outputs are deleted under the lock (``rundir.clear_earlier_run``), after a dry run that refuses a
    dir that is not a run's before the lock file is created in it. Returns rank 0's lock, None on the others."""
    refusal, held = None, None
    if world.is_chief:
        try:
            if restart:
                rundir.clear_earlier_run(run_dir, dry_run=True)
            held = RunLock(run_dir).acquire()
            if restart:  # under the lock: no other job is writing what is deleted
                cleared = rundir.clear_earlier_run(run_dir)
                if cleared:
                    say(f"hvd-dqn: run dir {run_dir}: --restart deleted the earlier run's {', '.join(cleared)}")
        except UserError as exc:
            refusal = str(exc)
        else:
            if held.took_over:
                say(
                    f"hvd-dqn: run dir {run_dir}: the job that held it last ended without releasing it "
                    f"({held.took_over}); this job takes it over"
                )
    refusal = distributed.broadcast_object(refusal)
    if refusal is not None:
        if held is not None:  # the lock was taken, then restart's clearing failed on rank 0
            held.release()
        raise RunDirInUse(refusal, quiet=not world.is_chief)
    return held


def resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from (None: a new run), read after the lock; refuses a new run into a run dir
    that holds checkpoints, and one whose checkpoints/ is a link out of the run dir (pruning deletes old
    checkpoints there, which may be another run's)."""
    ckpts = checkpoint.checkpoints_dir(run_dir)
    outside = rundir.leads_outside(run_dir, ckpts)
    if outside is not None:
        raise UserError(
            f"run dir {run_dir}: {rundir.CHECKPOINTS} is a symlink to {outside}, outside the run dir; "
            f"hvd-dqn deletes old checkpoints in it and follows no link out of a run dir: remove the "
            f"link, or give a --run-dir on that filesystem"
        )
    resume_from = checkpoint.find_for_resume(run_dir) if resume else None
    if resume_from is None and checkpoint.listed(run_dir):
        # a fresh run would mix its metrics and checkpoints with the earlier run's (and a later --resume could pick
        # up the earlier run's newest checkpoint); its files are not ours to delete
        raise UserError(
            f"run dir {run_dir} holds the checkpoints of an earlier run: continue it with "
            f"--resume {run_dir}, or train into another --run-dir"
        )
    return resume_from


def open_outputs(
    run_dir: Path, world: distributed.World, config: Config, share: PerRank, resume_from: Path | None
) -> RunLogger:
    """Rank 0: metrics.jsonl trimmed to the checkpoint, the logger, config.json (with what each rank runs after the
    scaling rule). A full or read-only disk is a one-line UserError; the rewrites are atomic (temp file, then
    rename), so a resumed run's files stay whole."""
    try:
        if resume_from is not None and world.is_chief:
            trainstate.trim_metrics(run_dir, resume_from)
        logger = RunLogger(
            run_dir, enabled=world.is_chief, total_env_steps=config.total_env_steps, fresh=resume_from is None
        )
        logger.write_json(rundir.CONFIG, {**config.to_dict(), "world_size": world.size, "per_rank": share.model_dump()})
    except OSError as exc:
        name = Path(exc.filename).name if exc.filename else "its files"
        raise UserError(
            f"run dir {run_dir}: cannot write {name} ({exc.strerror or exc}); free space or make it "
            f"writable, then run again"
        ) from None
    return logger


def make_replay(task, capacity: int, obs_shape: tuple[int, ...], world: distributed.World, agree: bool = True):
    """This rank's replay shard. Its buffer refuses, before allocating, a shard that would not fit this host's
    memory together with the shards of the host's other ranks (``world.local_size``). ``agree``: the ranks share
    their outcomes (a collective), so a refusal on any rank ends every rank with exit 2, said once, by rank 0 (the
    others may have made their shards, untouched, before learning of it)."""
    refusal, shard = None, None
    try:
        shard = task.make_replay(capacity, obs_shape, world.local_size)
    except UserError as exc:
        if not agree:
            raise
        refusal = str(exc)
    if not agree:
        return shard
    refusals = distributed.allgather_object(refusal)
    first = next((rank for rank, r in enumerate(refusals) if r is not None), None)
    if first is not None:
        where = "" if first == 0 else f"rank {first}: "
        raise JobRefused(where + refusals[first], quiet=not world.is_chief)
    return shard
