"""The parts a Trainer is made of, each built from the config and this rank's place in the world: the task, the
training envs, the replay shard, the actor, the Q-network builder, the learner and the evaluator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from hvd_dqn import runsetup, tasks
from hvd_dqn.actor import Actor
from hvd_dqn.envs import make_vector_env
from hvd_dqn.errors import say
from hvd_dqn.evaluation import Evaluator
from hvd_dqn.learner import Learner
from hvd_dqn.networks import build_user_network, load_builder
from hvd_dqn.seeds import env_seeds


class Parts(NamedTuple):
    task: Any  # hvd_dqn.tasks.ClassicControl | Atari: what differs between them
    envs: Any  # this rank's vector env
    replay: Any  # this rank's replay shard
    actor: Actor
    learner: Any  # Learner, or a parameter-server job's PSLearner
    evaluator: Evaluator


def make_parts(config, world, share, q_network, make_learner: Callable, agree: bool = True) -> Parts:
    """Every part, in the order that a run's seeds and collectives expect. ``q_network``: the API's Q-network
    builder (or None); ``make_learner(obs_shape, n_actions, build_network)``: the job's learner; ``agree``: the
    ranks agree on the replay's refusals (``runsetup.make_replay``)."""
    task = tasks.for_config(config)
    envs = make_envs(config, task, world)
    obs_shape, n_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
    replay = runsetup.make_replay(task, share.replay_capacity, obs_shape, world, agree=agree)
    actor = make_actor(config, envs, task, replay, world)
    learner = make_learner(obs_shape, n_actions, network_builder(config, envs, q_network))
    return Parts(task, envs, replay, actor, learner, make_evaluator(config, world, task))


def make_envs(config, task, world):
    """This rank's vector of ``num_envs`` training envs (Atari: the task's preprocessing and vector backend)."""
    return make_vector_env(
        config.env_id,
        config.num_envs,
        backend=config.atari_vector_env,
        threads=world.cores_per_rank,
        **task.env_options,
    )


def make_actor(config, envs, task, replay, world) -> Actor:
    """This rank's actor, with its own exploration RNG and its envs' seeds."""
    rng = np.random.default_rng([config.seed, world.rank, 7])
    return Actor(envs, task, replay, rng, env_seeds(config.seed, world.rank, config.num_envs))


def network_builder(config, envs, q_network=None):
    """``name -> model`` for a user's Q-network (``q_network``, the API's, else the config's), None for the
    built-in ones."""
    builder = q_network
    if builder is None and config.q_network is not None:
        builder = load_builder(config.q_network)
    if builder is None:
        return None
    space, n_actions = envs.single_observation_space, int(envs.single_action_space.n)
    return lambda name: build_user_network(builder, space, n_actions, config, name)


def make_learner(config, obs_shape: tuple[int, ...], n_actions: int, world, build_network=None) -> Learner:
    """The allreduce job's learner, its initial weights rank 0's on every rank (a collective)."""
    learner = Learner(config, obs_shape, n_actions, world.size, build_network)
    learner.broadcast_initial_weights()
    if config.precision == "mixed_float16" and world.is_chief and not _has_gpu():
        say(
            "hvd-dqn: precision mixed_float16 on a CPU: float16 is emulated there and slow (it is meant for GPUs; "
            "mixed_bfloat16 is the CPU's mixed precision)"
        )
    return learner


def make_evaluator(config, world, task) -> Evaluator:
    """This rank's share of the evaluation episodes, played in envs with the training envs' options."""
    return Evaluator(
        config.env_id,
        config.eval_episodes,
        config.seed,
        world.rank,
        world.size,
        config.eval_epsilon,
        env_kwargs=task.env_options,
    )


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))
