"""A trainer's whole state into a checkpoint and back (README "Checkpoints and resume").

``save`` is a collective: every rank calls it at the same loop iteration (decided from global counters or an
allreduced flag). Each rank writes its own replay shard and env state; rank 0 writes the networks, optimizer and
counters (identical on every rank); after every rank reports success rank 0 writes the manifest and renames the
directory into place. ``restore`` is a collective too, and ends with rank 0's networks broadcast as a guarantee.
The files and formats are ``hvd_dqn.checkpoint``'s.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn import checkpoint, distributed, envstate
from hvd_dqn.checkpoint import CheckpointError
from hvd_dqn.errors import clip, excerpt


# ---------------------------------------------------------------------------------------------- per-rank arrays
def replay_arrays(shard, nstep) -> dict[str, np.ndarray]:
    """This rank's replay shard (the buffer's own ``state_dict`` plus the shard's discounts and priorities) and
    the n-step starts still waiting for their rewards."""
    arrays = dict(shard.buffer.state_dict())
    size = int(arrays["size"])
    arrays["shard_discount"] = shard.discount[:size]
    if shard.tree is not None:
        arrays["shard_priority"] = shard.tree.get(np.arange(shard._tracked))
        arrays["shard_max_priority"] = np.asarray(shard.max_priority)
    if nstep is not None:
        pending = nstep._pending
        arrays["nstep_len"] = np.array([len(p) for p in pending], np.int64)
        rows = [row for p in pending for row in p]
        if rows:
            arrays["nstep_obs"] = np.stack([r[0] for r in rows])
            arrays["nstep_action"] = np.array([r[1] for r in rows])
            arrays["nstep_reward"] = np.array([r[2] for r in rows])
    return arrays


def load_replay_arrays(arrays: dict[str, np.ndarray], shard, nstep) -> None:
    shard.buffer.load_state_dict(arrays)
    size = int(arrays["size"])
    shard.discount[:size] = arrays["shard_discount"]
    if shard.tree is not None:
        priority = arrays["shard_priority"]
        # the tree is a function of its leaves (each parent = left + right), so rebuilding them is exact
        shard.tree.set(np.arange(len(priority)), priority)
        shard._tracked = len(priority)
        shard.max_priority = float(arrays["shard_max_priority"])
    if nstep is not None:
        lengths = arrays["nstep_len"]
        if len(lengths) != len(nstep._pending):
            raise ValueError("n-step state of another number of envs")
        k = 0
        for pending, n in zip(nstep._pending, lengths):
            pending.clear()
            for _ in range(int(n)):
                pending.append((arrays["nstep_obs"][k], arrays["nstep_action"][k], arrays["nstep_reward"][k]))
                k += 1


# ---------------------------------------------------------------------------------------------- save
def save(trainer) -> Path:
    """Write a checkpoint of ``trainer`` at its current global env step; return its directory."""
    cfg, s, world = trainer.config, trainer.state, trainer.world
    final = checkpoint.final_path(trainer.run_dir, s.env_steps)
    tmp = checkpoint.tmp_path(trainer.run_dir, s.env_steps)
    started = time.perf_counter()
    error, written = None, {}
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        mine = [tmp / f"replay-rank{world.rank}.npz", tmp / f"rank{world.rank}.json"]
        checkpoint.write_arrays(mine[0], replay_arrays(trainer.shard, trainer.nstep))
        checkpoint.write_json(mine[1], {
            "rank": world.rank,
            "rng": trainer.rng.bit_generator.state,
            "envs": envstate.capture(trainer.envs),
            "obs": checkpoint.to_json(trainer.obs),
            "episode_return": checkpoint.to_json(s.episode_return),
            "finished_returns": list(s.finished_returns),
        })
        if world.is_chief:
            checkpoint.write_model(tmp, model_objects(trainer.learner))
            checkpoint.write_json(tmp / "state.json", {
                "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                "env_steps": s.env_steps, "world_size": world.size, "config": cfg.to_dict(),
                "loop": {"vstep": s.vstep, "env_steps": s.env_steps, "since_sync": trainer.learner.since_sync,
                         "train_stats": s.phase_stats, "last_eval": s.last_eval,
                         "solved_env_steps": s.solved_env_steps, "solved_wall_s": s.solved_wall_s},
                "updates": trainer.learner.updates, "evaluator_count": trainer.evaluator.count,
                "started_at": trainer.started_at, "written_at": time.time(),
                "weights_checksum": distributed.weights_checksum(trainer.learner.online.variables),
            })
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
            checkpoint.prune(trainer.run_dir, cfg.keep_checkpoints, current=final)
        except OSError as exc:
            error = f"{exc.strerror or exc} ({exc.filename or tmp})"
    failed = distributed.allreduce_sum([float(error is not None)])[0]  # every rank learns of rank 0's rename
    if failed:
        if world.is_chief:  # every rank is past its writes: the half-written directory goes (a full disk)
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in checkpoint.listed(trainer.run_dir) if checkpoint.is_complete(p)]
        where = f"this rank: {error}" if error else "another rank"
        intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"checkpoint {final}: writing it failed on {where}; {intact}")
    trainer.last_checkpoint_s = time.perf_counter() - started
    return final


def model_objects(learner) -> dict[str, Any]:
    objects = {"online": learner.online, "target": learner.target, "optimizer": learner.optimizer}
    if learner.averaged is not None:
        objects["averaged"] = learner.averaged
    return objects


# ---------------------------------------------------------------------------------------------- restore
def trim_metrics(run_dir: Path, ckpt: Path) -> None:
    """Drop the metrics rows logged after ``ckpt`` (a run killed outright between checkpoints logged steps that
    the resumed run does again), so metrics.jsonl holds each step once. Rank 0, before its logger opens it."""
    metrics = Path(run_dir) / "metrics.jsonl"
    step = int(ckpt.name.split("-")[-1])
    if not metrics.is_file():
        return
    lines = metrics.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) != len(lines):
        from hvd_dqn.metrics import atomic_write_text

        atomic_write_text(metrics, "".join(kept))


def _row_step(line: str) -> float:
    try:
        return json.loads(line).get("env_steps", 0)
    except ValueError:
        return float("inf")  # a half-written last line of a killed run


# state.json's keys that restore reads, and their JSON types
STATE_TYPES = {"world_size": int, "config": dict, "loop": dict, "updates": int, "evaluator_count": int,
               "started_at": (int, float), "written_at": (int, float)}
LOOP_TYPES = {"vstep": int, "env_steps": int, "since_sync": int, "train_stats": dict, "last_eval": dict,
              "solved_env_steps": (int, type(None)), "solved_wall_s": (int, float, type(None))}


def _check_state(ckpt: Path, state: dict[str, Any]) -> None:
    """A one-line CheckpointError naming state.json where a key that restore reads is missing or of another type
    (a hand-edited or foreign file whose manifest was rewritten to match)."""
    for where, data, types in (("", state, STATE_TYPES), ("loop.", state.get("loop"), LOOP_TYPES)):
        for key, kind in types.items():
            if key not in data:
                raise checkpoint.damaged(ckpt, f"state.json is damaged (no {where}{key})")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise checkpoint.damaged(ckpt, f"state.json is damaged ({where}{key} is a "
                                               f"{type(data[key]).__name__}: {excerpt(data[key])})")


def restore(trainer, ckpt: Path) -> dict[str, Any]:
    """Load ``ckpt`` into a freshly set-up trainer (same config structure and world size); returns state.json."""
    world, s = trainer.world, trainer.state
    error, state = None, None
    try:
        state = checkpoint.verify(ckpt, world.rank)
        _check_state(ckpt, state)
        checkpoint.check_compatible(ckpt, state, trainer.config.to_dict(), world.size)
        learner = trainer.learner
        # Adam's slots exist only after a first step; create them now so the checkpoint restores into them
        learner.optimizer.build(learner.online.trainable_variables)
        checkpoint.read_model(ckpt, model_objects(learner))
        load_replay_arrays(checkpoint.read_arrays(ckpt, f"replay-rank{world.rank}.npz"), trainer.shard, trainer.nstep)
        mine = checkpoint.read_json(ckpt, f"rank{world.rank}.json")
        trainer.rng.bit_generator.state = mine["rng"]
        if mine["envs"] is not None:
            envstate.restore(trainer.envs, mine["envs"])
        else:  # an env whose state cannot be captured: fresh episodes, seeded apart from the run's first ones
            from hvd_dqn.envs import env_seeds

            trainer.obs, info = trainer.envs.reset(
                seed=env_seeds(trainer.config.seed, world.rank, trainer.config.num_envs, stream=2 + state["env_steps"]))
            trainer.episodes_restarted(info)
            mine["obs"], mine["episode_return"] = None, None
        if mine["obs"] is not None:
            trainer.obs = checkpoint.from_json(mine["obs"])
            s.episode_return = checkpoint.from_json(mine["episode_return"])
        s.finished_returns = list(mine["finished_returns"])
    except CheckpointError as exc:
        error = exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        error = checkpoint.damaged(ckpt, f"damaged or foreign contents ({type(exc).__name__}: "
                                         f"{clip(str(exc), 200)})")
    # Horovod: no rank goes on (into collectives) with a checkpoint another rank could not load.
    if distributed.allreduce_sum([float(error is not None)])[0]:
        raise error or CheckpointError(f"checkpoint {ckpt}: another rank could not load its part (see its error)")
    loop = state["loop"]
    s.vstep, s.env_steps, trainer.learner.since_sync = loop["vstep"], loop["env_steps"], loop["since_sync"]
    s.phase_stats, s.last_eval = loop["train_stats"], loop["last_eval"]
    s.solved_env_steps, s.solved_wall_s = loop["solved_env_steps"], loop["solved_wall_s"]
    trainer.learner.updates = state["updates"]
    trainer.evaluator.count = state["evaluator_count"]
    # Horovod: every rank read the same file; the broadcast makes rank 0's bytes the truth regardless.
    trainer.learner.broadcast_restored()
    trainer.q_fn = trainer.learner.q_fn()
    return state
