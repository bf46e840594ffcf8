"""Prioritized replay keeps every complete transition drawable: a slot enters the sum-tree when its transition
completes (the frame replay's n-step window closes), so drawing it early can never zero its priority for good."""

import numpy as np

from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.replay import FrameReplayBuffer, ReplayBuffer, ReplayShard

ENVS, STACK, N_STEP = 2, 4, 3


def _frame_shard(n_step=N_STEP, capacity=600):
    replay = FrameReplayBuffer(capacity, ENVS, (2, 2), stack=STACK, n_step=n_step, gamma=0.9)
    return ReplayShard(replay, 0.9**n_step, prioritized=True)


def _frame_steps(shard, steps, start=0, rng=None, draw=32):
    """One vector step per iteration (episodes of 7 and 11 steps), and after it one draw of ``draw`` slots with
    new priorities, as the learner does."""
    stack = np.zeros((ENVS, STACK, 2, 2), np.uint8)
    if start == 0:
        shard.buffer.start(stack)
    for t in range(start, start + steps):
        ended = np.array([(t + 1) % 7 == 0, (t + 1) % 11 == 0])
        shard.add(
            stack, np.ones(ENVS, np.int32), np.ones(ENVS, np.float32), stack + t % 200, ended, np.zeros(ENVS, bool)
        )
        if rng is not None and shard.sampleable_count():
            _, _, _, idx = shard.sample(rng, (draw,))
            shard.update_priorities(idx, rng.random(idx.shape) + 0.1)


def _age(buffer, slots):
    """Rows written after each slot's."""
    return (buffer.rows_written - 1 - slots // ENVS) % buffer.rows


def _zeroed_complete(shard) -> int:
    """Complete transitions the sum-tree would never draw."""
    slots = np.arange(len(shard))
    complete = slots[shard.buffer.sampleable(slots)]
    return int(np.count_nonzero(shard.tree.get(complete) == 0))


def test_frame_replay_with_n_step_returns_keeps_every_complete_transition_drawable():
    # the case of issue 32: before, 576 of 582 complete transitions ended at priority 0
    for n_step in (1, N_STEP):
        shard = _frame_shard(n_step)
        _frame_steps(shard, 400, rng=np.random.default_rng(0))
        slots = np.arange(len(shard))
        assert shard.sampleable_count() > 500
        assert _zeroed_complete(shard) == 0
        # nothing incomplete holds a priority (episode starts, open n-step windows) but the oldest rows, whose
        # frames the ring has just overwritten: those are zeroed when drawn
        held = slots[~shard.buffer.sampleable(slots) & (shard.tree.get(slots) > 0)]
        assert len(held) == 6
        assert (_age(shard.buffer, held) >= shard.buffer.rows - STACK).all()


def test_a_transition_enters_the_tree_when_its_n_steps_are_written():
    shard = _frame_shard()
    stack = np.zeros((ENVS, STACK, 2, 2), np.uint8)
    shard.buffer.start(stack)
    written = []
    for t in range(N_STEP):
        written.append(shard.buffer.pos + np.arange(ENVS))
        shard.add(
            stack, np.ones(ENVS, np.int32), np.ones(ENVS, np.float32), stack, np.zeros(ENVS, bool), np.zeros(ENVS, bool)
        )
        # the first step's window closes on the n-th add, not before
        expected = 1.0 if t == N_STEP - 1 else 0.0
        np.testing.assert_array_equal(shard.tree.get(written[0]), expected)
    np.testing.assert_array_equal(shard.tree.get(written[1]), 0.0)
    # an episode that ends closes every window in it at once
    shard.add(
        stack, np.ones(ENVS, np.int32), np.ones(ENVS, np.float32), stack, np.ones(ENVS, bool), np.zeros(ENVS, bool)
    )
    for slots in written:
        np.testing.assert_array_equal(shard.tree.get(slots), 1.0)


def test_a_restored_shard_goes_on_raising_the_windows_open_at_the_checkpoint():
    rng = np.random.default_rng(1)
    shard = _frame_shard()
    _frame_steps(shard, 150, rng=rng)
    state = {k: np.array(v) for k, v in shard.state_dict().items()}
    assert np.count_nonzero(state["shard_priority"][shard._waiting()]) == 0  # open windows saved at 0
    restored = _frame_shard()
    restored.load_state_dict(state)
    _frame_steps(restored, 250, start=150, rng=rng)
    assert _zeroed_complete(restored) == 0


def test_a_plain_buffer_restored_under_a_shard_gets_priorities_for_its_complete_transitions_only():
    source = _frame_shard()
    _frame_steps(source, 150)
    buffer = FrameReplayBuffer(600, ENVS, (2, 2), stack=STACK, n_step=N_STEP, gamma=0.9)
    buffer.load_state_dict({k: np.array(v) for k, v in source.buffer.state_dict().items()})
    shard = ReplayShard(buffer, 0.9**N_STEP, prioritized=True)
    _frame_steps(shard, 100, start=150, rng=np.random.default_rng(2))
    slots = np.arange(len(shard))
    assert _zeroed_complete(shard) == 0
    assert np.count_nonzero(shard.tree.get(slots[~buffer.sampleable(slots)])) == 0


def test_ring_replay_with_n_step_returns_keeps_every_transition_drawable():
    # n-step transitions are built before the ring buffer (NStepAccumulator): each slot is complete when written
    acc = NStepAccumulator(ENVS, N_STEP, 0.9)
    shard = ReplayShard(ReplayBuffer(300, (1,)), 0.9**N_STEP, prioritized=True)
    rng = np.random.default_rng(3)
    obs = np.zeros((ENVS, 1), np.float32)
    for t in range(400):
        ended = np.array([(t + 1) % 7 == 0, (t + 1) % 11 == 0])
        out = acc.push(obs, np.ones(ENVS, np.int64), np.ones(ENVS, np.float32), obs + 1, ended, np.zeros(ENVS, bool))
        if out is not None:
            shard.add(out.obs, out.action, out.reward, out.next_obs, out.terminated, out.truncated, out.discount)
        if len(shard):
            _, _, _, idx = shard.sample(rng, (32,))
            shard.update_priorities(idx, rng.random(idx.shape) + 0.1)
    assert len(shard) == 300
    assert np.count_nonzero(shard.tree.get(np.arange(300)) == 0) == 0


def test_sampling_before_any_transition_is_complete_says_so():
    shard = _frame_shard()
    stack = np.zeros((ENVS, STACK, 2, 2), np.uint8)
    shard.buffer.start(stack)
    shard.add(
        stack, np.ones(ENVS, np.int32), np.ones(ENVS, np.float32), stack, np.zeros(ENVS, bool), np.zeros(ENVS, bool)
    )
    try:
        shard.sample(np.random.default_rng(0), (4,))
    except RuntimeError as e:
        assert str(e) == "replay holds no complete transition yet"
    else:
        raise AssertionError("sampled from a replay with no complete transition")
