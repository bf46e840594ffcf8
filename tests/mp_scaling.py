"""Run under horovodrun -np 2: a short Trainer run under a scaling rule, printing what each rank's Adam (or LAMB) read
(learning rate, betas, epsilon), the updates it counted and its replica checksum, gathered on rank 0."""

import json
import sys
import tempfile

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.trainer import Trainer
from probes import LastPhase

world = distributed.init()
cfg = Config.from_dict(json.loads(sys.argv[1]))
run_dir = distributed.broadcast_object(tempfile.mkdtemp(prefix="mp-scaling-"))
phases = LastPhase()
trainer = Trainer(cfg, run_dir=run_dir, callbacks=[phases])
summary = trainer.train()
opt = trainer.learner.optimizer
mine = {
    "lr": float(opt.learning_rate.numpy()),
    "beta_1": float(opt.beta_1),
    "beta_2": float(opt.beta_2),
    "epsilon": float(opt.epsilon),
    "updates": trainer.learner.updates,
    "sampled": list(phases.phase.td_abs.shape),
    "num_envs": int(trainer.envs.num_envs),
}
everyone = distributed.allgather(np.array([[mine[k] for k in ("lr", "beta_1", "beta_2", "epsilon", "updates")]]))
if world.rank == 0:
    print("RESULT " + json.dumps({"summary": summary, "rank0": mine, "all": everyone.tolist()}))
sys.stdout.flush()
