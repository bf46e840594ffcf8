"""The points where a job's kind changes the Trainer's loop, and what they do in a plain allreduce job: the
elastic trainer (``hvd_dqn.elastic``) runs the loop under Horovod's elastic driver and commits after each learning
phase, the parameter-server trainer (``hvd_dqn.pstrainer``) adds its statistics to the rows and the summary."""

from __future__ import annotations

from typing import Any


class LoopHooks:
    watch_for_hangs = True  # a Watchdog per rank when hang_timeout_s is set
    collectives_in_setup = True  # the ranks agree on setup's refusals (the replay's memory) with a collective

    def _run(self, loop) -> dict[str, Any]:
        """Run the loop to the end and return the summary."""
        return loop()

    def _phase_done(self) -> None:
        """After each learning phase, on every rank at the same point."""

    def _row_extras(self) -> dict[str, Any]:
        """Keys added to every metrics row."""
        return {}

    def _summary_extras(self) -> dict[str, Any]:
        """Keys added to the summary."""
        return {}
