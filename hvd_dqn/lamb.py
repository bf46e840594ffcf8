"""LAMB for our tf_keras networks: Keras 3's ``keras.optimizers.Lamb`` with the one method the learner calls,
``minimize(loss, var_list, tape=tape)`` (hvd_dqn/optimizers.py says why). Importing this module imports Keras 3."""

from __future__ import annotations

import keras as keras3  # Keras 3, not tf_keras: only it has LAMB

from hvd_dqn import distributed


class Lamb(keras3.optimizers.Lamb):
    def __init__(self, allreduce: bool = False, compression: str = "none", **kwargs):
        """``allreduce``: the job's updates average the gradients over the ranks (``compression`` on the wire).
        The rest is Keras 3 Lamb's."""
        super().__init__(**kwargs)
        self._allreduce, self._compression = allreduce, compression

    def minimize(self, loss, var_list, tape) -> None:
        # Horovod: the tape averages the gradients over all ranks; apply_gradients then clips and steps
        if self._allreduce:
            tape = distributed.distributed_tape(tape, compression=self._compression)
        self.apply_gradients(zip(tape.gradient(loss, var_list), var_list))
