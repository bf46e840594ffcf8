"""Mixed precision (the ``precision`` key) on one process: the built-in MLP and Nature CNN compute in bf16/fp16
with float32 variables and float32 Q-values, the policy stays with the models that asked for it, mixed_float16
scales the loss (also around Horovod's optimizer) and checkpoints its scale, and an export still serves float32."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import SMOKE
from hvd_dqn import Config, distributed
from hvd_dqn.checkpoint import read_model, write_model
from hvd_dqn.keras2 import keras
from hvd_dqn.learner import Learner
from hvd_dqn.replay import Batch
from probes import q_values

NETS = {  # env, observation shape, actions, dueling
    "mlp": ("CartPole-v1", (4,), 2, False),
    "cnn": ("ALE/Pong-v5", (4, 84, 84), 6, True),
}


def _learner(net, precision, elastic=False):
    env_id, shape, n_actions, dueling = NETS[net]
    cfg = Config(
        env_id=env_id, precision=precision, batch_size=8, hidden_sizes=(16, 16), dueling=dueling, double_dqn=True
    )
    return Learner(cfg, shape[0] if len(shape) == 1 else shape, n_actions, 1, elastic=elastic)


def _batch(net, k=2, b=8, seed=0):
    _, shape, n_actions, _ = NETS[net]
    rng = np.random.default_rng(seed)

    def obs():
        if len(shape) == 3:
            return rng.integers(0, 256, (k, b, *shape), np.uint8)
        return rng.normal(size=(k, b, *shape)).astype(np.float32)

    return Batch(
        obs(),
        rng.integers(0, n_actions, (k, b)).astype(np.int32),
        rng.normal(size=(k, b)).astype(np.float32),
        obs(),
        rng.random((k, b)) < 0.2,
        np.zeros((k, b), bool),
    )


@pytest.fixture(scope="module", autouse=True)
def _horovod():
    distributed.init()


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_a_bf16_update_trains_float32_variables_and_gives_float32_q_values(net):
    learner = _learner(net, "mixed_bfloat16")
    model = learner.online
    torso = [layer for layer in model.layers if layer.name.startswith(("hidden_", "conv_"))]
    assert len(torso) == (4 if net == "cnn" else 2)
    assert {(layer.compute_dtype, layer.variable_dtype) for layer in torso} == {("bfloat16", "float32")}
    head = [layer for layer in model.layers if layer.name in ("q_values", "value", "advantage", "advantage_centred")]
    assert len(head) == (4 if net == "cnn" else 1) and {layer.compute_dtype for layer in head} == {"float32"}
    assert model.output.dtype == tf.float32 and {v.dtype for v in model.variables} == {tf.float32}

    batch = _batch(net)
    before = [v.numpy().copy() for v in model.trainable_variables]
    stats = learner.run_updates(batch, 1e-3)
    assert learner.updates == 2 and np.isfinite(stats.td_loss)
    assert all(np.abs(a - v.numpy()).max() > 0 for a, v in zip(before, model.trainable_variables))
    assert {v.dtype for v in model.variables + learner.target.variables} == {tf.float32}
    q = q_values(learner, batch.obs[0])
    assert q.dtype == np.float32 and q.shape == (8, NETS[net][2])
    # acting calls the model (the MLP too, not its float32 NumPy forward pass); in a graph, bf16 rounds where
    # TF fuses ops, so not bit for bit the eager call's values
    assert learner.tf_q_values
    acted = learner.q_fn()(batch.obs[0])
    assert acted.dtype == np.float32
    np.testing.assert_allclose(acted, q, rtol=0.02, atol=0.02 * np.abs(q).max())
    # the same weights computed in float32 give other, nearby Q-values: the torso really ran in bf16
    f32 = _learner(net, "float32")
    for d, v in zip(f32.online.variables, model.variables):
        d.assign(v)
    q32 = q_values(f32, batch.obs[0])
    assert not np.array_equal(q, q32)
    np.testing.assert_allclose(q, q32, rtol=0.05, atol=0.05 * np.abs(q32).max())
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_a_float32_run_after_a_bf16_run_in_one_process_is_unchanged(net):
    def float32_run():
        learner = _learner(net, "float32")
        learner.run_updates(_batch(net, seed=1), 1e-3)
        return distributed.weights_checksum(learner.online.variables + learner.optimizer_variables)

    first = float32_run()
    _learner(net, "mixed_bfloat16").run_updates(_batch(net, seed=1), 1e-3)
    assert float32_run() == first
    # nor does a global policy that the embedding program set leak into the float32 networks
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert float32_run() == first
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_scales_the_loss_around_horovods_optimizer_and_checkpoints_the_scale(tmp_path):
    """On a CPU mixed_float16 is allowed (slow: float16 is emulated), so its loss scaling is tested here: the
    LossScaleOptimizer wraps Horovod's DistributedOptimizer (the elastic learner always allreduces), an update
    counts a good step, and the scale and counter are saved and restored with the optimizer."""
    learner = _learner("mlp", "mixed_float16", elastic=True)
    opt = learner.optimizer
    assert isinstance(opt, keras.mixed_precision.LossScaleOptimizer)
    assert type(opt.inner_optimizer).__module__.startswith("horovod")  # Horovod's class, inside the scaling
    assert learner.online.get_layer("hidden_0").compute_dtype == "float16"
    assert float(opt.loss_scale) == 2.0**15  # tf_keras' dynamic scale starts there
    stats = learner.run_updates(_batch("mlp", k=3), 1e-3)
    assert np.isfinite(stats.td_loss) and int(opt.dynamic_counter) == 3 and int(opt.iterations) == 3
    assert q_values(learner, _batch("mlp").obs[0]).dtype == np.float32
    assert len(learner.optimizer_variables) == len(opt.variables()) + 2

    learner.optimizer_variables[-2].assign(1024.0)  # as after a few overflows
    write_model(tmp_path, learner.checkpoint_objects())
    fresh = _learner("mlp", "mixed_float16", elastic=True)
    read_model(tmp_path, fresh.checkpoint_objects(restoring=True))
    assert float(fresh.optimizer.loss_scale) == 1024.0 and int(fresh.optimizer.dynamic_counter) == 3
    assert distributed.weights_checksum(fresh.optimizer_variables) == distributed.weights_checksum(
        learner.optimizer_variables
    )
    # a float32 learner's checkpoint has no loss scale: it does not restore into a mixed_float16 one
    write_model(tmp_path / "f32", _learner("mlp", "float32").checkpoint_objects(restoring=True))  # Adam's slots too
    with pytest.raises(Exception, match="damaged or from another network"):
        read_model(tmp_path / "f32", _learner("mlp", "mixed_float16").checkpoint_objects(restoring=True))
    # ... while float32 and mixed_bfloat16 save the same variables: either restores into the other
    bf16 = _learner("mlp", "mixed_bfloat16")
    read_model(tmp_path / "f32", bf16.checkpoint_objects(restoring=True))


def test_a_bf16_export_serves_float32(tmp_path):
    """A bf16 CNN saved as the run's q_network.keras, loaded safely and exported: the SavedModel takes uint8 frames
    and returns float32 Q-values equal to the trained model's."""
    from hvd_dqn import serving
    from hvd_dqn.checkpoint import save_keras_model

    learner = _learner("cnn", "mixed_bfloat16")
    learner.run_updates(_batch("cnn", k=1), 1e-3)
    obs = _batch("cnn", k=1, b=3, seed=5).obs[0]
    q = q_values(learner, obs)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_keras_model(learner.online, run_dir / "q_network.keras")
    (run_dir / "config.json").write_text(json.dumps({"env_id": "ALE/Pong-v5", "precision": "mixed_bfloat16"}))
    loaded = serving.load_policy(run_dir)
    served = loaded.q_fn(obs)
    assert served.dtype == np.float32
    # bf16: a graph (the loaded policy's tf.function) and an eager call may round apart
    np.testing.assert_allclose(served, q, rtol=0.02, atol=0.02 * np.abs(q).max())
    serving.export(run_dir, tmp_path / "export")
    sig = tf.saved_model.load(str(tmp_path / "export" / "saved_model")).signatures["q_values"]
    assert sig.structured_input_signature[1]["observation"].dtype == tf.uint8
    out = sig(observation=tf.constant(obs))["q_values"]
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), served, rtol=1e-6, atol=1e-6)


def test_a_mixed_float16_run_on_a_cpu_says_it_is_slow_and_saves_its_loss_scale(tmp_path, capsys):
    from hvd_dqn import Trainer, serving

    tiny = {**SMOKE, "precision": "mixed_float16"}
    summary = Trainer(Config(**tiny), run_dir=tmp_path / "run").train()
    assert summary["updates"] == 25  # 5 updates at 200, 300, 400, 500 and 600
    lines = [line for line in capsys.readouterr().err.splitlines() if "mixed_float16" in line]
    assert lines == [
        "hvd-dqn: precision mixed_float16 on a CPU: float16 is emulated there and slow (it is meant "
        "for GPUs; mixed_bfloat16 is the CPU's mixed precision)"
    ]
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-600"
    saved = dict(tf.train.list_variables(str(ckpt / "model")))
    scale = [name for name in saved if "loss_scale" in name]
    assert len(scale) == 2 and all(saved[name] == [] for name in scale)  # the scale and its counter, scalars
    policy = serving.load_policy(tmp_path / "run")
    assert policy.q_fn(np.zeros((2, 4), np.float32)).dtype == np.float32
