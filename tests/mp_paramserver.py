"""Run under horovodrun -np 3 --mpi with a work directory: the parameter server (rank 0) and two workers.

1. One sync step of the protocol on known gradients (plain SGD, no clipping): the server's weights before and
   after, and the workers' weights after, for a NumPy recomputation.
2. Training runs of tests' tiny CartPole: sync to the end; sync preempted at env step 1500, then resumed (and a
   later a copy of it with the server's staleness counts damaged); async with
   rank 2 three times slower and ps_max_staleness 1. Their summaries (rank 0's, the server's).
Rank 0 writes result.json in the work directory (a printed line this long, mpirun --tag-output would cut).
3. Last, the damaged copy resumed: every rank refuses it and ends the job (exit 2), each with its one line."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from hvd_dqn import checkpoint, distributed
from hvd_dqn.config import Config
from hvd_dqn.preemption import Preempted
from hvd_dqn.pslearner import PSLearner
from hvd_dqn.trainer import Trainer
from ps_config import BASE

work = Path(sys.argv[1])
world = distributed.init()
out = {}

# ---- 1. the protocol on known gradients
cfg = Config(
    env_id="CartPole-v1",
    hidden_sizes=(8,),
    optimizer="sgd",
    learning_rate=0.125,
    max_grad_norm=None,
    parameter_server="sync",
    batch_size=32,
)
learner = PSLearner(cfg, 4, 2, world)
learner.broadcast_initial_weights()
learner.optimizer.learning_rate = cfg.learning_rate
before = learner.flat_weights()
n = before.size
known = {r: np.random.default_rng(r).standard_normal(n).astype(np.float32) for r in range(1, world.size)}
if world.rank == 0:
    learner.protocol.serve(1, 0)
else:
    version = learner.protocol.work(0, lambda: (0.5, 1.0, known[world.rank]), learner.set_weights)
    out["worker_version"] = version
after = learner.flat_weights()
gathered = distributed.allgather(after[None, :])
if world.rank == 0:
    out["protocol"] = {
        "before": before.tolist(),
        "after": after.tolist(),
        "grads": [known[r].tolist() for r in sorted(known)],
        "lr": cfg.learning_rate,
        "replicas_equal": bool((gathered == gathered[0]).all()),
        "counts": learner.ps_stats()["ps_staleness_counts"],
    }

# ---- 2. training runs
summaries = {}
summaries["sync"] = Trainer(Config.from_dict({**BASE, "parameter_server": "sync"}), work / "sync").train()
os.environ["HVD_DQN_PREEMPT_AT"] = "0:1500"
try:
    Trainer(Config.from_dict({**BASE, "parameter_server": "sync"}), work / "sync_resumed").train()
    summaries["preempted"] = None
except Preempted as exc:
    summaries["preempted"] = str(exc.checkpoint)
del os.environ["HVD_DQN_PREEMPT_AT"]
# a copy of the stopped run whose state.json has the server's staleness counts damaged (the manifest rewritten to
# match, as by hand): resumed last (3.)
if world.rank == 0:
    shutil.copytree(work / "sync_resumed", work / "damaged")
    ckpt = work / "damaged" / "checkpoints" / Path(summaries["preempted"]).name
    state = json.loads((ckpt / "state.json").read_text())
    state["learner"]["staleness"]["counts"] = ["many"]
    (ckpt / "state.json").write_text(json.dumps(state))
    marker = json.loads((ckpt / checkpoint.COMPLETE).read_text())
    marker["files"]["state.json"] = checkpoint.describe([ckpt / "state.json"])["state.json"]
    (ckpt / checkpoint.COMPLETE).write_text(json.dumps(marker))
distributed.allreduce_sum([0.0])  # the copy is made before any rank reads it
summaries["sync_resumed"] = Trainer(
    Config.from_dict({**BASE, "parameter_server": "sync"}), work / "sync_resumed", resume=True
).train()
os.environ["HVD_DQN_SLOW_RANK"] = "2:3"
summaries["async"] = Trainer(
    Config.from_dict({**BASE, "parameter_server": "async", "ps_max_staleness": 1}), work / "async"
).train()
del os.environ["HVD_DQN_SLOW_RANK"]
out["summaries"] = summaries
if world.rank == 0:
    (work / "result.json").write_text(json.dumps(out, default=str))

# 3. the damaged copy: every rank must refuse the resume in one line, not the server alone with a traceback
Trainer(Config.from_dict({**BASE, "parameter_server": "sync"}), work / "damaged", resume=True).train()
