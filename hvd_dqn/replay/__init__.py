"""This rank's replay: the buffers behind one small protocol (``buffer.Buffer``), the sum-tree of prioritized
replay, and the shard the learner samples from.

``ring.ReplayBuffer``      flat observations (classic control), one transition per slot
``frames.FrameReplayBuffer``  Atari: each 84x84 frame stored once, stacks and n-step returns rebuilt when sampled
``sumtree.SumTree``        priorities in a tree of partial sums
``shard.ReplayShard``      a buffer plus per-slot discounts and priorities: what the learner samples
"""

from hvd_dqn.replay.buffer import Batch, Buffer, available_memory, check_fits
from hvd_dqn.replay.frames import FrameReplayBuffer
from hvd_dqn.replay.ring import ReplayBuffer
from hvd_dqn.replay.shard import ReplayShard
from hvd_dqn.replay.sumtree import SumTree, importance_weights

__all__ = [
    "Batch",
    "Buffer",
    "FrameReplayBuffer",
    "ReplayBuffer",
    "ReplayShard",
    "SumTree",
    "available_memory",
    "check_fits",
    "importance_weights",
]
