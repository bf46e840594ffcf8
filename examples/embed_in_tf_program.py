"""Training hvd-dqn inside your own TensorFlow program, then serving the exported policy with plain TensorFlow.

    python examples/embed_in_tf_program.py [TOTAL_ENV_STEPS] [RUN_DIR]
    horovodrun -np 2 python examples/embed_in_tf_program.py        # the same program on 2 ranks

1. Builds a Config in code and trains with ``Trainer``, a callback watching every evaluation (and stopping
   nothing: it only records; hooks run on every rank, side effects on rank 0 only).
2. Exports the Q-network (``hvd_dqn.serving.export``, as ``hvd-dqn export`` does).
3. Loads the export with ``tf.saved_model.load`` alone and plays one greedy episode through its
   ``greedy_action`` signature: the part a serving stack needs, with no hvd_dqn and no Horovod in it.
"""

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import tensorflow as tf

from hvd_dqn import Callback, Config, Trainer
from hvd_dqn.serving import export


class BestEvaluation(Callback):
    """Remembers the best greedy evaluation and reports each one (on rank 0)."""

    def __init__(self):
        self.best = (-np.inf, 0)

    def on_evaluation(self, trainer, result):
        if result["eval_return_mean"] > self.best[0]:
            self.best = (result["eval_return_mean"], result["env_steps"])
        if trainer.world.is_chief:
            print(f"[my program] evaluation at {result['env_steps']} steps: mean {result['eval_return_mean']:.1f}")

    def on_checkpoint(self, trainer, path):
        if trainer.world.is_chief:
            print(f"[my program] model written to {path}")


def serve_one_episode(saved_model_dir: Path, env_id: str, seed: int = 0) -> float:
    """Greedy actions from the SavedModel's ``greedy_action`` signature, one observation at a time."""
    policy = tf.saved_model.load(str(saved_model_dir))
    act = policy.signatures["greedy_action"]
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        action = int(act(observation=tf.constant(obs[None], tf.float32))["action"][0])
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    env.close()
    return total


def main(total_env_steps: int = 30_000, run_dir: str = "runs/embedded") -> None:
    config = Config.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml")
    # A shorter run than the shipped experiment; every step count scales with it.
    scale = total_env_steps / config.total_env_steps
    config = config.replace(
        total_env_steps=total_env_steps,
        learning_starts=max(1, int(config.learning_starts * scale)),
        eval_every=max(1, total_env_steps // 4),
        log_every=max(1, total_env_steps // 4),
        eval_episodes=4,
    )
    watcher = BestEvaluation()
    trainer = Trainer(config, run_dir=run_dir, callbacks=[watcher])
    summary = trainer.train()
    if not trainer.world.is_chief:
        return
    q_net = trainer.q_network  # a tf_keras model: use it in your own TF code as it is
    print(
        f"[my program] trained {summary['updates']} updates; best evaluation {watcher.best[0]:.1f} at "
        f"{watcher.best[1]} steps; Q(s0) = {[round(float(q), 2) for q in q_net(np.zeros((1, 4), np.float32))[0]]}"
    )
    out = export(run_dir, f"{run_dir}-export")  # beside the run dir: export refuses a place inside it
    print(
        f"[my program] served one greedy episode from {out}: return "
        f"{serve_one_episode(out / 'saved_model', config.env_id):.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("total_env_steps", nargs="?", type=int, default=30_000)
    parser.add_argument("run_dir", nargs="?", default="runs/embedded")
    args = parser.parse_args()
    main(args.total_env_steps, args.run_dir)
