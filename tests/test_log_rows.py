"""The per-row allreduce timing is opt-in: a metrics row holds perf/allreduce_ms only with log_allreduce_ms."""

import pytest

from hvd_dqn import Callback, Config, Trainer


class _Rows(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, trainer, row):
        self.rows.append(dict(row))


@pytest.mark.parametrize("timed", [False, True])
def test_allreduce_timing_is_logged_only_when_asked(tmp_path, timed):
    cfg = Config(
        env_id="CartPole-v1",
        total_env_steps=200,
        learning_starts=100,
        train_every=50,
        updates_per_train=2,
        target_update_every=2,
        batch_size=16,
        hidden_sizes=(8,),
        replay_capacity=200,
        eval_every=200,
        eval_episodes=1,
        log_every=100,
        log_allreduce_ms=timed,
        hang_timeout_s=None,
    )
    rows = _Rows()
    Trainer(cfg, run_dir=tmp_path / "run", callbacks=[rows]).train()
    assert [row["env_steps"] for row in rows.rows] == [100, 200]
    # on one rank no allreduce runs: the timed row says None
    expected = [None, None] if timed else ["absent", "absent"]
    assert [row.get("perf/allreduce_ms", "absent") for row in rows.rows] == expected
