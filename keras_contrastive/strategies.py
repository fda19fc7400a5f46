"""Choosing a `tf.distribute` strategy by name, with clear errors."""

import json
import os
from typing import Optional, Sequence

from keras_contrastive._tf import tf

STRATEGY_NAMES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def get_strategy(
    name: str = "auto", *, devices: Optional[Sequence[str]] = None
):
    """Return a `tf.distribute.Strategy` by name.

    * ``"default"``: TensorFlow's default (no distribution).
    * ``"mirrored"``: `MirroredStrategy` over all local GPUs, or over
      `devices` (e.g. ``["/cpu:0", "/cpu:1"]`` with logical CPU devices).
    * ``"multi_worker"``: `MultiWorkerMirroredStrategy` from the
      ``TF_CONFIG`` environment variable, which is checked first.
    * ``"tpu"``: `TPUStrategy` through `TPUClusterResolver` (``TPU_NAME``
      or a local TPU VM).
    * ``"auto"``: TPU if one is visible, else multi-worker if ``TF_CONFIG``
      names more than one task, else Mirrored if there is more than one
      GPU, else the default strategy.

    Create the model and compile it under ``strategy.scope()``. `model.fit`
    works under the default, Mirrored and TPU strategies; under
    multi-worker use `keras_contrastive.distribute.train`
    (keras-team/keras#20585).

    Args:
        name: one of ``"auto"``, ``"default"``, ``"mirrored"``,
            ``"multi_worker"``, ``"tpu"``.
        devices: devices for ``"mirrored"``; default all GPUs.

    Returns:
        The strategy.

    Raises:
        ValueError: for an unknown name, a malformed ``TF_CONFIG``, or
            asked-for hardware that is absent (the message says what was
            found).

    Example:
    >>> from keras_contrastive.distribute import get_strategy
    >>> strategy = get_strategy("auto")
    >>> with strategy.scope():
    ...     model = ...
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(
            f"Unknown strategy name: {name!r}. Valid names are "
            f"{list(STRATEGY_NAMES)}."
        )
    if devices is not None and name != "mirrored":
        raise ValueError(
            "`devices` only applies to the 'mirrored' strategy. "
            f"Received: name={name!r}, devices={devices!r}"
        )
    if name == "auto":
        if _tpu_visible():
            return _tpu_strategy()
        config = os.environ.get("TF_CONFIG")
        if config and _task_count(parse_tf_config(config)) > 1:
            return _multi_worker_strategy()
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            if not gpus:
                raise ValueError(
                    "The 'mirrored' strategy found no GPU on this machine. "
                    "Pass devices=[...] to mirror over other devices (for "
                    "example logical CPUs: devices=['/cpu:0', '/cpu:1']), "
                    "or use 'default'."
                )
            devices = [gpu.name for gpu in gpus]
        return tf.distribute.MirroredStrategy(list(devices))
    if name == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy()


def parse_tf_config(text: str) -> dict:
    """Parse and check a ``TF_CONFIG`` value; raise a clear `ValueError`."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Received: {text!r}"
        ) from None
    if not isinstance(config, dict) or not isinstance(
        config.get("cluster"), dict
    ):
        raise ValueError(
            'TF_CONFIG must be a JSON object with a "cluster" object, such '
            'as {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}. Received: {text!r}'
        )
    cluster = config["cluster"]
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and ":" in a for a in addresses
        ):
            raise ValueError(
                f'TF_CONFIG cluster job "{job}" must be a list of '
                f'"host:port" strings. Received: {addresses!r}'
            )
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(
            'TF_CONFIG must name this process\'s "task", such as '
            f'{{"type": "worker", "index": 0}}. Received: {task!r}'
        )
    job, index = task["type"], task.get("index", 0)
    if job not in cluster:
        raise ValueError(
            f'TF_CONFIG task type "{job}" is not a job of the cluster '
            f"{sorted(cluster)}."
        )
    if not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise ValueError(
            f'TF_CONFIG task index {index!r} is out of range for job "{job}"'
            f" with {len(cluster[job])} address(es)."
        )
    return config


def _task_count(config: dict) -> int:
    return sum(len(addresses) for addresses in config["cluster"].values())


def _multi_worker_strategy():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "The 'multi_worker' strategy needs the TF_CONFIG environment "
            "variable, which is not set. See docs/distributed.md for an "
            "example."
        )
    parse_tf_config(text)
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu_visible() -> bool:
    # Only cheap, local signs: a resolver without a TPU may wait on the
    # cloud metadata server.
    return bool(
        os.environ.get("TPU_NAME")
        or os.environ.get("COLAB_TPU_ADDR")
        or os.path.exists("/dev/accel0")
        or os.path.exists("/dev/vfio/0")
        or tf.config.list_logical_devices("TPU")
    )


def _tpu_strategy():
    if not _tpu_visible():
        raise ValueError(
            "The 'tpu' strategy found no TPU: TPU_NAME is not set and no "
            "local TPU device (/dev/accel*) exists."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"The 'tpu' strategy could not connect to the TPU: {error}"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def per_replica_batch_size(global_batch_size: int, strategy) -> int:
    """`global_batch_size` split over the replicas, which must divide it.

    In-batch losses and TPUs need every replica's batch to have the same
    static size, so a remainder is an error, not a silently ragged batch.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} is not divisible by "
            f"the {replicas} replicas of {type(strategy).__name__}; static "
            "per-replica shapes need a multiple of the replica count, such "
            f"as {replicas * max(1, global_batch_size // replicas)}."
        )
    return global_batch_size // replicas
