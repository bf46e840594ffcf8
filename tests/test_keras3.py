"""A user's Keras 3 and hvd_dqn's Keras 2 (tf_keras) models in one process, with no TF_USE_LEGACY_KERAS."""

import json
import sys

import pytest

from conftest import run
from run_schedule import expected_updates

SCRIPT = """
import json, os, sys
import numpy as np
import keras  # the user's Keras 3, imported before anything of ours
assert keras.__version__.startswith("3."), keras.__version__
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 3)).astype("float32")
y = x.sum(axis=1, keepdims=True)
user = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
user.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
loss_before = user.evaluate(x, y, verbose=0)

from hvd_dqn import Config, Trainer
from hvd_dqn.serving import export
cfg = Config(env_id="CartPole-v1", total_env_steps=600, hidden_sizes=(8,), learning_starts=200, train_every=100,
             updates_per_train=5, target_update_every=10, eval_every=600, eval_episodes=2, log_every=600,
             batch_size=16, replay_capacity=1000)
trainer = Trainer(cfg, run_dir=sys.argv[1])
summary = trainer.train()

# the user's model still trains, predicts, saves and loads as Keras 3
user.fit(x, y, epochs=30, verbose=0)
loss_after = user.evaluate(x, y, verbose=0)
user.save(os.path.join(sys.argv[1], "user.keras"))
reloaded = keras.models.load_model(os.path.join(sys.argv[1], "user.keras"))
same = np.allclose(reloaded.predict(x, verbose=0), user.predict(x, verbose=0))

# and our export is usable from Keras 3 through its SavedModel
out = export(sys.argv[1], sys.argv[1].rstrip("/") + "-export")  # beside the run dir, not in it
layer = keras.layers.TFSMLayer(os.path.join(out, "saved_model"), call_endpoint="q_values")
obs = rng.normal(size=(5, 4)).astype("float32")
via_keras3 = np.asarray(layer(obs)["q_values"])
ours = trainer.q_network(obs).numpy()
print("OUT", json.dumps({
    "config": cfg.to_dict(), "updates": summary["updates"],
    "loss_before": float(loss_before), "loss_after": float(loss_after),
    "reloaded_same": bool(same), "reloaded_type": type(reloaded).__module__,
    "our_model": type(trainer.q_network).__module__, "keras3_vs_ours": float(np.abs(via_keras3 - ours).max()),
    "legacy_env": os.environ.get("TF_USE_LEGACY_KERAS")}))
"""


def test_user_keras3_survives_training_in_the_same_process(tmp_path):
    proc = run([sys.executable, "-c", SCRIPT, tmp_path], TF_USE_LEGACY_KERAS="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("OUT ", 1)[1])
    # learning_starts 200, a phase of 5 updates every 100 steps to 600: phases at 200, 300, ..., 600
    assert out["updates"] == expected_updates(out["config"]) == 5 * 5
    assert out["our_model"].startswith("tf_keras.")  # Keras 2, as Horovod needs
    assert out["reloaded_type"].startswith("keras.") and out["reloaded_same"]
    assert out["loss_after"] < out["loss_before"] / 2  # the user's model really trained after ours
    assert out["keras3_vs_ours"] < 1e-5
    assert not out["legacy_env"]


def test_mismatched_tf_keras_is_a_user_error(monkeypatch):
    import tf_keras

    from hvd_dqn import keras2
    from hvd_dqn.errors import UserError

    monkeypatch.setattr(tf_keras, "__version__", "2.15.0")
    with pytest.raises(UserError, match=r"tf-keras 2\.15\.0 does not match TensorFlow 2\.18"):
        keras2.load()
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # as if not installed
    with pytest.raises(UserError, match="needs tf-keras"):
        keras2.load()
