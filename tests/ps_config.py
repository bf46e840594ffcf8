"""The training config of tests/mp_paramserver.py's runs (2 workers, 3000 env steps), shared with
tests/test_plan.py, which plans it for the same 3 ranks."""

BASE = {
    "env_id": "CartPole-v1",
    "total_env_steps": 3000,
    "hidden_sizes": [32, 32],
    "learning_starts": 500,
    "train_every": 200,
    "updates_per_train": 20,
    "target_update_every": 50,
    "eval_every": 1500,
    "eval_episodes": 10,
    "log_every": 1000,
    "batch_size": 32,
    "replay_capacity": 5000,
    "checkpoint_every_minutes": None,
}
