"""The scaling rule: what each rank of an N-rank job does for a config, which describes the whole experiment.

Step counts are global, so a config means the same experiment at any world size. The ``scaling`` key says how the
batch, learning rate and update counts behave as N grows (docs/scaling.md):
- ``strong``: the global batch and learning rate are the config's at any N; each rank takes batch / N.
- ``weak``: the config is the run at N = 1; N ranks take N times the batch at N times the learning rate, in 1/N as
  many updates.
- ``adam_sqrt``: N times the batch at sqrt(N) times the learning rate (Adam's epsilon / sqrt(N)) in K = N / boost
  times fewer updates, with Adam's betas raised to the K-th power so their memory spans the same env steps.
- ``lamb_sqrt``: adam_sqrt for ``optimizer: lamb``, at sqrt(N * K) times the learning rate.
- ``sqrt``: adam_sqrt for Adam or RMSProp (Malladi et al. 2022 derive the rule for both): N^scaling_lr_exponent
  times the learning rate, the optimizer's decays (Adam's betas, RMSProp's rho) to the K-th power, its epsilon
  / sqrt(N).
  It divides the updates of a phase by K once a phase's count at N is known (N ranks' vector step may bring more
  env steps than train_every), or, where a phase has fewer than K, makes the periods between phases K times longer:
  a config of one update per env step or per 4 still shortens its chain K times.
Pure functions of a Config and N: the trainer, the learner and a resize of a checkpoint all derive the same shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from hvd_dqn.errors import UserError

if TYPE_CHECKING:
    from hvd_dqn.config import Config

MAX_PHASE_SAMPLES = 2**17  # transitions sampled at once per rank for a run of updates (Atari: about 7 GB)


class PerRank(BaseModel):
    """What each rank does, derived from a Config and the world size."""

    model_config = ConfigDict(frozen=True)
    batch_size: int  # each rank's minibatch per update
    learning_rate: float  # at the start of training, before lr_final_fraction's decay
    target_update_every: int  # gradient updates between target syncs
    replay_capacity: int
    vector_steps: int
    vector_steps_per_train: int
    updates_per_phase: int
    global_steps_per_vector_step: int
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    rmsprop_decay: float
    rmsprop_epsilon: float


def per_rank(config: Config, world_size: int) -> PerRank:
    """Per-rank quantities for a job of ``world_size`` ranks; a UserError if the config cannot be split."""
    n = world_size
    beta1, beta2, adam_epsilon = config.adam_beta1, config.adam_beta2, config.adam_epsilon
    rho, rmsprop_epsilon = config.rmsprop_decay, config.rmsprop_epsilon
    vector_step = n * config.num_envs  # global env steps per vector step of every rank
    # a vector step of all ranks brings more than train_every env steps (Atari's train_every 4 on 8 ranks):
    # more updates per phase, so the updates per env step stay what the config says
    phases_per_vector_step = max(1, round(vector_step / config.train_every))
    period_factor = 1  # the scaling rule's lengthening of the period between learning phases
    if config.scaling == "weak":
        for key in ("updates_per_train", "target_update_every"):
            if getattr(config, key) % n:
                raise UserError(
                    f"config: {key} {getattr(config, key)} is not divisible by the {n} ranks (scaling: weak "
                    f"divides it by N; use a multiple of {n}, or scaling: strong)"
                )
        batch_size, learning_rate = config.batch_size, config.learning_rate * n
        updates_per_phase = config.updates_per_train // n * phases_per_vector_step
        target_update_every = config.target_update_every // n
    elif config.scaling in ("adam_sqrt", "lamb_sqrt", "sqrt"):
        k = n / min(n, config.scaling_replay_boost)  # how many times shorter the chain of updates gets
        if config.scaling == "sqrt":
            rate = n**config.scaling_lr_exponent
        else:
            # lamb_sqrt: LAMB's step is lr x ||w|| per layer whatever the gradient's size, so K times fewer steps
            # sqrt(K) times longer keep the weights' random walk per env step; sqrt(N) is the batch's, as adam_sqrt's
            rate = n**0.5 * (k**0.5 if config.scaling == "lamb_sqrt" else 1.0)
        batch_size, learning_rate = config.batch_size, config.learning_rate * rate
        adam_epsilon, rmsprop_epsilon = config.adam_epsilon / n**0.5, config.rmsprop_epsilon / n**0.5
        beta1, beta2, rho = config.adam_beta1**k, config.adam_beta2**k, config.rmsprop_decay**k
        if config.scaling == "sqrt":
            phase = config.updates_per_train * phases_per_vector_step
            if phase >= k:
                updates_per_phase = round(phase / k)
            else:  # fewer updates than K in a phase (Atari's one every 4 env steps): K times longer periods instead
                updates_per_phase, period_factor = 1, round(k / phase)
        else:
            for key in ("updates_per_train", "target_update_every"):
                if getattr(config, key) < k:
                    raise UserError(
                        f"config: {key} {getattr(config, key)} is less than the {k:g} times that scaling: "
                        f"{config.scaling} divides it by on {n} ranks; raise it (with train_every, to keep their "
                        f"ratio) to {k:g} or more, or use scaling: sqrt, which divides the updates of a phase"
                    )
            updates_per_phase = max(1, round(config.updates_per_train / k)) * phases_per_vector_step
        target_update_every = max(1, round(config.target_update_every / k))
    else:
        if config.batch_size % n:
            raise UserError(
                f"config: batch_size {config.batch_size} is not divisible by the {n} ranks "
                f"(it is the global batch; use a multiple of {n}, or scaling: weak)"
            )
        batch_size, learning_rate = config.batch_size // n, config.learning_rate
        updates_per_phase = config.updates_per_train * phases_per_vector_step
        target_update_every = config.target_update_every
    k = config.backward_passes_per_step
    for name, value in (
        ("updates per learning phase", updates_per_phase),
        ("target_update_every", target_update_every),
    ):
        if value % k:
            # a phase or target period ending between two optimizer steps would leave gradients half-summed
            raise UserError(
                f"config: {name} is {value} per rank at {n} rank(s), not a multiple of backward_passes_per_step {k}"
            )
    return PerRank(
        batch_size=batch_size,
        learning_rate=learning_rate,
        target_update_every=target_update_every,
        replay_capacity=-(-config.replay_capacity // n),
        vector_steps=-(-config.total_env_steps // vector_step),
        vector_steps_per_train=max(1, round(config.train_every / vector_step)) * period_factor,
        updates_per_phase=updates_per_phase,
        global_steps_per_vector_step=vector_step,
        adam_beta1=beta1,
        adam_beta2=beta2,
        adam_epsilon=adam_epsilon,
        rmsprop_decay=rho,
        rmsprop_epsilon=rmsprop_epsilon,
    )


def first_phase(config: Config, share: PerRank) -> int:
    """The vector step (each rank's, counted from 1) that ends the first learning phase: the first one at or past
    learning_starts that ends a period of vector_steps_per_train."""
    first = max(1, -(-config.learning_starts // share.global_steps_per_vector_step))
    return -(-first // share.vector_steps_per_train) * share.vector_steps_per_train


def learning_phases(config: Config, share: PerRank) -> int:
    """The learning phases of a whole run (0 if none falls due), each of ``share.updates_per_phase`` updates on
    every rank, assuming every rank's replay holds a minibatch by the first (the trainer skips phases until it
    does: a learning_starts below a few batches of each rank's transitions can leave out the first few)."""
    first = first_phase(config, share)
    return 0 if first > share.vector_steps else (share.vector_steps - first) // share.vector_steps_per_train + 1


def check_schedule(config: Config, share: PerRank) -> None:
    """A UserError if a job of these per-rank quantities would make no gradient update, or would sample more
    transitions at once than MAX_PHASE_SAMPLES (the memory runs out before anything can fail cleanly)."""
    vector_step = share.global_steps_per_vector_step
    first = first_phase(config, share)
    if first > share.vector_steps:
        raise UserError(
            f"config: no learning phase falls due: the first would end at global env step {first * vector_step:,} "
            f"(learning_starts {config.learning_starts}, train_every {config.train_every}, "
            f"{vector_step} env steps per vector step of all ranks), after total_env_steps "
            f"{config.total_env_steps}; lower learning_starts or train more steps"
        )
    run = min(share.updates_per_phase, share.target_update_every, config.federated_every or share.updates_per_phase)
    if run * share.batch_size > MAX_PHASE_SAMPLES:
        raise UserError(
            f"config: each rank would sample {run:,} updates x {share.batch_size} transitions = "
            f"{run * share.batch_size:,} at once, more than {MAX_PHASE_SAMPLES:,}: lower updates_per_train, "
            f"target_update_every or batch_size"
        )
