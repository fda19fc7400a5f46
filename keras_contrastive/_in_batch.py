"""Internals shared by the in-batch losses of `keras_contrastive.batch_losses`:
argument checks, the batch of candidates (local, or gathered from every
replica with ``cross_replica=True``) with its pair masks, and the thin
`Loss` class that forwards hyperparameters to a loss function.
"""

import keras
from keras import ops

from keras_contrastive import mining
from keras_contrastive.distances import compute_dtype


def check_embeddings(embeddings):
    x = ops.convert_to_tensor(embeddings)
    if len(x.shape) != 2:
        raise ValueError(
            "`embeddings` (y_pred) must be a batch of vectors [B, D]. "
            f"Received: embeddings.shape={tuple(x.shape)}"
        )
    return ops.cast(x, compute_dtype(x))


def check_labels(labels, batch_size):
    labels = mining._as_label_vector(labels, "labels")
    if None not in (labels.shape[0], batch_size) and (
        labels.shape[0] != batch_size
    ):
        raise ValueError(
            "`labels` (y_true) must hold one label per embedding. Received: "
            f"{labels.shape[0]} labels for {batch_size} embeddings"
        )
    return labels


class Batch:
    """Anchors, their candidates (local or gathered) and pair masks."""

    def __init__(self, x, labels, cross_replica):
        self.x, self.labels, self.distributed = x, labels, None
        if cross_replica and keras.backend.backend() == "tensorflow":
            from keras_contrastive import distribute

            if distribute._replica_context_or_none() is not None:
                self.distributed = distribute
        self.size = ops.shape(x)[0]
        if self.distributed is not None:
            self.ref_labels = distribute.cross_replica_concat(labels)
            self.size = ops.shape(self.ref_labels)[0]

    def masks(self):
        """Positive and negative masks `[B, M]`, self-pairs excluded."""
        if self.distributed is None:
            return mining.pair_masks(self.labels)
        positive, negative = mining.pair_masks(self.labels, self.ref_labels)
        rows = ops.arange(ops.shape(self.x)[0]) + ops.cast(
            self.distributed._replica_offset(self.x), "int32"
        )
        not_self = ops.not_equal(
            ops.expand_dims(rows, 1), ops.expand_dims(ops.arange(self.size), 0)
        )
        return (ops.logical_and(positive, not_self),
                ops.logical_and(negative, not_self))

    def candidates(self, tensor):
        """`tensor` of the whole (global) batch."""
        if self.distributed is None:
            return tensor
        return self.distributed.cross_replica_concat(tensor)

    def total(self, value):
        """Sum of a scalar over all replicas (no gradient)."""
        value = ops.stop_gradient(value)
        if self.distributed is None:
            return value
        return ops.sum(self.candidates(ops.reshape(value, [1])))


class InBatchLoss(keras.losses.Loss):
    """A `Loss` that forwards its `_fields` to its `_function` and lists
    them in `get_config` (every argument survives a config round trip)."""

    _function = None
    _fields = ()

    def call(self, y_true, y_pred):
        options = {name: getattr(self, name) for name in self._fields}
        return type(self)._function(y_true, y_pred, **options)

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self._fields})
        return config
