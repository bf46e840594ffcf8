"""Dealing N ranks' replay shards out to N' ranks (hvd_dqn.replay.redistribute): every transition lands on
exactly one new rank, with its discount and priority; the oldest go only where the new capacity is smaller."""

from collections import Counter

import numpy as np
import pytest

from hvd_dqn.nstep import NStepAccumulator
from hvd_dqn.replay import ReplayBuffer, ReplayShard, redistribute


def _shard(capacity, start, n, prioritized=False, discount=0.9):
    """A shard holding transitions ``start .. start+n-1`` (reward = id; obs, next_obs, action derived from it),
    with a per-slot discount and, prioritized, a priority that differs per transition."""
    shard = ReplayShard(ReplayBuffer(capacity, (2,)), discount, prioritized=prioritized, alpha=0.5)
    for i in range(start, start + n):
        obs = np.array([[i, -i]], np.float32)
        shard.add(
            obs,
            np.array([i % 3]),
            np.array([i], np.float32),
            obs + 0.5,
            np.array([i % 7 == 0]),
            np.array([i % 5 == 0]),
            discount=np.array([0.9 ** (1 + i % 3)], np.float32),
        )
        if prioritized:
            shard.update_priorities(shard.buffer.pos - 1 if shard.buffer.pos else capacity - 1, np.array([i + 1.0]))
    return shard


def _rows(arrays):
    """The multiset of transitions in ``ReplayShard.state_dict``-style arrays, each as a tuple of all its fields."""
    size = int(arrays["size"])
    prio = arrays.get("shard_priority")
    return Counter(
        (
            tuple(arrays["obs"][k].tolist()),
            tuple(arrays["next_obs"][k].tolist()),
            int(arrays["action"][k]),
            float(arrays["reward"][k]),
            bool(arrays["terminated"][k]),
            bool(arrays["truncated"][k]),
            float(arrays["shard_discount"][k]),
            None if prio is None else float(prio[k]),
        )
        for k in range(size)
    )


def _redeal(old_shards, old_capacity, new_size, new_capacity, prioritized, flushed=None):
    flushed = flushed or {}
    states = [s.state_dict() for s in old_shards]
    max_p = max(float(s["shard_max_priority"]) for s in states) if prioritized else None
    weight = max_p**0.5 if prioritized else None
    ordered = [redistribute.in_order(s, old_capacity, weight, flushed.get(r)) for r, s in enumerate(states)]
    out = []
    for rank in range(new_size):
        mine = redistribute.deal([len(o["action"]) for o in ordered], new_size, rank, new_capacity)
        new = ReplayShard(ReplayBuffer(new_capacity, (2,)), 0.9, prioritized=prioritized, alpha=0.5)
        new.load_state_dict(redistribute.shard_arrays(ordered, mine, new_capacity, max_p))
        out.append((new, mine.dropped))
    return states, out


@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("new_size", [1, 3, 4])
def test_every_transition_lands_on_exactly_one_new_rank(prioritized, new_size):
    # two ranks of capacity 50: one wrapped (70 added, the ring starts at its write position), one not
    old = [_shard(50, 0, 70, prioritized), _shard(50, 1000, 33, prioritized)]
    states, new = _redeal(old, 50, new_size, 100 // new_size + 1, prioritized)
    before = _rows(states[0]) + _rows(states[1])
    after = sum((_rows(s.state_dict()) for s, _ in new), Counter())
    assert sum(before.values()) == 83
    assert after == before  # the same transitions, discounts and priorities, none lost, none twice
    assert [d for _, d in new] == [0] * new_size
    sizes = [len(s) for s, _ in new]
    assert max(sizes) - min(sizes) <= 1  # dealt evenly
    if prioritized:  # the sum-tree holds each transition's priority, and the largest seen carries over
        for s, _ in new:
            np.testing.assert_allclose(s.tree.total, s.state_dict()["shard_priority"].sum())
            assert s.max_priority == max(o.max_priority for o in old)


def test_a_new_rank_stores_its_share_oldest_first_and_drops_only_the_oldest():
    old = [_shard(10, 0, 10), _shard(10, 100, 10)]
    states, new = _redeal(old, 10, 1, 12, False)
    shard, dropped = new[0]
    assert dropped == 8  # 20 transitions, room for 12
    kept = shard.state_dict()["reward"].tolist()
    # the newest 6 of each rank, interleaved by age, oldest first, so the ring evicts the oldest next
    assert kept == [4, 104, 5, 105, 6, 106, 7, 107, 8, 108, 9, 109]
    assert shard.buffer.pos == 0 and len(shard) == 12


def test_the_deal_is_the_same_whatever_rank_computes_it():
    counts = [7, 0, 12, 3]
    deals = [redistribute.deal(counts, 3, r, 100) for r in range(3)]
    taken = Counter((int(o), int(i)) for d in deals for o, i in zip(d.old_rank, d.index))
    assert taken == Counter((r, i) for r, c in enumerate(counts) for i in range(c))
    assert [len(d.index) for d in deals] == [8, 7, 7]


def test_a_gone_ranks_nstep_starts_travel_as_truncated_transitions():
    gamma = 0.5
    acc = NStepAccumulator(2, 3, gamma)
    obs = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    acc.push(obs, np.array([0, 1]), np.array([1.0, 2.0], np.float32), obs + 1, np.zeros(2, bool), np.zeros(2, bool))
    acc.push(obs + 1, np.array([1, 0]), np.array([3.0, 4.0], np.float32), obs + 2, np.zeros(2, bool), np.zeros(2, bool))
    assert acc.pending_counts() == [2, 2]
    flushed = acc.flush(obs + 2)
    assert acc.pending_counts() == [0, 0]
    # env 0: starts at obs 1 (rewards 1, 3) and at obs 2 (reward 3), each cut where the env stands, bootstrapped
    assert flushed.reward.tolist() == [1 + gamma * 3, 3.0, 2 + gamma * 4, 4.0]
    assert flushed.discount.tolist() == [gamma**2, gamma, gamma**2, gamma]
    assert flushed.truncated.all() and not flushed.terminated.any()
    np.testing.assert_array_equal(flushed.next_obs, np.repeat(obs + 2, 2, axis=0))

    old = [_shard(20, 0, 5), _shard(20, 100, 5)]
    _, new = _redeal(old, 20, 1, 40, False, flushed={1: flushed})
    rewards = new[0][0].state_dict()["reward"].tolist()
    expected = Counter([*range(5), *range(100, 105), *flushed.reward.tolist()])
    assert Counter(rewards) == expected and len(rewards) == 14
    # the flushed starts count as the gone rank's newest: its 4 oldest ring transitions have no peer of their age
    assert rewards[:4] == [100, 101, 102, 103] and rewards[-1] == flushed.reward[-1]


def test_chronological_slots():
    assert redistribute.chronological_slots(3, 3, 5).tolist() == [0, 1, 2]
    assert redistribute.chronological_slots(5, 2, 5).tolist() == [2, 3, 4, 0, 1]
