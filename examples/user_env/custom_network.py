"""Your own Q-network: a function of the observation space, the number of actions and the config that returns a
tf_keras model from observations to one Q-value per action. Through the Python API:

    python examples/user_env/custom_network.py [TOTAL_ENV_STEPS] [RUN_DIR]

or through a config, with this folder on PYTHONPATH: ``q_network: "custom_network:layer_norm_mlp"``. It trains
under Horovod like the built-in networks (rank 0's initial weights broadcast, gradients allreduced), checkpoints
and resumes, and ``hvd-dqn export`` writes a SavedModel that serves without this file.
"""

import sys

from hvd_dqn import Config, Trainer
from hvd_dqn.keras2 import keras  # tf_keras: Horovod 0.28 needs Keras 2 models


def layer_norm_mlp(observation_space, n_actions, config):
    """Two hidden layers with layer normalisation (the config's hidden_sizes), then a linear Q head."""
    inputs = keras.Input(shape=observation_space.shape, dtype="float32", name="observation")
    x = inputs
    for width in config.hidden_sizes:
        x = keras.layers.Dense(width)(x)
        x = keras.layers.LayerNormalization()(x)
        x = keras.layers.Activation("relu")(x)
    return keras.Model(inputs, keras.layers.Dense(n_actions, name="q_values")(x))


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    run_dir = sys.argv[2] if len(sys.argv) > 2 else "runs/custom-network"
    config = Config(
        env_id="CartPole-v1",
        total_env_steps=steps,
        hidden_sizes=(64, 64),
        learning_starts=500,
        train_every=250,
        updates_per_train=50,
        target_update_every=100,
        eval_every=steps // 4,
        log_every=steps // 4,
        batch_size=64,
    )
    summary = Trainer(config, run_dir, q_network=layer_norm_mlp).train()
    layers = sorted(
        {type(layer).__name__ for layer in keras.models.load_model(f"{run_dir}/q_network.keras", compile=False).layers}
    )
    print(
        f"[custom network] {summary['updates']} updates, final greedy return "
        f"{summary['final_eval_return_mean']:.1f}; layers {', '.join(layers)}"
    )
    print(f"[custom network] replicas equal: {len(set(summary['replica_checksums'])) == 1}")
