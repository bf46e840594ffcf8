"""Fault injection for the failure-handling tests, switched on by HVD_DQN_TEST_HOOKS=1 and nothing else.

The trainer reads that one switch once, when it is built, and only then imports this module, which reads the
fault variables below and installs a callback for each one set. The callback wraps the public methods of the
trainer's parts (the actor's step, the replay's sample, the stop request's poll) in ``on_train_begin``, so the
training loop carries no fault check at all in a production job.

- ``HVD_DQN_FAULT=RANK:STEP``: that rank raises RuntimeError at the first vector step at or past global env
  step STEP (a failing rank; the others wait in a collective); a parameter server, which takes no env steps, at
  its first learning phase from there.
- ``HVD_DQN_INJECT_NAN=UPDATE``: rank 0 feeds a NaN reward into gradient update UPDATE (the non-finite guard).
- ``HVD_DQN_PREEMPT_AT=RANK:STEP``: that rank raises the stop flag at the first decision point at or past STEP,
  as a SIGUSR1 would (preemption without a signal).
- ``HVD_DQN_DIE_IN_CHECKPOINT=RANK:STEP``: that rank's process ends at once (exit 1, no cleanup, as a worker
  that is killed) in the middle of writing the first checkpoint at or past STEP: after its replay shard, before
  its ``rank<r>.json`` and the collectives that complete the checkpoint.
- ``HVD_DQN_HANG_IN_EVAL=RANK:STEP``: that rank's first evaluation at or past STEP never returns (a user env whose
  step blocks forever), while its heartbeat thread runs on.
- ``HVD_DQN_DEADLOCK=RANK:STEP``: that rank's loop deadlocks (takes a lock it holds already) when it collects at or
  past global env step STEP: outside any collective and any marked work, while its heartbeat thread runs on.
- ``HVD_DQN_SLOW_RANK=RANK:FACTOR``: that rank's learning takes FACTOR times as long (a straggler): after each of
  its gradient computations (a parameter-server worker's) or runs of updates, it sleeps FACTOR - 1 times the time
  that took.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from hvd_dqn.callbacks import Callback
from hvd_dqn.errors import UserError, excerpt, say

FAULT_ENV = "HVD_DQN_FAULT"
NAN_ENV = "HVD_DQN_INJECT_NAN"
PREEMPT_AT_ENV = "HVD_DQN_PREEMPT_AT"
DIE_IN_CHECKPOINT_ENV = "HVD_DQN_DIE_IN_CHECKPOINT"
HANG_IN_EVAL_ENV = "HVD_DQN_HANG_IN_EVAL"
DEADLOCK_ENV = "HVD_DQN_DEADLOCK"
SLOW_RANK_ENV = "HVD_DQN_SLOW_RANK"


class _RankFault(Callback):
    """A fault of rank ``rank`` from global env step ``step`` on, installed (``install``) on that rank alone."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_begin(self, trainer) -> None:
        if trainer.world.rank == self.rank:
            self.install(trainer)

    def install(self, trainer) -> None:
        raise NotImplementedError


class RaiseAt(_RankFault):
    """Rank ``rank`` raises RuntimeError when it collects (a parameter server, which does not: when it learns) at
    or past global env step ``step``."""

    def install(self, trainer) -> None:
        owner, name = (trainer.learner, "learn") if getattr(trainer, "is_server", False) else (trainer.actor, "step")
        step = getattr(owner, name)

        def failing_step(*args):
            steps = trainer.state.env_steps
            if steps >= self.step:
                raise RuntimeError(f"injected fault at global env step {steps} ({FAULT_ENV})")
            return step(*args)

        setattr(owner, name, failing_step)


class InjectNan(Callback):
    """Rank 0 puts a NaN reward into the first sample of gradient update ``update`` (counted from 1)."""

    def __init__(self, update: int):
        self.update = update

    def on_train_begin(self, trainer) -> None:
        if not trainer.world.is_chief:
            return
        sample = trainer.shard.sample

        def poisoned_sample(rng, shape, *args, **kwargs):
            batch, *rest = sample(rng, shape, *args, **kwargs)
            k = self.update - trainer.learner.updates - 1  # this run of updates starts after learner.updates
            if 0 <= k < shape[0]:
                batch.reward[k, 0] = np.nan
            return (batch, *rest)

        trainer.shard.sample = poisoned_sample


class SlowRank(Callback):
    """Rank ``rank`` learns ``factor`` times slower: it sleeps after its gradient computations or runs of updates."""

    def __init__(self, rank: int, factor: float):
        self.rank, self.factor = rank, factor

    def on_train_begin(self, trainer) -> None:
        if trainer.world.rank != self.rank:
            return
        learner = trainer.learner
        name = "gradient" if hasattr(learner, "protocol") else "run_updates"
        work = getattr(learner, name)

        def slow(*args, **kwargs):
            start = time.perf_counter()
            out = work(*args, **kwargs)
            time.sleep((self.factor - 1.0) * (time.perf_counter() - start))
            return out

        setattr(learner, name, slow)


class PreemptAt(_RankFault):
    """Rank ``rank`` raises the stop flag at the first decision point at or past global env step ``step``."""

    def install(self, trainer) -> None:
        stop, poll = trainer.stop, trainer.stop.poll

        def poll_or_preempt(env_steps):
            if env_steps >= self.step and stop.signame is None:
                stop.signame = PREEMPT_AT_ENV
            return poll(env_steps)

        stop.poll = poll_or_preempt


class DieInCheckpoint(_RankFault):
    """Rank ``rank`` ends its process while writing the first checkpoint at or past global env step ``step``."""

    def install(self, trainer) -> None:
        actor = trainer.actor
        state_dict = actor.state_dict  # asked for by trainstate.save only, after the rank's replay shard is written

        def dying_state_dict():
            if trainer.state.env_steps >= self.step:
                say(
                    f"hvd-dqn: {DIE_IN_CHECKPOINT_ENV}: rank {trainer.world.rank} ends its process while writing the "
                    f"checkpoint of global env step {trainer.state.env_steps}"
                )
                os._exit(1)
            return state_dict()

        actor.state_dict = dying_state_dict


class HangInEval(_RankFault):
    """The step of rank ``rank``'s evaluation envs blocks for ever from global env step ``step`` on."""

    def install(self, trainer) -> None:
        for env in trainer.evaluator.envs:
            env.step = self._hanging(trainer, env.step)

    def _hanging(self, trainer, step):
        def hanging_step(*args, **kwargs):
            if trainer.state.env_steps >= self.step:
                say(
                    f"hvd-dqn: {HANG_IN_EVAL_ENV}: rank {trainer.world.rank}'s evaluation env blocks in step() at "
                    f"global env step {trainer.state.env_steps}"
                )
                while True:
                    time.sleep(60)
            return step(*args, **kwargs)

        return hanging_step


class DeadlockAt(_RankFault):
    """Rank ``rank``'s main thread blocks for ever on a lock it holds, when it collects at or past ``step``."""

    def install(self, trainer) -> None:
        actor = trainer.actor
        step = actor.step

        def deadlocked_step(*args):
            if trainer.state.env_steps >= self.step:
                say(
                    f"hvd-dqn: {DEADLOCK_ENV}: rank {trainer.world.rank} deadlocks at global env step "
                    f"{trainer.state.env_steps}"
                )
                lock = threading.Lock()
                lock.acquire()
                lock.acquire()
            step(*args)

        actor.step = deadlocked_step


def from_env() -> list[Callback]:
    """A callback for each fault variable that is set."""
    hooks = []
    if os.environ.get(FAULT_ENV):
        hooks.append(RaiseAt(*_rank_step(FAULT_ENV)))
    if os.environ.get(NAN_ENV):
        hooks.append(InjectNan(_int(NAN_ENV, os.environ[NAN_ENV])))
    if os.environ.get(PREEMPT_AT_ENV):
        hooks.append(PreemptAt(*_rank_step(PREEMPT_AT_ENV)))
    if os.environ.get(DIE_IN_CHECKPOINT_ENV):
        hooks.append(DieInCheckpoint(*_rank_step(DIE_IN_CHECKPOINT_ENV)))
    if os.environ.get(HANG_IN_EVAL_ENV):
        hooks.append(HangInEval(*_rank_step(HANG_IN_EVAL_ENV)))
    if os.environ.get(DEADLOCK_ENV):
        hooks.append(DeadlockAt(*_rank_step(DEADLOCK_ENV)))
    if os.environ.get(SLOW_RANK_ENV):
        rank, _, factor = os.environ[SLOW_RANK_ENV].partition(":")
        try:
            hooks.append(SlowRank(_int(SLOW_RANK_ENV, rank), float(factor or "2")))
        except ValueError:
            raise UserError(
                f"{SLOW_RANK_ENV}: expected RANK:FACTOR, got {excerpt(os.environ[SLOW_RANK_ENV])}"
            ) from None
    return hooks


def _rank_step(name: str) -> tuple[int, int]:
    rank, _, step = os.environ[name].partition(":")
    return _int(name, rank), _int(name, step or "0")


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}: expected an integer, got {excerpt(text)}") from None
