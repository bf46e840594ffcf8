"""Run under horovodrun -np 2. (1) Federated averaging at the learner level: each round takes K local updates on
rank-dependent data (replicas must differ), then averages (replicas must be bit-identical, and equal to the mean
of the two pre-average replicas). (2) Each rank's Ape-X epsilons, gathered; soft targets of a synchronous
learner, gathered. (3) A short Trainer run with every component on, in federated mode, returning the summary
(replicas equal at the end: the last update is an averaging). (4) A short synchronous Trainer run under scaling
weak: what each rank sampled, stepped and counted."""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.actor import actor_epsilons
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from hvd_dqn.trainer import Trainer
from mp_data import random_replay
from probes import LastPhase

world = distributed.init()
K = 5
cfg = Config(
    env_id="CartPole-v1",
    hidden_sizes=(16, 16),
    batch_size=16,
    learning_rate=1e-2,
    federated_every=K,
    target_update_every=2 * K,
    dueling=True,
)
rng = np.random.default_rng(1000 + world.rank)  # rank-dependent data
replay = random_replay(rng, 300)

learner = Learner(cfg, 4, 2, world.size)
learner.broadcast_initial_weights()
rounds = []
for _ in range(3):
    learner.run_updates(replay.sample(rng, (K, cfg.batch_size // world.size)), 1e-2)
    before = distributed.gather_checksums(learner.online.variables)
    flat = np.concatenate([v.numpy().ravel() for v in learner.online.trainable_variables])
    everyone = distributed.allgather(flat[None, :])
    learner.average_weights()
    after = distributed.gather_checksums(learner.online.variables)
    averaged = np.concatenate([v.numpy().ravel() for v in learner.online.trainable_variables])
    rounds.append(
        {"before": before, "after": after, "mean_error": float(np.abs(averaged - everyone.mean(axis=0)).max())}
    )

# soft targets in synchronous mode: the online weights are identical, so every rank's target must be too
soft = Learner(
    Config(env_id="CartPole-v1", hidden_sizes=(16,), batch_size=16, target_tau=0.1, policy_ema=0.5), 4, 2, world.size
)
soft.broadcast_initial_weights()
soft_start = distributed.gather_checksums(soft.target.variables)
policy_start = distributed.gather_checksums(soft.averaged.variables)
for _ in range(2):
    soft.run_updates(replay.sample(rng, (3, 8)), 1e-2)
    soft.update_average()
soft_targets = {
    "start": soft_start,
    "end": distributed.gather_checksums(soft.target.variables),
    "policy_start": policy_start,
    "policy_end": distributed.gather_checksums(soft.averaged.variables),
}

# federated_every=1 with plain SGD and no clipping: mean_i(w - lr * g_i) = w - lr * mean_i(g_i), so it must track
# a synchronous learner fed the same batches (up to float rounding: the two sum in a different order)
pair = {}
for mode, federated in (("sync", None), ("federated", 1)):
    c = Config(
        env_id="CartPole-v1",
        hidden_sizes=(16, 16),
        batch_size=16,
        optimizer="sgd",
        max_grad_norm=None,
        federated_every=federated,
        target_update_every=1000,
    )
    pair[mode] = Learner(c, 4, 2, world.size)
    pair[mode].broadcast_initial_weights()
same_data = np.random.default_rng(77 + world.rank)  # rank-dependent, the same for both learners
for _ in range(10):
    batch = replay.sample(same_data, (1, 8))
    pair["sync"].run_updates(batch, 0.05)
    pair["federated"].run_updates(batch, 0.05)
    pair["federated"].average_weights()
weights = {m: np.concatenate([v.numpy().ravel() for v in each.online.trainable_variables]) for m, each in pair.items()}
sgd_k1 = {
    "max_diff": float(np.abs(weights["sync"] - weights["federated"]).max()),
    "checksums": distributed.gather_checksums(pair["federated"].online.variables),
}
start = Learner(pair["sync"].config, 4, 2, world.size)
start.broadcast_initial_weights()
sgd_k1["moved"] = float(
    np.abs(weights["sync"] - np.concatenate([v.numpy().ravel() for v in start.online.trainable_variables])).max()
)

eps = distributed.allgather(actor_epsilons(0.4, world.rank, world.size, 3, 7.0)[None, :])

trainer_cfg = Config(
    env_id="CartPole-v1",
    total_env_steps=2400,
    hidden_sizes=(32, 32),
    learning_starts=400,
    train_every=200,
    updates_per_train=20,
    target_update_every=20,
    eval_every=1200,
    eval_episodes=2,
    log_every=1200,
    batch_size=32,
    replay_capacity=4000,
    num_envs=2,
    dueling=True,
    n_step=3,
    prioritized_replay=True,
    target_tau=0.05,
    epsilon_spread=7.0,
    federated_every=10,
)
run_dir = distributed.broadcast_object(tempfile.mkdtemp(prefix="mp-alg-"))
summary = Trainer(trainer_cfg, run_dir=run_dir).train()

weak_cfg = Config(
    env_id="CartPole-v1",
    total_env_steps=2400,
    hidden_sizes=(32, 32),
    learning_starts=400,
    train_every=200,
    updates_per_train=20,
    target_update_every=20,
    eval_every=1200,
    eval_episodes=2,
    log_every=1200,
    batch_size=32,
    learning_rate=1e-3,
    replay_capacity=4000,
    num_envs=2,
    scaling="weak",
)
weak_dir = distributed.broadcast_object(tempfile.mkdtemp(prefix="mp-weak-"))
weak_phases = LastPhase()
weak = Trainer(weak_cfg, run_dir=weak_dir, callbacks=[weak_phases])
weak_summary = weak.train()
weak_run = {
    "summary": weak_summary,
    "lr": float(weak.learner.optimizer.learning_rate.numpy()),
    "sampled": list(weak_phases.phase.td_abs.shape),
    "config_json": json.loads((Path(weak_dir) / "config.json").read_text()) if world.rank == 0 else None,
}
if world.rank == 0:
    print(
        "RESULT "
        + json.dumps(
            {
                "rounds": rounds,
                "eps": eps.tolist(),
                "summary": summary,
                "trainer_config": trainer_cfg.to_dict(),
                "soft_targets": soft_targets,
                "sgd_k1": sgd_k1,
                "weak": weak_run,
            }
        )
    )
sys.stdout.flush()
