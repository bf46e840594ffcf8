"""``hvd-dqn plan``: what a job of N ranks will do for a config, before it spends cluster hours: each rank's batch,
learning rate, optimizer constants and schedule (``hvd_dqn.scaling``'s arithmetic, not repeated here), the
sequential updates of the whole run, and the replay memory per rank and per host against this host's memory.
With a parameter server, rank 0 serves and the N - 1 others are the learners the schedule is split over, as in
``hvd_dqn.pstrainer``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hvd_dqn import psmath, scaling
from hvd_dqn.envs import env_options, make_env, stored_obs_dtype
from hvd_dqn.errors import UserError
from hvd_dqn.replay.buffer import available_memory, check_fits

# bytes per slot besides the observations: the ring buffer's action (int32), reward (float32), terminated and
# truncated (bool); the frame buffer's also ep_pos (int32). tests/test_plan.py checks ``replay_bytes`` against the
# nbytes of buffers the trainer's tasks make. (Not hvd_dqn.tasks' own: importing it imports TensorFlow.)
RING_COLUMNS, FRAME_COLUMNS = 4 + 4 + 1 + 1, 4 + 4 + 1 + 1 + 4


def default_ranks_per_host(world_size: int) -> int:
    """One rank per core of a host like this one, as ``horovodrun -np N -H host:slots`` usually fills them."""
    return max(1, min(world_size, os.cpu_count() or 1))


def observation_shape(config) -> tuple[int, ...]:
    """The shape of one observation as the trainer's envs give it (one env is made, then closed)."""
    env = make_env(config.env_id, **env_options(config))
    try:
        return tuple(env.observation_space.shape)
    finally:
        env.close()


def replay_bytes(config, capacity: int, obs_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(slots, buffer bytes, total bytes) of one rank's replay shard of ``capacity`` transitions, without
    allocating it. The buffer: Atari's frame replay (whole rows of num_envs slots, enough rows for a transition's
    frames and n steps, one frame per slot) or the ring buffer (obs and next_obs whole per slot). The shard adds a
    per-slot discount (float32) and, when prioritized, a sum-tree (float64, twice the leaves padded to a power of
    two)."""
    if config.is_atari:
        rows = max(-(-capacity // config.num_envs), config.frame_stack + config.n_step + 1)
        slots = rows * config.num_envs
        buffer = slots * (int(np.prod(obs_shape[1:])) + FRAME_COLUMNS)
    else:
        obs_bytes = int(np.prod(obs_shape)) * np.dtype(stored_obs_dtype(obs_shape)).itemsize
        slots, buffer = capacity, capacity * (2 * obs_bytes + RING_COLUMNS)
    total = buffer + slots * np.dtype(np.float32).itemsize
    if config.prioritized_replay:
        total += 2 * (1 << max(0, (slots - 1).bit_length())) * np.dtype(np.float64).itemsize
    return slots, buffer, total


def optimizer_constants(config, share: scaling.PerRank) -> dict[str, Any]:
    """The optimizer's constants on each rank after the scaling rule (the learning rate is reported apart)."""
    out: dict[str, Any] = {"optimizer": config.optimizer, "max_grad_norm": config.max_grad_norm}
    if config.optimizer in ("adam", "lamb"):
        out.update(adam_beta1=share.adam_beta1, adam_beta2=share.adam_beta2, adam_epsilon=share.adam_epsilon)
    elif config.optimizer == "rmsprop":
        out.update(rmsprop_decay=share.rmsprop_decay, rmsprop_epsilon=share.rmsprop_epsilon, centred=True)
    return out


def plan(
    config, world_size: int, ranks_per_host: int | None = None, obs_shape: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Everything a job of ``world_size`` ranks fixes before it starts, as one JSON-able mapping. A UserError for
    what ``hvd-dqn train`` would refuse at that N (the config cannot be split, no update falls due). ``obs_shape``:
    one observation's, if known (else one env is made to see it)."""
    if world_size < 1:
        raise UserError(f"--np must be at least 1, got {world_size}")
    ranks_per_host = default_ranks_per_host(world_size) if ranks_per_host is None else ranks_per_host
    if not 1 <= ranks_per_host <= world_size:
        raise UserError(f"--ranks-per-host must be 1 to --np ({world_size}), got {ranks_per_host}")
    mode = config.parameter_server
    psmath.check_world(mode, world_size, True)  # the launcher is not known here: as if it were an MPI one
    workers = world_size if mode == "none" else world_size - 1  # the ranks that act and compute gradients
    # the minibatches one optimizer step takes in: one per worker (allreduce, sync), one worker's (async)
    per_step = 1 if mode == "async" else workers
    share = config.per_rank(workers)
    config.check_schedule(share)
    phases = scaling.learning_phases(config, share)
    updates = phases * share.updates_per_phase
    obs_shape = observation_shape(config) if obs_shape is None else tuple(obs_shape)
    slots, buffer, total = replay_bytes(config, share.replay_capacity, obs_shape)
    memory = available_memory()
    try:
        check_fits(buffer, slots, ranks_per_host)  # the trainer's own check, at these ranks per host
        fits = True
    except UserError:
        fits = False
    env_steps = share.vector_steps * share.global_steps_per_vector_step
    return {
        "env_id": config.env_id,
        "world_size": world_size,
        "parameter_server": mode,
        "workers": workers,
        "ps_max_staleness": config.ps_max_staleness if mode == "async" else None,
        "scaling": config.scaling,
        "batch_per_rank": share.batch_size,
        "global_batch": share.batch_size * per_step,
        "learning_rate": share.learning_rate,
        "learning_rate_final": share.learning_rate * config.lr_final_fraction,
        "learning_rate_warmup_from": config.learning_rate if config.lr_warmup_env_steps else None,
        **optimizer_constants(config, share),
        "updates_per_phase": share.updates_per_phase,
        "env_steps_per_phase": share.vector_steps_per_train * share.global_steps_per_vector_step,
        "learning_phases": phases,
        "updates_per_rank": updates,
        "optimizer_steps_per_rank": updates // config.backward_passes_per_step,
        # async: each worker's gradients go in as they arrive, as many as its pace gives
        "gradients_per_worker": None if mode == "async" else updates,
        "target_update_every": share.target_update_every,
        "target_tau": config.target_tau,
        "federated_every": config.federated_every,
        "env_steps": env_steps,
        "env_steps_per_rank": env_steps // workers,
        "samples_per_env_step": updates * share.batch_size * per_step / env_steps,
        "observation_shape": list(obs_shape),
        "replay_capacity_per_rank": slots,
        "replay_bytes_per_rank": total,
        "ranks_per_host": ranks_per_host,
        "replay_bytes_per_host": total * ranks_per_host,
        "available_memory_bytes": memory,
        "replay_fits": fits,
    }


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _g(x: float) -> str:
    return f"{x:.6g}"


def table(p: dict[str, Any]) -> str:
    """The plan as a short two-column table for people."""
    opt = p["optimizer"]
    if opt in ("adam", "lamb"):
        consts = f"beta1 {_g(p['adam_beta1'])}, beta2 {_g(p['adam_beta2'])}, epsilon {_g(p['adam_epsilon'])}"
    elif opt == "rmsprop":
        consts = f"centred, decay {_g(p['rmsprop_decay'])}, epsilon {_g(p['rmsprop_epsilon'])} (added to the root)"
    else:
        consts = "no momentum"
    clip = "none" if p["max_grad_norm"] is None else _g(p["max_grad_norm"])
    lr = _g(p["learning_rate"])
    if p["learning_rate_final"] != p["learning_rate"]:
        lr += f" decaying linearly to {_g(p['learning_rate_final'])}"
    if p["learning_rate_warmup_from"] is not None and p["learning_rate_warmup_from"] != p["learning_rate"]:
        lr += f" (warmed up from {_g(p['learning_rate_warmup_from'])})"
    target = (
        f"tau {_g(p['target_tau'])} after each update"
        if p["target_tau"] is not None
        else f"every {p['target_update_every']:,} updates"
    )
    fits = "fits" if p["replay_fits"] else "does NOT fit (90% of it is the limit)"
    mode, workers = p["parameter_server"], p["workers"]
    updates = (
        f"{p['updates_per_rank']:,} one after another, in {p['learning_phases']:,} phases "
        f"({_g(p['samples_per_env_step'])} samples replayed per env step)"
    )
    if mode == "none":
        rows = [
            ("ranks", f"{p['world_size']} (scaling {p['scaling']}), {p['ranks_per_host']} per host"),
            ("batch per rank", f"{p['batch_per_rank']:,} (global batch {p['global_batch']:,})"),
            ("learning rate per rank", lr),
        ]
        env_steps = f"{p['env_steps_per_rank']:,} per rank"
    else:
        if mode == "sync":
            step = f"the mean of one gradient from each of the {workers} workers"
            batch = f"global batch {p['global_batch']:,}"
            updates += f"; each worker computes {p['gradients_per_worker']:,} gradients"
        else:
            step = f"each worker's gradient as it arrives, at most {p['ps_max_staleness']} server steps stale"
            batch = "one worker's minibatch per server step"
        rows = [
            (
                "ranks",
                f"{p['world_size']} (scaling {p['scaling']}): the server and {workers} workers, "
                f"{p['ranks_per_host']} per host",
            ),
            (
                "server",
                f"rank 0, {mode}: holds the weights and the optimizer, takes no env steps; a step applies {step}",
            ),
            ("batch per worker", f"{p['batch_per_rank']:,} ({batch})"),
            ("learning rate", f"{lr} (the server's)"),
        ]
        env_steps = f"{p['env_steps_per_rank']:,} per worker"
    rows += [
        ("optimizer", f"{opt}: {consts}; gradient clipping {clip}"),
        ("updates per phase", f"{p['updates_per_phase']:,} every {p['env_steps_per_phase']:,} global env steps"),
        ("target network", target),
        ("updates per rank" if mode == "none" else "server updates", updates),
        ("env steps", f"{p['env_steps']:,} ({env_steps})"),
        ("replay per rank", f"{p['replay_capacity_per_rank']:,} transitions, {_bytes(p['replay_bytes_per_rank'])}"),
        (
            "replay per host",
            f"{_bytes(p['replay_bytes_per_host'])} of {_bytes(p['available_memory_bytes'])} available here: {fits}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
