"""Strategies by name, the `train` loop, multi-worker and crash recovery."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import BACKEND, two_replica_strategy

if BACKEND != "tensorflow":
    pytest.skip("tf.distribute needs TensorFlow", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from keras_contrastive import distribute  # noqa: E402
from keras_contrastive.layers import PairDistance  # noqa: E402
from keras_contrastive.losses import ContrastiveLoss  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
TWO_CPUS = ["/cpu:0", "/cpu:1"]


def siamese(learning_rate=0.01, jit_compile=False):
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    a, b = keras.Input((8,)), keras.Input((8,))
    model = keras.Model([a, b], PairDistance()([encoder(a), encoder(b)]))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=ContrastiveLoss(), jit_compile=jit_compile)
    return model


def pair_batches(count=64, batch=16):
    rng = np.random.default_rng(0)
    first = rng.normal(size=(count, 8)).astype("float32")
    second = rng.normal(size=(count, 8)).astype("float32")
    labels = rng.integers(0, 2, count).astype("float32")
    return tf.data.Dataset.from_tensor_slices(
        ((first, second), labels)).batch(batch, drop_remainder=True)


def assert_same_weights(model, reference, rtol=1e-5, atol=1e-6):
    for got, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


class TestGetStrategy:
    def test_default_and_auto_on_a_cpu_machine(self, monkeypatch):
        monkeypatch.delenv("TF_CONFIG", raising=False)
        monkeypatch.delenv("TPU_NAME", raising=False)
        assert distribute.get_strategy("default").num_replicas_in_sync == 1
        assert distribute.get_strategy("auto").num_replicas_in_sync == 1

    def test_mirrored_over_given_devices(self):
        strategy = distribute.get_strategy("mirrored", devices=TWO_CPUS)
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        assert strategy.num_replicas_in_sync == 2

    def test_mirrored_without_gpu_says_so(self):
        with pytest.raises(ValueError, match="found no GPU.*devices="):
            distribute.get_strategy("mirrored")

    def test_tpu_absent_says_so(self, monkeypatch):
        monkeypatch.delenv("TPU_NAME", raising=False)
        monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
        if os.path.exists("/dev/accel0"):
            pytest.skip("this machine has a TPU")
        with pytest.raises(ValueError, match="found no TPU"):
            distribute.get_strategy("tpu")

    def test_unknown_name_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="'gpu'.*mirrored.*multi_worker"):
            distribute.get_strategy("gpu")

    @pytest.mark.parametrize(
        "config, message",
        [
            (None, "TF_CONFIG environment variable, which is not set"),
            ("{not json", "not valid JSON"),
            ('{"task": {}}', 'a "cluster" object'),
            ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker"}}',
             '"host:port" strings'),
            ('{"cluster": {"worker": ["h:1"]}}', 'name this process'),
            ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief"}}',
             'task type "chief" is not a job'),
            ('{"cluster": {"worker": ["h:1"]}, '
             '"task": {"type": "worker", "index": 3}}', "out of range"),
        ],
    )
    def test_malformed_tf_config(self, monkeypatch, config, message):
        if config is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", config)
        with pytest.raises(ValueError, match=message):
            distribute.get_strategy("multi_worker")

    def test_per_replica_batch_size(self):
        strategy = distribute.get_strategy("mirrored", devices=TWO_CPUS)
        assert distribute.per_replica_batch_size(64, strategy) == 32
        with pytest.raises(ValueError, match="63 is not divisible by the 2"):
            distribute.per_replica_batch_size(63, strategy)


class TestTrain:
    def test_default_strategy_matches_fit(self):
        reference = siamese()
        expected = reference.fit(pair_batches(), epochs=2, shuffle=False,
                                 verbose=0).history
        model = siamese()
        history = distribute.train(model, pair_batches(), epochs=2, verbose=0)
        np.testing.assert_allclose(history.history["loss"], expected["loss"],
                                   rtol=1e-6)
        assert_same_weights(model, reference)

    def test_mirrored_matches_one_device_and_validates(self):
        reference = siamese()
        reference.fit(pair_batches(), epochs=2, shuffle=False, verbose=0)
        strategy = two_replica_strategy()
        with strategy.scope():
            model = siamese()
        history = distribute.train(
            model, pair_batches(), strategy=strategy, epochs=2, verbose=0,
            validation_data=pair_batches(count=32))
        assert_same_weights(model, reference)
        assert set(history.history) == {"loss", "val_loss"}
        expected = reference.evaluate(pair_batches(count=32), verbose=0)
        np.testing.assert_allclose(history.history["val_loss"][-1], expected,
                                   rtol=1e-5)

    def test_dataset_function_gets_per_replica_batches(self):
        strategy = two_replica_strategy()
        contexts = []

        def dataset_fn(context):
            contexts.append(context)
            size = context.get_per_replica_batch_size(16)
            return pair_batches(batch=size)

        with strategy.scope():
            model = siamese()
        distribute.train(model, dataset_fn, strategy=strategy, epochs=1,
                         steps_per_epoch=3, verbose=0)
        assert contexts[-1].num_replicas_in_sync == 2
        assert int(model.optimizer.iterations.numpy()) == 3

    def test_callbacks_and_early_stopping(self):
        seen = []

        class Record(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(batch)
                if len(seen) == 6:
                    self.model.stop_training = True

        history = distribute.train(siamese(), pair_batches(), epochs=5,
                                   callbacks=[Record()], verbose=0)
        assert seen == [0, 1, 2, 3, 0, 1]
        assert len(history.history["loss"]) == 2

    def test_xla_step(self):
        reference = siamese()
        reference.fit(pair_batches(), epochs=1, shuffle=False, verbose=0)
        model = siamese()
        distribute.train(model, pair_batches(), epochs=1, jit_compile=True,
                         verbose=0)
        assert_same_weights(model, reference, rtol=1e-4, atol=1e-5)

    def test_resumes_from_checkpoint_where_it_stopped(self, tmp_path):
        reference = siamese()
        distribute.train(reference, pair_batches(), epochs=3, verbose=0)
        interrupted = siamese()
        distribute.train(interrupted, pair_batches(), epochs=2, verbose=0,
                         checkpoint_dir=str(tmp_path), checkpoint_every=3)
        assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-8")
        resumed = siamese()
        distribute.train(resumed, pair_batches(), epochs=3, verbose=0,
                         checkpoint_dir=str(tmp_path), checkpoint_every=3)
        assert int(resumed.optimizer.iterations.numpy()) == 12
        assert_same_weights(resumed, reference)

    @pytest.mark.parametrize(
        "kwargs, error, message",
        [
            ({"epochs": 0}, ValueError, "`epochs` must be a positive"),
            ({"steps_per_epoch": -1}, ValueError, "`steps_per_epoch`"),
            ({"checkpoint_every": 0}, ValueError, "`checkpoint_every`"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error, match=message):
            distribute.train(siamese(), pair_batches(), verbose=0, **kwargs)

    def test_endless_dataset_needs_steps(self):
        with pytest.raises(ValueError, match="`steps_per_epoch` is required"):
            distribute.train(siamese(), pair_batches().repeat(), verbose=0)

    def test_not_a_dataset(self):
        with pytest.raises(TypeError, match="must be a tf.data.Dataset"):
            distribute.train(siamese(), [1, 2, 3], steps_per_epoch=1,
                             verbose=0)

    def test_uncompiled_model(self):
        encoder = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        with pytest.raises(ValueError, match="needs a compiled model"):
            distribute.train(encoder, pair_batches(), verbose=0)

    def test_global_batch_not_divisible_by_replicas(self):
        strategy = two_replica_strategy()
        with strategy.scope():
            model = siamese()
        with pytest.raises(ValueError, match="15 is not divisible by the 2"):
            distribute.train(model, pair_batches(batch=15), strategy=strategy,
                             verbose=0)


def load_example(name):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_workers_on_localhost_match_one_process():
    pytest.importorskip("sklearn")
    example = load_example("multi_worker")
    workers, reference = example.launch(workers=2, steps=3, timeout=240)
    assert len(workers) == 2
    for a, b in zip(*workers):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(workers[0], reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # training moved the weights away from their seeded start
    assert any(np.abs(a - b).max() > 1e-4 for a, b in
               zip(workers[0], example.build_model(keras).get_weights()))


RESUMABLE_JOB = textwrap.dedent("""
    import sys, time
    import numpy as np, keras, tensorflow as tf
    sys.path.insert(0, {tests!r})
    from test_distribute import pair_batches, siamese
    from keras_contrastive import distribute

    class Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print("step", int(self.model.optimizer.iterations.numpy()),
                  flush=True)
            time.sleep(float(sys.argv[3]))

    model = siamese()
    distribute.train(model, pair_batches(count=160), epochs=2, verbose=1,
                     checkpoint_dir=sys.argv[1], checkpoint_every=2,
                     callbacks=[Slow()])
    np.savez(sys.argv[2], *model.get_weights())
""")


def test_sigkill_mid_epoch_then_same_command_resumes(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(RESUMABLE_JOB.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def command(folder, out, pause):
        return [sys.executable, str(script), str(tmp_path / folder),
                str(tmp_path / out), str(pause)]

    job = subprocess.Popen(command("run", "killed.npz", 0.3),
                           stdout=subprocess.PIPE, text=True, env=env)
    killed_at = 0
    try:
        for line in job.stdout:
            if line.startswith("step"):
                killed_at = int(line.split()[1])
                if killed_at >= 7:  # mid-epoch 1 (10 steps per epoch)
                    job.send_signal(signal.SIGKILL)
                    break
    finally:
        job.kill()
        job.wait(timeout=60)
    assert killed_at >= 7
    assert not (tmp_path / "killed.npz").exists()

    resumed = subprocess.run(command("run", "resumed.npz", 0), env=env,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = resumed.stdout.splitlines()
    start = next(int(text.split()[-1]) for text in lines
                 if text.startswith("Resuming"))
    assert killed_at - 2 <= start <= killed_at  # lost at most 2 steps
    first_step = next(int(text.split()[1]) for text in lines
                      if text.startswith("step"))
    assert first_step == start + 1

    straight = subprocess.run(command("fresh", "straight.npz", 0), env=env,
                              capture_output=True, text=True, timeout=180)
    assert straight.returncode == 0, straight.stderr[-2000:]
    with np.load(tmp_path / "resumed.npz") as a, \
            np.load(tmp_path / "straight.npz") as b:
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_backup_and_restore_under_fit_with_mirrored(tmp_path):
    strategy = two_replica_strategy()

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    backup = str(tmp_path / "backup")
    with strategy.scope():
        model = siamese()
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.fit(pair_batches(), epochs=4, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup), Crash()])
    with strategy.scope():
        model = siamese()
    history = model.fit(pair_batches(), epochs=4, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2  # only epochs 3 and 4 ran
    assert int(model.optimizer.iterations.numpy()) == 16

    with strategy.scope():
        straight = siamese()
    straight.fit(pair_batches(), epochs=4, verbose=0)
    assert_same_weights(model, straight, rtol=1e-5, atol=1e-6)


def labelled_batches(count=32, batch=16):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(count, 8)).astype("float32")
    y = np.repeat(np.arange(count // 4), 4)  # 4 examples of each class
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(
        batch, drop_remainder=True)


def encoder_with(loss, jit_compile=False):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss,
                  jit_compile=jit_compile)
    return model


def every_loss():
    from keras_contrastive.losses import BatchContrastiveLoss, NTXentLoss

    return {
        "contrastive": (lambda: ContrastiveLoss(), None),
        "batch_all": (lambda: BatchContrastiveLoss(cross_replica=True), None),
        "batch_hard": (lambda: BatchContrastiveLoss(
            miner="batch_hard", cross_replica=True), None),
        "ntxent": (lambda: NTXentLoss(cross_replica=True), None),
    }


def one_fit_step(name, strategy, jit_compile=False):
    make_loss, _ = every_loss()[name]
    with strategy.scope():
        if name == "contrastive":
            model = siamese(learning_rate=0.1, jit_compile=jit_compile)
            data = pair_batches(count=16)
        else:
            model = encoder_with(make_loss(), jit_compile=jit_compile)
            data = labelled_batches(count=16)
    model.fit(data, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("name", ["contrastive", "batch_all", "batch_hard",
                                  "ntxent"])
def test_fit_step_on_two_replicas_equals_one_device(name):
    single = one_fit_step(name, tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = one_fit_step(name, two_replica_strategy())
    assert_same_weights(mirrored, single, rtol=1e-5, atol=1e-7)
    start = siamese() if name == "contrastive" else encoder_with(None)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in
               zip(mirrored.get_weights(), start.get_weights()))


@pytest.mark.parametrize("name", ["contrastive", "batch_all", "batch_hard",
                                  "ntxent"])
def test_every_training_step_compiles_with_xla(name):
    """TPU readiness on CPU: each loss's fit step compiles with XLA."""
    eager = one_fit_step(name, tf.distribute.get_strategy())
    model = one_fit_step(name, tf.distribute.get_strategy(), jit_compile=True)
    assert model.jit_compile
    assert_same_weights(model, eager, rtol=1e-4, atol=1e-6)


def test_pipelines_use_no_python_functions():
    """No py_function/numpy_function: graphs run on TPU hosts and workers."""
    from keras_contrastive import data

    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    y = np.arange(40) % 5
    pipelines = {
        "pairs": data.make_pair_dataset(x, y, batch_size=8, seed=0),
        "balanced": data.class_balanced_dataset(
            x, y, classes_per_batch=2, examples_per_class=4, seed=0),
        "views": data.augmented_views(
            tf.data.Dataset.from_tensor_slices((x, np.arange(40))).batch(8),
            lambda v: v + tf.random.normal(tf.shape(v)), seed=0),
    }
    for name, dataset in pipelines.items():
        graph = tf.compat.v1.GraphDef()
        graph.ParseFromString(dataset._as_serialized_graph().numpy())
        ops = {node.op for node in graph.node}
        for function in graph.library.function:
            ops |= {node.op for node in function.node_def}
        assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}, name
        next(iter(dataset))  # and it runs
