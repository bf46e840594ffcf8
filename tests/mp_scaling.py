"""Run under horovodrun -np 2 with a JSON list of configs in argv[1] and a work directory in argv[2]: a short
Trainer run of each config in turn under its scaling rule, in one job. Rank 0 writes result.json in the work
directory: for each run, its summary, what rank 0's Adam (or LAMB) read (learning rate, betas, epsilon), the updates
it counted and the shape of its last phase's sample, and those numbers gathered from every rank."""

import json
import sys
from pathlib import Path

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.trainer import Trainer
from probes import LastPhase

world = distributed.init()
work = Path(sys.argv[2])
results = []
for i, config in enumerate(json.loads(sys.argv[1])):
    phases = LastPhase()
    trainer = Trainer(Config.from_dict(config), run_dir=work / f"run-{i}", callbacks=[phases])
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
    keys = ("lr", "beta_1", "beta_2", "epsilon", "updates")
    everyone = distributed.allgather(np.array([[mine[k] for k in keys]]))
    results.append({"summary": summary, "rank0": mine, "all": everyone.tolist()})
if world.rank == 0:  # to a file: a launcher may split or tag long output lines
    (work / "result.json").write_text(json.dumps(results, default=str))
