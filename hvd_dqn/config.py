"""The experiment configuration: a frozen, validated record read from YAML, a dict or keyword arguments.

Step counts are GLOBAL (summed over all ranks) so that a config means the same experiment at any world size;
per-rank quantities are derived, never fields: ``hvd_dqn.scaling`` derives them (the "scaling rule", the
``scaling`` key, docs/scaling.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hvd_dqn import scaling
from hvd_dqn.envids import ATARI_DEFAULTS, is_atari_id
from hvd_dqn.errors import UserError, clip, excerpt
from hvd_dqn.scaling import MAX_PHASE_SAMPLES, PerRank
from hvd_dqn.yamlinput import load_yaml, parse_overrides, too_long

MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH = 8, 8192  # 7 x 8192^2 weights: about 1.9 GB per copy, 4 copies in training
MAX_EVAL_EPISODES = 1000  # each rank holds one env per evaluation episode it plays
MAX_ENV_KWARGS = 64  # keywords for an env constructor; more is a mistake
MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen keys; a bigger file is not one


class Config(BaseModel):
    """One DQN experiment. Every field has a default except ``env_id``; unknown keys are errors."""

    # allow_inf_nan=False: no float field has a use for inf or NaN (null says "none" where a field allows it)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)

    # --- what to train on
    env_id: str = Field(
        description="A gymnasium id: classic control (CartPole-v1), Atari (ALE/Pong-v5), or a user's "
        "env as module:id (my_pkg.envs:Corridor-v0: the module is imported on every "
        "rank, then the id looked up, gymnasium's own convention)."
    )
    env_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keywords for the env's constructor (gym.make(env_id, **env_kwargs)), for "
        "training, evaluation and videos alike; not for Atari (use its keys).",
    )
    exp_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The experiment's name, recorded in config.json: runs that share it are one group in "
        "`hvd-dqn plot --group` and `hvd-dqn table`. Default: the config file's name without .yaml "
        "(null when the config is not read from a file).",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="Base seed; rank r's envs and exploration use seed + r.")
    total_env_steps: int = Field(
        100_000, gt=0, le=10**12, description="Env steps to train for, summed over all ranks (at most 10^12)."
    )
    num_envs: int = Field(1, ge=1, le=1024, description="Environments per rank, stepped together as a vector env.")

    # --- the Q-network and its optimisation
    q_network: str | None = Field(
        None,
        description="A user's Q-network as module:function, called as function(observation_space, n_actions, "
        "config) and returning a tf_keras Model from observations to one Q-value per action; "
        "null = the built-in MLP (vectors) or CNN (uint8 images).",
    )
    hidden_sizes: tuple[int, ...] = Field(
        (256, 256),
        description=f"Widths of the MLP's hidden layers: 1 to {MAX_HIDDEN_LAYERS} layers, each 1 to "
        f"{MAX_HIDDEN_WIDTH} wide.",
    )
    learning_rate: float = Field(
        1e-3,
        gt=0,
        le=1.0,
        description="The optimizer's step size at the start of training, at N = 1 (the "
        "scaling rule's multiple of it at N > 1).",
    )
    lr_final_fraction: float = Field(
        1.0,
        ge=0,
        le=1.0,
        description="Learning rate at the end of training as a fraction of learning_rate (linear decay; 1 = constant).",
    )
    lr_warmup_env_steps: int = Field(
        0,
        ge=0,
        le=10**12,
        description="Scaling weak, adam_sqrt, lamb_sqrt or sqrt at N > 1: the learning rate rises linearly from "
        "learning_rate (N = 1's) to the rule's over this many global env steps after learning_starts "
        "(Goyal et al. 2017's gradual warm-up); 0 = none. Nothing changes at N = 1 or with scaling "
        "strong.",
    )
    optimizer: Literal["adam", "sgd", "lamb", "rmsprop"] = Field(
        "adam",
        description="adam; plain sgd (no momentum): with sgd, no gradient clipping and federated_every=1, "
        "federated averaging computes exactly what synchronous data parallelism does; lamb, "
        "Keras 3's LAMB (You et al. 2020, Adam's step rescaled per layer to the weights' norm, "
        "for large batches), which takes the adam_* keys; or rmsprop, DQN's centred RMSProp "
        "(Mnih et al. 2015; PyTorch's form, as the MinAtar reference runs it), which takes the "
        "rmsprop_* keys.",
    )
    adam_epsilon: float = Field(
        1e-7,
        gt=0,
        description="Adam's (or LAMB's) epsilon (divided by sqrt(N) with scaling adam_sqrt, lamb_sqrt or sqrt).",
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1.0, description="Adam's decay of the gradient's running mean.")
    adam_beta2: float = Field(0.999, ge=0, lt=1.0, description="Adam's decay of the squared gradient's running mean.")
    rmsprop_decay: float = Field(
        0.95,
        ge=0,
        lt=1.0,
        description="rmsprop: decay of the running means of the "
        "gradient and its square (DQN's 0.95; to the power "
        "K with scaling sqrt).",
    )
    rmsprop_epsilon: float = Field(
        0.01,
        gt=0,
        description="rmsprop: added to the root of the centred mean square, "
        "as PyTorch adds it (the MinAtar reference's 0.01; "
        "divided by sqrt(N) with scaling sqrt).",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Minibatch per gradient update: with scaling strong the GLOBAL batch (each of N ranks "
        "samples batch_size / N), with scaling weak each rank's (N * batch_size in all).",
    )
    gamma: float = Field(0.99, ge=0, le=1.0, description="Discount factor.")
    double_dqn: bool = Field(True, description="Double DQN target: online net picks the action, target net values it.")
    huber_delta: float = Field(1.0, gt=0, description="Huber loss threshold (quadratic below, linear above).")
    max_grad_norm: float | None = Field(
        10.0, gt=0, description="Clip the averaged gradient to this global norm; null turns clipping off."
    )
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = Field(
        "float32",
        description="The built-in MLP's and CNN's Keras dtype policy: float32, or mixed precision "
        "(mixed_bfloat16: compute in bfloat16, fast on CPUs with AVX512-BF16/AMX and on "
        "recent GPUs; mixed_float16: compute in float16 with dynamic loss scaling, for GPUs, "
        "slow on a CPU). Variables, the Q-value head and the model's output stay float32. A "
        "q_network of the user's gets the config and applies it itself; mixed_float16's loss "
        "scaling applies to any network.",
    )

    # --- replay and the learning schedule (all in global env steps)
    replay_capacity: int = Field(
        100_000, ge=1, description="Transitions kept, summed over ranks; each rank keeps replay_capacity / N."
    )
    learning_starts: int = Field(
        1_000,
        ge=0,
        description="Global env steps collected before the first update; below total_env_steps. "
        "Learning also waits until every rank's replay holds a minibatch of transitions "
        "(n_step > 1 needs n steps per transition).",
    )
    train_every: int = Field(
        256, ge=1, description="Global env steps between learning phases (rounded to whole vector steps per rank)."
    )
    updates_per_train: int = Field(
        128,
        ge=1,
        description="Gradient updates in each learning phase (divided by N with scaling weak). The "
        "minibatches of a run of updates up to a target sync are sampled at once: "
        "min(updates per phase, target_update_every) times each rank's batch may be at "
        f"most {MAX_PHASE_SAMPLES:,} transitions.",
    )
    target_update_every: int = Field(
        128,
        ge=1,
        description="Gradient updates between target-network syncs (rank 0's weights are broadcast); "
        "divided by N with scaling weak.",
    )
    scaling: Literal["strong", "weak", "adam_sqrt", "lamb_sqrt", "sqrt"] = Field(
        "strong",
        description="How N ranks share the learning (docs/scaling.md): strong = the same updates "
        "as on one rank, each on batch_size / N samples per rank; weak = each rank samples "
        "batch_size, updates_per_train and target_update_every are divided by N and the "
        "learning rate multiplied by N (Goyal et al. 2017): the samples replayed per env step "
        "stay, the chain of updates is N times shorter; adam_sqrt = each rank samples "
        "batch_size, the updates and target period are divided by K = N / min(N, "
        "scaling_replay_boost), Adam's learning rate is multiplied by sqrt(N) and its epsilon "
        "divided by it, and its betas raised to the power K so their memory spans the same env "
        "steps (Malladi et al. 2022's square-root rule for adaptive methods); lamb_sqrt = "
        "adam_sqrt at sqrt(N * K) times the learning rate, for optimizer lamb; sqrt = adam_sqrt "
        "for optimizer adam or rmsprop (RMSProp's decay to the power K, its epsilon divided by "
        "sqrt(N)) at N^scaling_lr_exponent times the learning rate, dividing the updates of a "
        "whole learning phase at N by K (so one update per env step also shortens the chain).",
    )
    scaling_replay_boost: float = Field(
        1.0,
        ge=1.0,
        description="scaling adam_sqrt, lamb_sqrt or sqrt: N > 1 ranks replay up to this many times "
        "the samples per env step that one rank does (the updates are divided by N / min(N, "
        "boost), not N).",
    )
    scaling_lr_exponent: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="scaling sqrt: the learning rate at N ranks is N to this power times "
        "learning_rate (0.5: Malladi et al. 2022's square-root rule; 1: Goyal et "
        "al.'s linear rule; between: Stooke & Abbeel 2018's modest growth).",
    )

    # --- exploration: epsilon decays linearly from eps_start to eps_end over eps_decay_fraction of training
    eps_start: float = Field(1.0, ge=0, le=1.0, description="Epsilon at the first step.")
    eps_end: float = Field(0.05, ge=0, le=1.0, description="Epsilon after the decay.")
    eps_decay_fraction: float = Field(
        0.1, gt=0, le=1.0, description="Fraction of total_env_steps over which epsilon decays."
    )

    # --- algorithm components (docs/algorithms.md); each off where the published DQN is the reference
    dueling: bool = Field(False, description="Dueling Q-head: Q = V(s) + A(s, a) - mean_a A(s, a) (Wang et al. 2016).")
    n_step: int = Field(
        1,
        ge=1,
        le=100,
        description="Steps of real reward before bootstrapping (1 = one-step DQN); an episode "
        "that terminates inside the n steps is not bootstrapped, a truncated one is.",
    )
    prioritized_replay: bool = Field(
        False, description="Proportional prioritized replay on each rank's shard (Schaul et al. 2016)."
    )
    priority_alpha: float = Field(0.6, ge=0, le=1.0, description="Priority exponent: P(i) ~ |td_i|^alpha.")
    priority_beta_start: float = Field(
        0.4, ge=0, le=1.0, description="Importance-sampling exponent at the start, annealed linearly to 1."
    )
    priority_epsilon: float = Field(1e-6, gt=0, description="Added to |td| so no transition's priority is 0.")
    target_tau: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Soft (Polyak) target update after every gradient update, "
        "target <- tau * online + (1 - tau) * target; null = hard sync every "
        "target_update_every updates.",
    )
    epsilon_spread: float = Field(
        0.0,
        ge=0,
        description="Ape-X exploration: actor i of N (all envs of all ranks) uses eps^(1 + spread * "
        "i / (N - 1)) of the scheduled eps; 0 = every actor the same eps.",
    )
    policy_ema: float | None = Field(
        None,
        gt=0,
        lt=1.0,
        description="Weight averaging for the policy (Nikishin et al. 2018): after each learning "
        "phase, averaged <- d * averaged + (1 - d) * online with this decay d; the "
        "greedy evaluations and the saved q_network use the averaged weights, "
        "exploration and learning the online ones; null = the online weights.",
    )
    federated_every: int | None = Field(
        None,
        ge=1,
        description="Federated averaging: each rank takes this many local updates on its own replay "
        "with NO gradient allreduce, then the ranks average their weights; null = "
        "synchronous data parallelism (gradients averaged at every update).",
    )

    # --- a parameter server instead of the allreduce (docs/algorithms.md); needs MPI (mpi4py)
    parameter_server: Literal["none", "sync", "async"] = Field(
        "none",
        description="none: every rank learns and the gradients are allreduced; sync: rank 0 serves the "
        "weights and the optimizer, the other ranks act and send gradients, and the server "
        "steps on the mean of one gradient from every worker; async: the server steps on each "
        "gradient as it arrives (not bit-exact).",
    )
    ps_max_staleness: int = Field(
        4,
        ge=0,
        le=10**6,
        description="parameter_server async: a worker whose weights are more than this many "
        "server steps old pulls before computing, and a gradient older than "
        "this when it arrives is not applied (the worker recomputes).",
    )

    # --- Horovod's gradient allreduce (docs/horovod-options.md); used when a job has several ranks
    allreduce_op: Literal["average", "adasum"] = Field(
        "average",
        description="How the ranks' gradients are combined: average (Horovod's DistributedOptimizer), "
        "or adasum (Maleki et al. 2020, through DistributedGradientTape; needs the MPI "
        "controller and a power-of-2 number of ranks).",
    )
    gradient_compression: Literal["none", "fp16"] = Field(
        "none", description="Gradients sent as float16 in the allreduce (half the bytes, float16 rounding)."
    )
    backward_passes_per_step: int = Field(
        1,
        ge=1,
        le=1024,
        description="Local gradient aggregation: each rank sums this many updates' gradients and "
        "the ranks allreduce and step once per that many. An update is one "
        "backward pass: updates_per_train and target_update_every count them and "
        "must be multiples of this (per rank, after scaling).",
    )
    average_aggregated_gradients: bool = Field(
        False,
        description="With backward_passes_per_step > 1: step on the mean of the aggregated gradients "
        "instead of their sum (Horovod's default is the sum).",
    )

    # --- Atari (ALE/<Game>-v5 ids); classic-control envs ignore these
    frame_stack: int = Field(
        ATARI_DEFAULTS["frame_stack"], ge=1, le=16, description="Atari: the newest frames stacked into one observation."
    )
    noop_max: int = Field(
        ATARI_DEFAULTS["noop_max"],
        ge=0,
        le=1000,
        description="Atari: up to this many no-op actions after each reset (random starts, Mnih et al. 2015).",
    )
    sticky_action_prob: float = Field(
        ATARI_DEFAULTS["sticky_action_prob"],
        ge=0,
        le=1.0,
        description="Atari: probability that an emulator frame repeats the previous frame's action instead of the "
        "new one (0.25: ALE v5 and Machado et al. 2018; 0: Nature DQN).",
    )
    terminal_on_life_loss: bool = Field(
        False,
        description="Atari: a lost life cuts the bootstrap (stored as terminated) while the game goes on; "
        "the episode, its frame stack and its return still end only at game over.",
    )
    clip_rewards: bool = Field(
        True, description="Atari: replay stores sign(reward); returns in the logs and evaluations stay unclipped."
    )
    atari_vector_env: Literal["ale", "gymnasium"] = Field(
        "ale",
        description="Atari: the training envs of a rank: ale-py's C++ AtariVectorEnv (faster with several "
        "envs) or gymnasium's wrappers in a SyncVectorEnv; the same frames bit for bit (no-ops "
        "and sticky actions off). Only gymnasium's can be checkpointed: its runs resume "
        "bit-exactly, the other's restart their episodes. Evaluation and videos use the "
        "gymnasium wrappers.",
    )
    max_episode_frames: int = Field(
        ATARI_DEFAULTS["max_episode_frames"],
        ge=1,
        description="Atari: emulator frames after which an episode is truncated, in training and evaluation (108k = "
        "30 min of play at 60 Hz, Machado et al. 2018).",
    )

    # --- evaluation and logging
    eval_every: int = Field(5_000, ge=1, description="Global env steps between greedy evaluations.")
    eval_episodes: int = Field(
        10,
        ge=1,
        le=MAX_EVAL_EPISODES,
        description=f"Greedy episodes per evaluation, split across ranks (at most {MAX_EVAL_EPISODES}).",
    )
    eval_epsilon: float = Field(0.0, ge=0, le=1.0, description="Epsilon during evaluation (0 = greedy).")
    reward_threshold: float | None = Field(
        None, description="Return at which the task counts as solved; null = the env spec's reward_threshold."
    )
    log_every: int = Field(5_000, ge=1, description="Global env steps between metric log points.")
    log_allreduce_ms: bool = Field(
        False,
        description="Time a gradient-sized allreduce at every log point (perf/allreduce_ms, null on one "
        "rank): 4 extra allreduces per row, a probe of the interconnect, so off by default.",
    )

    # --- full-state checkpoints (docs/checkpoints.md); one is also written at the end and on SIGTERM
    checkpoint_every: int | None = Field(
        None, ge=1, description="Global env steps between checkpoints; null = none by step count."
    )
    checkpoint_every_minutes: float | None = Field(
        30.0,
        gt=0,
        description="Wall-clock minutes between checkpoints (rank 0's clock, its decision broadcast "
        "at the next learning-phase boundary); null = none by time.",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        le=1000,
        description="Newest complete checkpoints kept; older ones are deleted once a newer one is complete.",
    )
    hang_timeout_s: float | None = Field(
        300.0,
        ge=10,
        le=7 * 24 * 3600,
        description="Seconds a rank's training loop may make no progress (waiting "
        "for a stopped, deadlocked or unreachable rank) before the job "
        "ends non-zero with a line naming that rank; local evaluations "
        "and checkpoint writes do not count; null = wait forever.",
    )
    busy_timeout_s: float | None = Field(
        3600.0,
        ge=10,
        le=7 * 24 * 3600,
        description="Seconds one piece of a rank's long local work (an evaluation, a "
        "checkpoint write, the first compile) may take before the job "
        "ends non-zero with a line naming that rank and the work (a user "
        "env that hangs in evaluation); only with hang_timeout_s; "
        "null = no bound.",
    )

    @field_validator("hidden_sizes", mode="before")
    @classmethod
    def _sizes_as_tuple(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) > MAX_HIDDEN_LAYERS:  # before validating each item
            raise ValueError(f"at most {MAX_HIDDEN_LAYERS} layers, got {len(value):,}")
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("hidden_sizes")
    @classmethod
    def _sizes_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError("must be a non-empty list of positive integers")
        if max(value) > MAX_HIDDEN_WIDTH:
            raise ValueError(f"each layer at most {MAX_HIDDEN_WIDTH} wide, got {excerpt(max(value))}")
        return value

    @field_validator("env_id")
    @classmethod
    def _env_registered(cls, value: str) -> str:
        from hvd_dqn.envs import check_env_id  # gymnasium is imported only when a config is built

        check_env_id(value)
        return value

    @field_validator("env_kwargs")
    @classmethod
    def _env_kwargs_plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_ENV_KWARGS:
            raise ValueError(f"at most {MAX_ENV_KWARGS} keywords, got {len(value):,}")
        for key, item in value.items():
            if not key.isidentifier():
                raise ValueError(f"{excerpt(key)} is not a keyword name")
            try:
                json.dumps(item, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{key}: {excerpt(item)} is not a plain value (numbers, strings, booleans, null, "
                    "lists and mappings of those)"
                ) from None
        return value

    @field_validator("q_network")
    @classmethod
    def _q_network_importable(cls, value: str | None) -> str | None:
        if value is not None:
            from hvd_dqn.networks import load_builder  # imports the user's module, as env_id does

            load_builder(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.env_kwargs and self.is_atari:
            raise ValueError(
                "env_kwargs: Atari games take their options as config keys (frame_stack, noop_max, "
                "sticky_action_prob, max_episode_frames), not as env_kwargs"
            )
        if self.eps_end > self.eps_start:
            raise ValueError("eps_end must not exceed eps_start")
        if self.batch_size > self.replay_capacity:
            raise ValueError("batch_size must not exceed replay_capacity")
        if self.learning_starts >= self.total_env_steps:
            raise ValueError(
                f"learning_starts {self.learning_starts} must be below total_env_steps "
                f"{self.total_env_steps} (else the run makes no gradient update)"
            )
        if (
            self.federated_every is not None
            and self.target_tau is None
            and self.target_update_every % self.federated_every
        ):
            # a hard sync copies the online net: it must fall on an averaging, where every rank holds the same one
            raise ValueError("target_update_every must be a multiple of federated_every")
        if self.scaling_replay_boost != 1.0 and self.scaling not in ("adam_sqrt", "lamb_sqrt", "sqrt"):
            raise ValueError(
                f"scaling_replay_boost is a parameter of scaling: adam_sqrt, lamb_sqrt or sqrt, not of "
                f"scaling: {self.scaling}"
            )
        if self.scaling_lr_exponent != 0.5 and self.scaling != "sqrt":
            raise ValueError(f"scaling_lr_exponent is a parameter of scaling: sqrt, not of scaling: {self.scaling}")
        if self.optimizer == "rmsprop" and self.scaling in ("adam_sqrt", "lamb_sqrt"):
            raise ValueError(
                f"scaling: {self.scaling} scales Adam's constants; optimizer rmsprop takes scaling sqrt, strong or weak"
            )
        if self.scaling == "sqrt" and self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(
                f"scaling: sqrt is the rule for optimizer adam or rmsprop, not {self.optimizer} (use "
                + ("lamb_sqrt)" if self.optimizer == "lamb" else "weak)")
            )
        if self.scaling == "lamb_sqrt" and self.optimizer != "lamb":
            raise ValueError(f"scaling: lamb_sqrt is the rule for optimizer lamb, not {self.optimizer} (use adam_sqrt)")
        if self.lr_warmup_env_steps and self.scaling == "strong":
            raise ValueError(
                "lr_warmup_env_steps warms up to the learning rate of scaling weak, adam_sqrt, "
                "lamb_sqrt or sqrt; scaling: strong keeps learning_rate at any N, so there is nothing "
                "to warm up to"
            )
        if self.scaling != "strong" and self.federated_every is not None:
            raise ValueError(
                f"scaling: {self.scaling} shortens the chain of synchronous updates; federated_every "
                "runs local updates instead: use one of the two"
            )
        self._check_horovod_options()
        self._check_parameter_server()
        return self

    def _check_parameter_server(self) -> None:
        if self.parameter_server == "none":
            return
        mixed = [
            key
            for key, value in (("federated_every", self.federated_every), ("target_tau", self.target_tau))
            if value is not None
        ]
        mixed += [
            key
            for key, on in (
                ("backward_passes_per_step", self.backward_passes_per_step > 1),
                ("allreduce_op", self.allreduce_op != "average"),
                ("gradient_compression", self.gradient_compression != "none"),
                ("precision", self.precision == "mixed_float16"),
            )
            if on
        ]
        if mixed:
            raise ValueError(
                f"parameter_server: {self.parameter_server} runs no allreduce and steps only on the "
                f"server; {', '.join(mixed)} cannot be combined with it"
            )

    def _check_horovod_options(self) -> None:
        k = self.backward_passes_per_step
        if self.federated_every is not None and (
            k > 1 or self.allreduce_op != "average" or self.gradient_compression != "none"
        ):
            raise ValueError(
                "allreduce_op, gradient_compression and backward_passes_per_step shape the gradient "
                "allreduce; federated_every runs none: use one of the two"
            )
        if self.allreduce_op == "adasum" and k > 1:
            raise ValueError(
                "backward_passes_per_step > 1 needs allreduce_op: average (Horovod aggregates "
                "gradients locally only in its DistributedOptimizer, which refuses Adasum)"
            )
        if self.optimizer == "lamb" and (k > 1 or self.precision == "mixed_float16" or self.allreduce_op != "average"):
            raise ValueError(
                "optimizer lamb (Keras 3's) with backward_passes_per_step > 1, precision "
                "mixed_float16 or allreduce_op adasum: Horovod's local aggregation and Adasum, and "
                "tf_keras's loss scaling, are wired for tf_keras optimizers only: use adam, or drop "
                "the other key"
            )
        if self.average_aggregated_gradients and k == 1:
            raise ValueError("average_aggregated_gradients needs backward_passes_per_step > 1")
        if k > 1 and self.precision == "mixed_float16":
            raise ValueError(
                "precision mixed_float16 with backward_passes_per_step > 1: the loss scale would judge "
                "each rank's un-averaged gradients on its own, and the ranks fall out of step: use one "
                "of the two"
            )
        if k > 1 and self.target_tau is not None:
            raise ValueError(
                "target_tau moves the target after every update, backward_passes_per_step > 1 steps "
                "the online net once per several: use one of the two"
            )

    # ---- derived values (properties, not fields)
    @property
    def is_atari(self) -> bool:
        """ALE envs: Atari preprocessing, the Nature CNN and the frame-once replay."""
        return is_atari_id(self.env_id)

    def per_rank(self, world_size: int) -> PerRank:
        """Per-rank quantities for a job of ``world_size`` ranks (``hvd_dqn.scaling.per_rank``)."""
        return scaling.per_rank(self, world_size)

    def check_schedule(self, share: PerRank) -> None:
        """A UserError if a job of these per-rank quantities would make no update or sample too much at once."""
        scaling.check_schedule(self, share)

    # ---- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """Validate a mapping; any problem becomes a one-line UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise UserError(f"{source}: {_one_line(exc)}") from None
        except TypeError as exc:  # e.g. non-string keys
            raise UserError(f"{source}: {clip(str(exc), 200)}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """Read a YAML file and apply ``key=value`` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise UserError(
                    f"{path}: {path.stat().st_size:,} bytes is too big for a config (at most {MAX_CONFIG_BYTES:,})"
                )
            data = load_yaml(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read: {exc}") from None
        except ValueError as exc:  # an integer past Python's int-to-str limit (4300 digits)
            raise UserError(f"{path}: {too_long(exc)}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
        # the runs of one config file form one group in the plots and tables of a sweep (CleanRL's exp_name)
        return cls.from_dict({"exp_name": path.stem, **data, **parse_overrides(overrides)}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump()
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    def replace(self, **changes: Any) -> Config:
        return Config.from_dict({**self.to_dict(), **changes})


def _one_line(exc: ValidationError) -> str:
    """The first few of pydantic's errors, each naming its field and quoting at most an excerpt of the input."""
    parts, errors, shown = [], exc.errors(), 3
    for err in errors[:shown]:
        field = clip(".".join(str(p) for p in err["loc"]) or "config")
        msg = clip(err["msg"].removeprefix("Value error, "), 300)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {excerpt(err['input'])})"
        parts.append(f"{field}: {msg}")
    if len(errors) > shown:
        parts.append(f"and {len(errors) - shown:,} more")
    return "; ".join(parts)
