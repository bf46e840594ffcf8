"""Run under horovodrun -np 2: learning phases with DIFFERENT data on each rank under mixed precision (the MLP in
mixed_bfloat16, and in mixed_float16, whose loss scaling wraps Horovod's optimizer; the bf16 CNN runs in
test_checkpoint_resume's Atari run), then print each rank's checksums of the online and target weights and the
optimizer's state (with the loss scale)."""

import json
import sys

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from hvd_dqn.replay import Batch

world = distributed.init()
rng = np.random.default_rng(1000 + world.rank)  # rank-dependent data


def batch(obs_shape, n_actions, k=2, b=4):
    def obs():
        if len(obs_shape) == 3:
            return rng.integers(0, 256, (k, b, *obs_shape), np.uint8)
        return rng.normal(size=(k, b, *obs_shape)).astype(np.float32)

    return Batch(
        obs(),
        rng.integers(0, n_actions, (k, b)).astype(np.int32),
        rng.normal(size=(k, b)).astype(np.float32),
        obs(),
        rng.random((k, b)) < 0.2,
        np.zeros((k, b), bool),
    )


out = {}
for name, env_id, precision, obs_shape, n_actions in (
    ("mlp_bf16", "CartPole-v1", "mixed_bfloat16", (4,), 2),
    ("mlp_fp16", "CartPole-v1", "mixed_float16", (4,), 2),
):
    cfg = Config(env_id=env_id, precision=precision, hidden_sizes=(32, 32), batch_size=8, dueling=True)
    learner = Learner(cfg, obs_shape if len(obs_shape) == 3 else obs_shape[0], n_actions, world.size)
    learner.broadcast_initial_weights()
    start = distributed.gather_checksums(learner.online.variables)
    for phase in range(3):
        learner.run_updates(batch(obs_shape, n_actions), 1e-3)
        if phase == 1:
            learner.sync_target()
    out[name] = {
        "start": start,
        "end": distributed.gather_checksums(learner.online.variables),
        "target": distributed.gather_checksums(learner.target.variables),
        "optimizer": distributed.gather_checksums(learner.optimizer_variables),
        "optimizer_variables": len(learner.optimizer_variables),
        "updates": learner.updates,
        "loss_scale": float(getattr(learner.optimizer, "loss_scale", 0.0)),
    }
if world.rank == 0:
    print("RESULT " + json.dumps(out))
sys.stdout.flush()
