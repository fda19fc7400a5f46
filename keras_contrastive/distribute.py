"""Distributed training helpers (TensorFlow `tf.distribute`).

`cross_replica_concat` lets in-batch losses see the global batch: each
replica's anchors are compared with the embeddings of every replica.
"""

from keras_contrastive._tf import tf


def _can_all_gather(strategy) -> bool:
    # Strategies implement all-gather through `_gather_to_implementation`;
    # the base class only raises NotImplementedError.
    base = tf.distribute.StrategyExtended._gather_to_implementation
    implementation = type(strategy.extended)._gather_to_implementation
    return implementation is not base


def _gather_error(strategy, error=None):
    return ValueError(
        "`cross_replica=True` needs a tf.distribute strategy that can "
        "all-gather tensors between replicas (MirroredStrategy, "
        "MultiWorkerMirroredStrategy, TPUStrategy), but the current strategy "
        f"is {type(strategy).__name__}, which cannot"
        + (f" ({error})" if error else "")
        + ". Use cross_replica=False with this strategy."
    )


def _replica_context_or_none():
    """The replica context when several replicas run in sync, else None."""
    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync <= 1:
        return None
    context = tf.distribute.get_replica_context()
    if context is None:
        # Cross-replica context: tensors here are not per-replica shards.
        return None
    if not _can_all_gather(strategy):
        raise _gather_error(strategy)
    return context


@tf.custom_gradient
def _dense_gradient(tensor):
    # all_gather's gradient all-reduces; it cannot take the IndexedSlices
    # that a gather (tf.gather, keras.ops.take) of the result sends back.
    return tf.identity(tensor), tf.convert_to_tensor


def cross_replica_concat(tensor):
    """Concatenate `tensor` from all replicas along axis 0.

    Inside ``strategy.run`` of a strategy with several replicas in sync,
    every replica gets ``concat([tensor_replica_0, tensor_replica_1, ...])``
    (replica order, so replica `r`'s rows start at the sum of the sizes of
    replicas ``0 .. r-1``). Outside a strategy, with one replica, or in a
    cross-replica context it returns `tensor` unchanged.

    Gradient: the gradient of the gathered tensor is summed over all
    replicas and each replica keeps the slice of its own rows (the gradient
    of `tf.distribute.ReplicaContext.all_gather`). So a loss on replica `r`
    that uses rows of replica `s` sends its gradient to replica `s`, and,
    with Keras's ``1 / num_replicas`` loss scaling and the strategy's sum of
    variable gradients, training on `R` replicas gives the gradients of one
    device on the same global batch.

    Args:
        tensor: a tensor of rank >= 1 whose shape is the same on every
            replica except along axis 0.

    Returns:
        The concatenated tensor, `[sum of the replicas' sizes, ...]`.

    Raises:
        ValueError: when the current strategy cannot all-gather (for
            example a parameter-server strategy); the message names it.

    Example:
    >>> import tensorflow as tf
    >>> from keras_contrastive.distribute import cross_replica_concat
    >>> strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    >>> strategy.run(cross_replica_concat, (tf.ones([2, 3]),)).shape
    TensorShape([2, 3])
    """
    tensor = tf.convert_to_tensor(tensor)
    context = _replica_context_or_none()
    if context is None:
        return tensor
    try:
        gathered = context.all_gather(tensor, axis=0)
    except NotImplementedError as error:
        raise _gather_error(tf.distribute.get_strategy(), error) from error
    if not tensor.dtype.is_floating:
        return gathered
    return _dense_gradient(gathered)


def _replica_offset(tensor):
    """Row offset of this replica's `tensor` in `cross_replica_concat(tensor)`.

    Returns an int32 scalar: 0 outside a strategy or with one replica.
    """
    context = _replica_context_or_none()
    if context is None:
        return tf.constant(0, "int32")
    sizes = context.all_gather(tf.shape(tensor)[:1], axis=0)
    before = tf.range(tf.size(sizes)) < context.replica_id_in_sync_group
    return tf.reduce_sum(tf.where(before, sizes, tf.zeros_like(sizes)))


# Strategies by name and the training loop live in their own modules; this
# module is their public home.
from keras_contrastive.strategies import (  # noqa: E402
    get_strategy,
    parse_tf_config,
    per_replica_batch_size,
)
from keras_contrastive.training import train, worker_info  # noqa: E402

__all__ = [
    "cross_replica_concat",
    "get_strategy",
    "parse_tf_config",
    "per_replica_batch_size",
    "train",
    "worker_info",
]
