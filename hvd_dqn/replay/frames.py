"""Atari replay that stores each 84x84 frame once, as uint8, and rebuilds the frame stacks at sample time.

The envs run with NEXT_STEP autoreset (envs.make_vector_env for ALE ids): the vector step after an episode ends
resets that env and returns its first observation, which is no transition. So every vector step brings exactly
one new frame per env, the newest frame of ``next_obs``: the frames of env j at vector step r go to slot
``(r mod R) * E + j`` (E envs, R rows). A slot holds the frame, the action/reward/flags of the transition that
ended on it, and ``ep_pos``: how many frames of its episode came before it (0 = an episode's first frame, which
ends no transition and is never sampled).

The step stored at row r has ``obs`` = frames r-S..r-1 and ``next_obs`` = frames r-S+1..r (S = frame_stack);
frames before the episode's first one (offset d > ep_pos) are padding, exactly as the env's
FrameStackObservation pads: zeros, or the episode's first frame repeated (offsets clamped to ep_pos). With
n-step returns the transition sampled at row r sums the rewards of rows r..r+m-1 and ends on the stack of row
r+m-1, m = n unless the episode ended (or a lost life cut the bootstrap) sooner; its discount is gamma^m. A slot
is sampleable once its m steps are written and while every frame it needs is still in the ring (the oldest S
rows' transitions are not).

Memory: one frame (7,056 bytes) plus 14 bytes of columns per slot; ``nbytes`` is the total.
"""

from __future__ import annotations

import numpy as np

from hvd_dqn.replay.buffer import Batch, check_fits


class FrameReplayBuffer:
    def __init__(
        self,
        capacity: int,
        num_envs: int,
        frame_shape: tuple[int, ...] = (84, 84),
        stack: int = 4,
        padding: str = "zero",
        n_step: int = 1,
        gamma: float = 0.99,
        ranks_per_host: int = 1,
        memory_fraction: float = 0.9,
    ):
        if padding not in ("zero", "reset"):
            raise ValueError(f"padding must be 'zero' or 'reset', got {padding!r}")
        self.num_envs, self.stack, self.padding = int(num_envs), int(stack), padding
        self.n_step, self.gamma = int(n_step), float(gamma)
        # whole rows, and enough of them for a transition's frames and n steps
        self.rows = max(-(-int(capacity) // self.num_envs), self.stack + self.n_step + 1)
        self.capacity = self.rows * self.num_envs
        self.frame_shape = tuple(frame_shape)
        columns = {
            "frame": ((self.capacity, *self.frame_shape), np.uint8),
            "action": ((self.capacity,), np.int32),
            "reward": ((self.capacity,), np.float32),
            "terminated": ((self.capacity,), np.bool_),
            "truncated": ((self.capacity,), np.bool_),
            "ep_pos": ((self.capacity,), np.int32),
        }
        self.nbytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in columns.values())
        check_fits(self.nbytes, self.capacity, ranks_per_host, memory_fraction)
        self._data = {name: np.zeros(shape, dtype) for name, (shape, dtype) in columns.items()}
        self._data["ep_pos"][:] = -1  # never written
        self.rows_written = 0  # absolute count of rows (vector steps) written
        self._ep_pos = np.zeros(self.num_envs, np.int64)  # frames of the running episode so far, per env
        self._episode_ended = np.ones(self.num_envs, bool)  # the next frame of env j starts an episode

    @property
    def pos(self) -> int:
        """The first slot of the next row written."""
        return (self.rows_written % self.rows) * self.num_envs

    def __len__(self) -> int:
        return min(self.rows_written, self.rows) * self.num_envs

    def start(self, obs: np.ndarray) -> np.ndarray:
        """The first observations after ``envs.reset()``: their newest frames become a row of episode starts."""
        self._episode_ended[:] = True
        return self._write_row(
            obs,
            np.zeros(self.num_envs, np.int32),
            np.zeros(self.num_envs, np.float32),
            np.zeros(self.num_envs, bool),
            np.zeros(self.num_envs, bool),
            np.zeros(self.num_envs, bool),
        )

    def add(self, obs, action, reward, next_obs, terminated, truncated, episode_end=None) -> np.ndarray:
        """One vector step of all envs (``next_obs`` as the env returned it, (E, S, *frame)). An env whose
        previous step ended its episode has just been reset: its frame starts a new episode and ends no
        transition. ``episode_end`` (default terminated | truncated): where the env's episode really ended, when
        ``terminated`` also marks other bootstrap cuts (a lost life). Returns the slots written."""
        if self.rows_written == 0:
            raise RuntimeError("FrameReplayBuffer.start(first_obs) must come before the first add")
        end = np.asarray(terminated | truncated if episode_end is None else episode_end, bool)
        return self._write_row(next_obs, action, reward, terminated, truncated, end)

    def _write_row(self, stacks, action, reward, terminated, truncated, end) -> np.ndarray:
        stacks = np.asarray(stacks)
        if stacks.shape != (self.num_envs, self.stack, *self.frame_shape):
            raise ValueError(
                f"expected observations of shape {(self.num_envs, self.stack, *self.frame_shape)}, got {stacks.shape}"
            )
        self._ep_pos = np.where(self._episode_ended, 0, self._ep_pos + 1)
        idx = slice(self.pos, self.pos + self.num_envs)
        d = self._data
        d["frame"][idx] = stacks[:, -1]
        first = self._ep_pos == 0  # reset frames end no transition: their columns are zeros
        d["action"][idx] = np.where(first, 0, action)
        d["reward"][idx] = np.where(first, 0.0, reward)
        d["terminated"][idx] = ~first & np.asarray(terminated, bool)
        d["truncated"][idx] = ~first & np.asarray(truncated, bool)
        d["ep_pos"][idx] = np.minimum(self._ep_pos, np.iinfo(np.int32).max)
        self._episode_ended = ~first & end
        self.rows_written += 1
        return np.arange(idx.start, idx.stop)

    # ---- checkpointing: plain arrays, no pickle
    def state_dict(self) -> dict[str, np.ndarray]:
        rows = min(self.rows_written, self.rows) * self.num_envs  # slots ever written
        state = {name: arr[:rows] for name, arr in self._data.items()}
        state.update(
            size=np.asarray(len(self)),
            pos=np.asarray(self.pos),
            rows_written=np.asarray(self.rows_written),
            env_ep_pos=self._ep_pos.copy(),
            env_episode_ended=self._episode_ended.copy(),
        )
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        rows = len(state["frame"])
        if (
            rows > self.capacity
            or state["frame"].shape[1:] != self.frame_shape
            or len(state["env_ep_pos"]) != self.num_envs
        ):
            raise ValueError("frame replay of another capacity, frame shape or number of envs")
        for name, arr in self._data.items():
            arr[:rows] = state[name]
        self.rows_written = int(state["rows_written"])
        self._ep_pos = np.asarray(state["env_ep_pos"], np.int64).copy()
        self._episode_ended = np.asarray(state["env_episode_ended"], bool).copy()

    # ---- sampling
    def _abs_rows(self, idx: np.ndarray) -> np.ndarray:
        """The absolute row (vector step count) of each slot's current content."""
        last = self.rows_written - 1
        return last - (last - idx // self.num_envs) % self.rows

    def _steps(self, idx: np.ndarray):
        """The n steps of each n-step transition starting with the step stored at slot ``idx``: their slots
        (..., n), which of them count (the first, and each one after a step that did not end the episode or
        cut the bootstrap), and whether every counted step has been written yet."""
        ks = np.arange(self.n_step)
        rows = self._abs_rows(idx)[..., None] + ks
        slots = (rows % self.rows) * self.num_envs + (idx % self.num_envs)[..., None]
        cut = self._data["terminated"][slots] | self._data["truncated"][slots]
        counted = np.ones(slots.shape, bool)
        counted[..., 1:] = ~np.logical_or.accumulate(cut, axis=-1)[..., :-1]
        written = np.all(~counted | (rows < self.rows_written), axis=-1)
        return slots, counted, written

    def sampleable(self, idx) -> np.ndarray:
        """True where slot ``idx`` starts a transition whose frames and n steps are all stored."""
        idx = np.asarray(idx)
        ep_pos = self._data["ep_pos"][idx]
        oldest = self.rows_written - self.rows  # the oldest absolute row still in the ring
        complete = (ep_pos >= 1) & (self._abs_rows(idx) - np.minimum(ep_pos, self.stack) >= oldest)
        return complete & self._steps(idx)[2] if self.n_step > 1 else complete

    def open_slots(self) -> np.ndarray:
        """The slots of the last n_step - 1 rows: a transition's n steps are written at most n_step - 1 rows after
        its own."""
        first = max(0, self.rows_written - (self.n_step - 1))
        rows = np.arange(first, self.rows_written) % self.rows
        return (rows[:, None] * self.num_envs + np.arange(self.num_envs)).ravel()

    def _stacks(self, end_slots: np.ndarray) -> np.ndarray:
        """The frame stacks ending on ``end_slots`` (any shape): (..., S, *frame) uint8, padded as the env pads
        before an episode's first frame (offsets past it clamped to it, and zeroed for zero padding)."""
        ep_pos = self._data["ep_pos"][end_slots][..., None]
        offsets = np.arange(self.stack - 1, -1, -1)  # S-1, ..., 0 frames back: oldest first
        rows = self._abs_rows(end_slots)[..., None] - np.minimum(offsets, ep_pos)
        frames = self._data["frame"][(rows % self.rows) * self.num_envs + (end_slots % self.num_envs)[..., None]]
        if self.padding == "zero":
            frames[offsets > ep_pos] = 0
        return frames

    def gather(self, idx: np.ndarray) -> Batch:
        return self.gather_with_discount(idx)[0]

    def gather_with_discount(self, idx: np.ndarray) -> tuple[Batch, np.ndarray]:
        """The transitions starting at slots ``idx`` (any shape), their stacks rebuilt (obs and next_obs uint8),
        and each one's bootstrap discount gamma^m (m <= n_step steps of reward; fewer where the episode ended
        or a lost life cut it)."""
        idx = np.asarray(idx)
        d = self._data
        prev = (self._abs_rows(idx) - 1) % self.rows * self.num_envs + idx % self.num_envs
        if self.n_step == 1:
            last, reward, m = idx, d["reward"][idx], np.ones(idx.shape)
        else:
            slots, counted, _ = self._steps(idx)
            m = counted.sum(axis=-1)
            last = np.take_along_axis(slots, (m - 1)[..., None], axis=-1)[..., 0]
            reward = (d["reward"][slots] * counted * self.gamma ** np.arange(self.n_step)).sum(axis=-1)
        batch = Batch(
            self._stacks(prev),
            d["action"][idx],
            reward.astype(np.float32),
            self._stacks(last),
            d["terminated"][last],
            d["truncated"][last],
        )
        return batch, (self.gamma**m).astype(np.float32)
