"""A run's whole training state into a checkpoint and back (docs/checkpoints.md), composed of named parts that
each save and restore their own state (``state_dict``/``load_state_dict``): the learner (networks, optimizer,
counters), this rank's replay shard and the task's own state (pending n-step starts, Atari's lives), its actor
(RNG, envs, observations, running returns), the evaluator, and the loop's counters.

``save`` is a collective: every rank calls it at the same loop iteration (decided from global counters or an
allreduced flag). Each rank writes its own replay shard and actor state; rank 0 writes the networks, optimizer and
counters (identical on every rank); after every rank reports success rank 0 writes the manifest and renames the
directory into place. ``restore`` is a collective too, and ends with rank 0's networks broadcast as a guarantee.
The files and formats are ``hvd_dqn.checkpoint``'s.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hvd_dqn import checkpoint, distributed, jsoncodec, rundir
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.envs import env_seeds
from hvd_dqn.errors import clip, excerpt, say
from hvd_dqn.replay import redistribute

LEARNER_KEY = "learner"  # state.json's optional learner state besides the counters (``_learner_extras``)
LOOP_KEYS = ("train_stats", "last_eval", "solved_env_steps", "solved_wall_s")  # state.json's loop, after the counters


class Parts(NamedTuple):
    """The parts of a run whose state a checkpoint holds."""

    learner: Any  # hvd_dqn.learner.Learner
    replay: Any  # hvd_dqn.replay.ReplayShard
    task: Any  # hvd_dqn.tasks.ClassicControl | Atari (the pending n-step starts, Atari's lives)
    actor: Any  # hvd_dqn.actor.Actor
    evaluator: Any  # hvd_dqn.evaluation.Evaluator
    loop: Any  # hvd_dqn.trainer.LoopState


def _learner_extras(counters: dict[str, Any]) -> dict[str, Any]:
    """state.json's LEARNER_KEY: the learner's state besides its counters (a parameter server's staleness
    counts), when it has any."""
    extras = {key: value for key, value in counters.items() if key not in ("updates", "since_sync")}
    return {LEARNER_KEY: extras} if extras else {}


def replay_arrays(parts: Parts) -> dict[str, np.ndarray]:
    """This rank's replay-rank<r>.npz: the replay shard's arrays and the task's own (the n-step starts still
    waiting for their rewards, Atari's lives)."""
    return {**parts.replay.state_dict(), **parts.task.state_dict()}


# ---------------------------------------------------------------------------------------------- save
def save(run_dir: Path, world, config, parts: Parts, started_at: float) -> Path:
    """Write a checkpoint of ``parts`` at the loop's current global env step; return its directory."""
    loop, learner = parts.loop, parts.learner
    final = checkpoint.final_path(run_dir, loop.env_steps)
    tmp = checkpoint.tmp_path(run_dir, loop.env_steps)
    error, written = None, {}
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        mine = [tmp / f"replay-rank{world.rank}.npz", tmp / f"rank{world.rank}.json"]
        checkpoint.write_arrays(mine[0], replay_arrays(parts))
        checkpoint.write_json(mine[1], {"rank": world.rank, **parts.actor.state_dict()})
        if world.is_chief:
            checkpoint.write_model(tmp, learner.checkpoint_objects())
            counters = learner.state_dict()
            loop_state = loop.state_dict()
            checkpoint.write_json(
                tmp / "state.json",
                {
                    "format": checkpoint.FORMAT,
                    "version": checkpoint.VERSION,
                    "env_steps": loop.env_steps,
                    "world_size": world.size,
                    "config": config.to_dict(),
                    "loop": {
                        "vstep": loop_state["vstep"],
                        "env_steps": loop_state["env_steps"],
                        "since_sync": counters["since_sync"],
                        **{k: loop_state[k] for k in LOOP_KEYS},
                    },
                    "updates": counters["updates"],
                    **_learner_extras(counters),
                    "evaluator_count": parts.evaluator.state_dict()["count"],
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
            checkpoint.commit(tmp, final, {name: d for _, files in reports for name, d in files.items()})
            checkpoint.prune(run_dir, config.keep_checkpoints, current=final)
        except OSError as exc:
            error = f"{exc.strerror or exc} ({exc.filename or tmp})"
    failed = distributed.allreduce_sum([float(error is not None)])[0]  # every rank learns of rank 0's rename
    if failed:
        if world.is_chief:  # every rank is past its writes: the half-written directory goes (a full disk)
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in checkpoint.listed(run_dir) if checkpoint.is_complete(p)]
        where = f"this rank: {error}" if error else "another rank"
        intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"checkpoint {final}: writing it failed on {where}; {intact}")
    return final


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


# state.json's keys that restore reads, and their JSON types
STATE_TYPES = {
    "world_size": int,
    "config": dict,
    "loop": dict,
    "updates": int,
    "evaluator_count": int,
    "started_at": (int, float),
    "written_at": (int, float),
}
LOOP_TYPES = {
    "vstep": int,
    "env_steps": int,
    "since_sync": int,
    "train_stats": dict,
    "last_eval": dict,
    "solved_env_steps": (int, type(None)),
    "solved_wall_s": (int, float, type(None)),
}


def _check_state(ckpt: Path, state: dict[str, Any]) -> None:
    """A one-line CheckpointError naming state.json where a key that restore reads is missing or of another type
    (a hand-edited or foreign file whose manifest was rewritten to match)."""
    if not isinstance(state.get(LEARNER_KEY, {}), dict):
        raise checkpoint.damaged(ckpt, f"state.json is damaged ({LEARNER_KEY} is {excerpt(state[LEARNER_KEY])})")
    for where, data, types in (("", state, STATE_TYPES), ("loop.", state.get("loop"), LOOP_TYPES)):
        for key, kind in types.items():
            if key not in data:
                raise checkpoint.damaged(ckpt, f"state.json is damaged (no {where}{key})")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise checkpoint.damaged(
                    ckpt, f"state.json is damaged ({where}{key} is a {type(data[key]).__name__}: {excerpt(data[key])})"
                )


def restore(ckpt: Path, world, config, parts: Parts) -> dict[str, Any]:
    """Load ``ckpt`` into freshly made ``parts`` (same config structure); returns state.json. A checkpoint of
    another world size is resumed by dealing its replay out to this job's ranks (``_load_resized``)."""
    error, state, resized = None, None, None
    try:
        state = checkpoint.peek_state(ckpt)
        saved_size = state.get("world_size") if isinstance(state.get("world_size"), int) else world.size
        # another world size reads every rank's files, so every file's digest is checked
        state = checkpoint.verify(ckpt, world.rank if saved_size == world.size else None)
        _check_state(ckpt, state)
        checkpoint.check_compatible(ckpt, state, config.to_dict(), world.size, resizable=parts.task.resizable)
        checkpoint.read_model(ckpt, parts.learner.checkpoint_objects(restoring=True))
        if saved_size == world.size:
            arrays = checkpoint.read_arrays(ckpt, f"replay-rank{world.rank}.npz")
            parts.replay.load_state_dict(arrays)
            parts.task.load_state_dict(arrays)
        else:
            resized = _load_resized(ckpt, state, world, config, parts)
        if world.rank < saved_size:  # a rank that is new to the run keeps the envs it started with
            restart = env_seeds(config.seed, world.rank, config.num_envs, stream=2 + state["env_steps"])
            parts.actor.load_state_dict(checkpoint.read_json(ckpt, f"rank{world.rank}.json"), restart_seeds=restart)
    except CheckpointError as exc:
        error = exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        error = checkpoint.damaged(ckpt, f"damaged or foreign contents ({type(exc).__name__}: {clip(str(exc), 200)})")
    # Horovod: no rank goes on (into collectives) with a checkpoint another rank could not load.
    if distributed.allreduce_sum([float(error is not None)])[0]:
        raise error or CheckpointError(f"checkpoint {ckpt}: another rank could not load its part (see its error)")
    loop = dict(state["loop"])
    if resized is not None:
        loop.update(vstep=resized.vstep, since_sync=resized.since_sync)
        if world.is_chief:
            say(resized.line)
    parts.loop.load_state_dict(loop)
    parts.learner.load_state_dict(
        {"updates": state["updates"], "since_sync": loop["since_sync"], **state.get(LEARNER_KEY, {})}
    )
    parts.evaluator.load_state_dict({"count": state["evaluator_count"]})
    # Horovod: every rank read the same file; the broadcast makes rank 0's bytes the truth regardless.
    parts.learner.broadcast_restored()
    return state


class Resized(NamedTuple):
    """A resume onto another world size: the loop's counters in the new world's units, and the line that says
    what happened to the replay."""

    vstep: int
    since_sync: int
    line: str


def _load_resized(ckpt: Path, state: dict[str, Any], world, config, parts: Parts) -> Resized:
    """This rank's share of the checkpoint's replay (``hvd_dqn.replay.redistribute``: every transition to exactly
    one rank, the oldest dropped only where the new capacity is smaller), its own n-step starts if it existed
    before, and the counters that depend on the world size."""
    old_size, new_size = state["world_size"], world.size
    new_share, old_share = config.per_rank(new_size), config.per_rank(old_size)
    env_steps = state["loop"]["env_steps"]
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
    since_sync = state["loop"]["since_sync"] * new_share.target_update_every // old_share.target_update_every
    return Resized(env_steps // new_share.global_steps_per_vector_step, since_sync, line)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ranks(first: int, stop: int) -> str:
    return f"rank {first}" if stop - first == 1 else f"ranks {first}..{stop - 1}"
