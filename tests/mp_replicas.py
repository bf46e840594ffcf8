"""Run under horovodrun -np 2: several learning phases with DIFFERENT data on each rank, then print each
rank's weight checksum for a learner that averages gradients (must be bit-identical) and, as a control, for one
that skips the allreduce (must drift apart, proving the check can fail)."""
import json
import sys

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.learner import Learner
from hvd_dqn.replay import ReplayBuffer

world = distributed.init()
cfg = Config(env_id="CartPole-v1", hidden_sizes=(32, 32), batch_size=16, learning_rate=1e-2)
rng = np.random.default_rng(1000 + world.rank)  # rank-dependent data
n = 500
replay = ReplayBuffer(n, (4,))
replay.add(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n), rng.normal(size=n),
           rng.normal(size=(n, 4)).astype(np.float32), rng.random(n) < 0.1, np.zeros(n, bool))

out = {}
for name, world_size in (("synced", world.size), ("local_only", 1)):
    learner = Learner(cfg, 4, 2, world_size)
    learner.broadcast_initial_weights()
    start = distributed.gather_checksums(learner.online.variables)
    for phase in range(4):
        learner.train_phase(replay.sample(rng, (6, cfg.batch_size // world.size)), 1e-2)
        if phase == 1:
            learner.sync_target()
    out[name] = {"start": start, "end": distributed.gather_checksums(learner.online.variables),
                 "target": distributed.gather_checksums(learner.target.variables),
                 "adam": distributed.gather_checksums(learner.optimizer.variables()),
                 "updates": learner.updates}
if world.rank == 0:
    print("RESULT " + json.dumps(out))
sys.stdout.flush()
