"""Test set-up: quiet TensorFlow, two logical CPU devices, a jit helper.

Two logical CPUs let the tf.distribute tests run a real 2-replica
MirroredStrategy on a CPU-only machine (and 2 host devices under JAX).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] == "jax":
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_force_host_platform_device_count=2"
    )

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

_TWO_REPLICAS = []


def two_replica_strategy():
    """One `MirroredStrategy` over the 2 logical CPUs, shared per process.

    Separate strategy objects in one process can hand out the same
    collective instance keys to different collectives, which TensorFlow
    then aborts ("Collective instance ... expected type ..."); sharing one
    avoids that.
    """
    if not _TWO_REPLICAS:
        _TWO_REPLICAS.append(
            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        )
    return _TWO_REPLICAS[0]


requires_tensorflow = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="needs the TensorFlow backend"
)


def compile_xla(function):
    """`function` compiled with XLA by the active backend.

    TensorFlow: `tf.function(jit_compile=True)`; JAX: `jax.jit`.
    """
    if BACKEND == "tensorflow":
        return tf.function(function, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(function)
    pytest.skip(f"no XLA compilation for backend {BACKEND}")


def value_and_gradient(function, *args):
    """`function(*args)` (a scalar) and its gradients w.r.t. every arg,
    eagerly, on the active backend."""
    if BACKEND == "tensorflow":
        args = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            for a in args:
                tape.watch(a)
            value = function(*args)
        return value, tape.gradient(value, args)
    if BACKEND == "jax":
        import jax

        return jax.value_and_grad(function, argnums=tuple(range(len(args))))(
            *args
        )
    pytest.skip(f"no gradient helper for backend {BACKEND}")


@pytest.fixture(autouse=True)
def _reset_policy():
    yield
    keras.config.set_dtype_policy("float32")
