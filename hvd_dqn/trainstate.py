"""A run's whole training state into a checkpoint and back (docs/checkpoints.md): the training state, one record
of the run's counters (``hvd_dqn.trainingstate``), and named parts that each save and restore their own state
(``state_dict``/``load_state_dict``): the learner's networks and optimizer, this rank's replay shard and the task's
own state (pending n-step starts, Atari's lives), and its actor (RNG, envs, observations, running returns).

``save`` is a collective: every rank calls it at the same loop iteration (decided from global counters or an
allreduced flag). Each rank writes its own replay shard and actor state; rank 0 writes the networks, optimizer and
the training state (identical on every rank); after every rank reports success rank 0 writes the manifest and
renames the directory into place. ``restore`` is a collective too, and ends with rank 0's networks broadcast as a
guarantee. The files and formats are ``hvd_dqn.checkpoint``'s.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hvd_dqn import checkpoint, distributed, jsoncodec, rundir
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.errors import clip, excerpt, say
from hvd_dqn.replay import redistribute
from hvd_dqn.seeds import restart_seeds
from hvd_dqn.trainingstate import TrainingState, from_version2

LEARNER_KEY = "learner"  # state.json's optional learner state besides the counters (``_learner_extras``)


class Parts(NamedTuple):
    """The parts of a run whose state a checkpoint holds besides the training state."""

    learner: Any  # hvd_dqn.learner.Learner
    replay: Any  # hvd_dqn.replay.ReplayShard
    task: Any  # hvd_dqn.tasks.ClassicControl | Atari (the pending n-step starts, Atari's lives)
    actor: Any  # hvd_dqn.actor.Actor


class Restored(NamedTuple):
    """What ``restore`` read besides the parts' own state."""

    state: TrainingState  # in this job's units where the world size changed
    world_size: int  # the checkpoint's
    started_at: float  # time.time() of the run's first start
    written_at: float  # time.time() of the checkpoint's write


def replay_arrays(parts: Parts) -> dict[str, np.ndarray]:
    """This rank's replay-rank<r>.npz: the replay shard's arrays and the task's own (the n-step starts still
    waiting for their rewards, Atari's lives)."""
    return {**parts.replay.state_dict(), **parts.task.state_dict()}


# ---------------------------------------------------------------------------------------------- save
def save(run_dir: Path, world, config, parts: Parts, state: TrainingState, started_at: float, final=False) -> Path:
    """Write a checkpoint of ``state`` and ``parts`` at the state's global env step; return its directory.
    ``final``: the run's last, written after its outputs, which a failure names as saved."""
    learner = parts.learner
    path = checkpoint.final_path(run_dir, state.env_steps)
    tmp = checkpoint.tmp_path(run_dir, state.env_steps)
    error, written = None, {}
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        mine = [tmp / f"replay-rank{world.rank}.npz", tmp / f"rank{world.rank}.json"]
        checkpoint.write_arrays(mine[0], replay_arrays(parts))
        checkpoint.write_json(mine[1], {"rank": world.rank, **parts.actor.state_dict()})
        if world.is_chief:
            checkpoint.write_model(tmp, learner.checkpoint_objects())
            checkpoint.write_json(
                tmp / "state.json",
                {
                    "format": checkpoint.FORMAT,
                    "version": checkpoint.VERSION,
                    "env_steps": state.env_steps,
                    "world_size": world.size,
                    "config": config.to_dict(),
                    "training": state.to_dict(),
                    **_learner_extras(learner.state_dict()),
                    "started_at": started_at,
                    "written_at": time.time(),
                    "weights_checksum": distributed.weights_checksum(learner.online.variables),
                },
            )
            mine += [tmp / "state.json", *sorted(tmp.glob(checkpoint.MODEL_PREFIX + ".*"))]
        written = checkpoint.describe(mine)
    except OSError as exc:
        error = f"{exc.strerror or exc} ({exc.filename or tmp})"
    # Horovod: doubles as the barrier after which every rank's files are complete; rank 0 learns their digests.
    reports = distributed.allgather_object((error, written))
    failed = any(e is not None for e, _ in reports)
    if not failed and world.is_chief:
        try:
            checkpoint.commit(tmp, path, {name: d for _, files in reports for name, d in files.items()})
            checkpoint.prune(run_dir, config.keep_checkpoints, current=path)
        except OSError as exc:
            error = f"{exc.strerror or exc} ({exc.filename or tmp})"
    failed = distributed.allreduce_sum([float(error is not None)])[0]  # every rank learns of rank 0's rename
    if failed:
        if world.is_chief:  # every rank is past its writes: the half-written directory goes (a full disk)
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in checkpoint.listed(run_dir) if checkpoint.is_complete(p)]
        where = f"this rank: {error}" if error else "another rank"
        intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        saved = f"; the finished run's q_network.keras and summary.json are saved in {run_dir}" if final else ""
        raise CheckpointError(f"checkpoint {path}: writing it failed on {where}; {intact}{saved}")
    return path


def _learner_extras(counters: dict[str, Any]) -> dict[str, Any]:
    """state.json's LEARNER_KEY: the learner's state besides its counters (a parameter server's staleness
    counts), when it has any."""
    extras = {key: value for key, value in counters.items() if key not in ("updates", "since_sync")}
    return {LEARNER_KEY: extras} if extras else {}


# ---------------------------------------------------------------------------------------------- restore
def trim_metrics(run_dir: Path, ckpt: Path) -> None:
    """Drop the metrics rows logged after ``ckpt`` (a run killed outright between checkpoints logged steps that
    the resumed run does again), so metrics.jsonl holds each step once. Rank 0, before its logger opens it."""
    metrics = Path(run_dir) / rundir.METRICS
    step = int(ckpt.name.split("-")[-1])
    if not metrics.is_file():
        return
    lines = metrics.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) != len(lines):
        rundir.atomic_write_text(metrics, "".join(kept))


def _row_step(line: str) -> float:
    try:
        return json.loads(line).get("env_steps", 0)
    except ValueError:
        return float("inf")  # a half-written last line of a killed run


# state.json's keys that restore reads besides the training state, and their JSON types
STATE_TYPES = {"world_size": int, "config": dict, "started_at": (int, float), "written_at": (int, float)}
# where checkpoint versions 1 and 2 kept the training state (``trainingstate.from_version2``)
VERSION2_TYPES = {"loop": dict, "updates": int, "evaluator_count": int}


def read_training_state(ckpt: Path, state: dict[str, Any]) -> TrainingState:
    """state.json's training state (version 3's ``training``; versions 1 and 2 kept it under other keys, still
    read); a one-line CheckpointError naming state.json where a key that restore reads is missing or of another
    type (a hand-edited or foreign file whose manifest was rewritten to match)."""
    older = state.get("version") in (1, 2)
    for key, kind in {**STATE_TYPES, **(VERSION2_TYPES if older else {"training": dict})}.items():
        if key not in state:
            raise checkpoint.damaged(ckpt, f"state.json is damaged (no {key})")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise checkpoint.damaged(
                ckpt, f"state.json is damaged ({key} is a {type(state[key]).__name__}: {excerpt(state[key])})"
            )
    if not isinstance(state.get(LEARNER_KEY, {}), dict):
        raise checkpoint.damaged(ckpt, f"state.json is damaged ({LEARNER_KEY} is {excerpt(state[LEARNER_KEY])})")
    try:
        if older:
            return TrainingState.from_dict(from_version2(state), where="loop.")
        return TrainingState.from_dict(state["training"], where="training.")
    except ValueError as exc:
        raise checkpoint.damaged(ckpt, f"state.json is damaged ({exc})") from None


def restore(ckpt: Path, world, config, parts: Parts) -> Restored:
    """Load ``ckpt`` into freshly made ``parts`` (same config structure) and return its training state. A
    checkpoint of another world size is resumed by dealing its replay out to this job's ranks (``_load_resized``)."""
    error, state, training, resized = None, None, None, None
    try:
        state = checkpoint.peek_state(ckpt)
        saved_size = state.get("world_size") if isinstance(state.get("world_size"), int) else world.size
        # another world size reads every rank's files, so every file's digest is checked
        state = checkpoint.verify(ckpt, world.rank if saved_size == world.size else None)
        training = read_training_state(ckpt, state)
        checkpoint.check_compatible(ckpt, state, config.to_dict(), world.size, resizable=parts.task.resizable)
        checkpoint.read_model(ckpt, parts.learner.checkpoint_objects(restoring=True))
        if saved_size == world.size:
            arrays = checkpoint.read_arrays(ckpt, f"replay-rank{world.rank}.npz")
            parts.replay.load_state_dict(arrays)
            parts.task.load_state_dict(arrays)
        else:
            resized = _load_resized(ckpt, saved_size, training, world, config, parts)
        if world.rank < saved_size:  # a rank that is new to the run keeps the envs it started with
            restart = restart_seeds(config.seed, world.rank, config.num_envs, training.env_steps)
            parts.actor.load_state_dict(checkpoint.read_json(ckpt, f"rank{world.rank}.json"), restart_seeds=restart)
        if resized is not None:
            training = replace(training, vstep=resized.vstep, since_sync=resized.since_sync)
        # inside the agreement below: a damaged learner entry (one rank's, such as the server's staleness
        # counts) ends every rank with its one line, not one rank with a traceback while the others wait
        parts.learner.load_state_dict(
            {"updates": training.updates, "since_sync": training.since_sync, **state.get(LEARNER_KEY, {})}
        )
    except CheckpointError as exc:
        error = exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        error = checkpoint.damaged(ckpt, f"damaged or foreign contents ({type(exc).__name__}: {clip(str(exc), 200)})")
    # Horovod: no rank goes on (into collectives) with a checkpoint another rank could not load.
    if distributed.allreduce_sum([float(error is not None)])[0]:
        raise error or CheckpointError(f"checkpoint {ckpt}: another rank could not load its part (see its error)")
    if resized is not None and world.is_chief:
        say(resized.line)
    if parts.actor.restart_reason is not None and world.is_chief:  # the same on every rank
        say(
            f"hvd-dqn: resuming from {ckpt.name}, the episodes start afresh: {parts.actor.restart_reason}; "
            "the rest is restored, but the run is not bit-exact"
        )
    # Horovod: every rank read the same file; the broadcast makes rank 0's bytes the truth regardless.
    parts.learner.broadcast_restored()
    return Restored(training, state["world_size"], state["started_at"], state["written_at"])


class Resized(NamedTuple):
    """A resume onto another world size: the loop's counters in the new world's units, and the line that says
    what happened to the replay."""

    vstep: int
    since_sync: int
    line: str


def _load_resized(ckpt: Path, old_size: int, training: TrainingState, world, config, parts: Parts) -> Resized:
    """This rank's share of the checkpoint's replay (``hvd_dqn.replay.redistribute``: every transition to exactly
    one rank, the oldest dropped only where the new capacity is smaller), its own n-step starts if it existed
    before, and the counters that depend on the world size."""
    new_size = world.size
    new_share, old_share = config.per_rank(new_size), config.per_rank(old_size)
    env_steps = training.env_steps
    if env_steps % new_share.global_steps_per_vector_step:
        raise checkpoint.CheckpointError(
            f"checkpoint {ckpt}: written at global env step {env_steps}, which {new_size} ranks of "
            f"{config.num_envs} envs ({new_share.global_steps_per_vector_step} env steps per vector step) cannot "
            f"reach; resume with {old_size} ranks, or from a checkpoint at a learning phase's end"
        )
    prioritized = parts.replay.tree is not None
    files = [checkpoint.read_arrays(ckpt, f"replay-rank{r}.npz") for r in range(old_size)]
    max_priority = max(float(f["shard_max_priority"]) for f in files) if prioritized else None
    weight = max_priority**config.priority_alpha if prioritized else None
    ordered, flushed_total = [], 0
    for r, arrays in enumerate(files):
        flushed = None
        if r >= new_size:  # a rank that is gone: its envs end here, their n-step starts become transitions
            last_obs = jsoncodec.from_json(checkpoint.read_json(ckpt, f"rank{r}.json")["obs"])
            flushed = parts.task.flushed(arrays, last_obs)
            flushed_total += 0 if flushed is None else len(flushed.action)
        ordered.append(redistribute.in_order(arrays, old_share.replay_capacity, weight, flushed))
    capacity = parts.replay.capacity
    mine = redistribute.deal([len(o["action"]) for o in ordered], new_size, world.rank, capacity)
    parts.replay.load_state_dict(redistribute.shard_arrays(ordered, mine, capacity, max_priority))
    if world.rank < old_size:
        parts.task.load_state_dict(files[world.rank])
    total = sum(len(o["action"]) for o in ordered)
    flushed_note = f" ({flushed_total} of them n-step starts of the envs that ended)" if flushed_total else ""
    dropped = (
        (
            f"; the newest {total - mine.dropped} kept, the {mine.dropped} oldest dropped (replay capacity "
            f"{capacity} per rank)"
        )
        if mine.dropped
        else ""
    )
    envs = (
        f"{_ranks(new_size, old_size)}'s envs ended"
        if new_size < old_size
        else f"{_ranks(old_size, new_size)} start new envs"
    )
    line = (
        f"hvd-dqn: {ckpt.name} was written by {old_size} ranks, this job has {new_size}: {total} replay "
        f"transitions{flushed_note} dealt out to {_plural(new_size, 'rank')}{dropped}; {envs}; the scaling "
        f"rule is recomputed for {_plural(new_size, 'rank')}"
    )
    since_sync = training.since_sync * new_share.target_update_every // old_share.target_update_every
    return Resized(env_steps // new_share.global_steps_per_vector_step, since_sync, line)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ranks(first: int, stop: int) -> str:
    return f"rank {first}" if stop - first == 1 else f"ranks {first}..{stop - 1}"
