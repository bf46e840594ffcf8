"""Run under horovodrun -np 2 with examples/user_env on PYTHONPATH: argv[1] a work directory, argv[2] a JSON list
of `hvd-dqn` arguments, argv[3] a JSON CartPole config. In turn, in this one job:
1. `hvd-dqn ARGS` through cli.main on every rank, as each rank of `horovodrun hvd-dqn ARGS` runs it (the test's
   corridor run, the user's env module and Q-network found on the ranks' PYTHONPATH);
2. CartPole with a user's own Q-network named in the config (q_network: custom_network:layer_norm_mlp): the run
   trained to its end; the same run stopped by HVD_DQN_PREEMPT_AT at env step 600, then resumed in the same run
   dir (each starts its own Trainer, as ``hvd-dqn train`` and ``--resume`` do).
Rank 0 writes result.json in the work directory."""

import json
import os
import sys
from pathlib import Path

from hvd_dqn import cli, distributed
from hvd_dqn.config import Config
from hvd_dqn.preemption import Preempted
from hvd_dqn.trainer import Trainer

work, cli_args, cartpole = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
world = distributed.init()
out = {"cli_exit_codes": distributed.allgather_object(cli.main(cli_args))}
config = Config.from_dict({**cartpole, "q_network": "custom_network:layer_norm_mlp"})
out["whole"] = Trainer(config, work / "whole").train()
os.environ["HVD_DQN_PREEMPT_AT"] = "0:600"
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
