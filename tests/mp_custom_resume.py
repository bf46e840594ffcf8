"""Run under horovodrun -np 2 with examples/user_env on PYTHONPATH: argv[1] a work directory, argv[2] a config
(tests' tiny CartPole). A user's own Q-network named in the config (q_network: custom_network:layer_norm_mlp,
a checkpoint every 1,000 env steps): the run trained to its end; the same run stopped by HVD_DQN_PREEMPT_AT at env
step 1,500, then resumed in the same run dir. One launch for the three runs (each starts its own Trainer, as
``hvd-dqn train`` and ``--resume`` do). Rank 0 writes result.json in the work directory."""

import json
import os
import sys
from pathlib import Path

from hvd_dqn import distributed
from hvd_dqn.config import Config
from hvd_dqn.preemption import Preempted
from hvd_dqn.trainer import Trainer

work, config_file = Path(sys.argv[1]), sys.argv[2]
world = distributed.init()
config = Config.from_yaml(config_file, ["q_network=custom_network:layer_norm_mlp", "checkpoint_every=1000"])
out = {"whole": Trainer(config, work / "whole").train()}
os.environ["HVD_DQN_PREEMPT_AT"] = "0:1500"
try:
    Trainer(config, work / "stopped").train()
    out["stop"] = None
except Preempted as exc:
    out["stop"] = str(exc)
del os.environ["HVD_DQN_PREEMPT_AT"]
out["summary_after_stop"] = (work / "stopped" / "summary.json").exists()
resumed = Trainer(config, work / "stopped", resume=True)
out["resumed"] = resumed.train()
out["layers"] = [type(layer).__name__ for layer in resumed.q_network.layers]
if world.rank == 0:
    (work / "result.json").write_text(json.dumps(out, default=str))
