"""A step of tests/mp_horovod_options.py's jobs (under horovodrun -np 2): several learning phases with DIFFERENT
data on each rank, and each rank's weight checksums for a learner that averages gradients (must be bit-identical)
and, as a control, for one that skips the allreduce (must drift apart, proving the check can fail)."""

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from mp_data import random_replay


def replicas(world) -> dict:
    """{"synced" | "local_only": every rank's checksums of its online, target and Adam variables at the start and
    the end, and the update count}."""
    cfg = Config(env_id="CartPole-v1", hidden_sizes=(32, 32), batch_size=16, learning_rate=1e-2)
    rng = np.random.default_rng(1000 + world.rank)  # rank-dependent data
    replay = random_replay(rng, 500)
    out = {}
    for name, world_size in (("synced", world.size), ("local_only", 1)):
        learner = Learner(cfg, 4, 2, world_size)
        learner.broadcast_initial_weights()
        start = distributed.gather_checksums(learner.online.variables)
        for phase in range(4):
            learner.run_updates(replay.sample(rng, (6, cfg.batch_size // world.size)), 1e-2)
            if phase == 1:
                learner.sync_target()
        out[name] = {
            "start": start,
            "end": distributed.gather_checksums(learner.online.variables),
            "target": distributed.gather_checksums(learner.target.variables),
            "adam": distributed.gather_checksums(learner.optimizer.variables()),
            "updates": learner.updates,
        }
    return out
