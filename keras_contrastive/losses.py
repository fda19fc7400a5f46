"""Contrastive losses as plain functions plus thin `keras.losses.Loss` classes.

Pair labels follow one convention everywhere in this package: ``0`` marks a
similar (positive) pair and ``1`` a dissimilar (negative) pair, as in the
original formula of Hadsell, Chopra and LeCun (2006) and the keras.io Siamese
example. Pass ``similar_label=1`` for the opposite convention (TensorFlow
Addons, sentence-transformers).
"""

import keras
import numpy as np
from keras import ops

from keras_contrastive import distances
from keras_contrastive._common import (
    check_margins,
    check_similar_label,
    is_concrete,
    margin_loss,
)


def _pair_distances(y_pred, metric):
    """Distances `[N]` from distances `[N]`/`[N, 1]` or pairs `[N, 2, D]`."""
    y_pred = ops.convert_to_tensor(y_pred)
    rank = len(y_pred.shape)
    if rank == 3:
        if y_pred.shape[1] != 2:
            raise ValueError(
                "A rank-3 `y_pred` must be stacked embedding pairs "
                "[N, 2, D] (middle dimension 2). "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        return distances.get(metric)(y_pred[:, 0, :], y_pred[:, 1, :])
    if rank == 2 and y_pred.shape[1] == 1:
        y_pred = ops.squeeze(y_pred, axis=1)
    elif rank != 1:
        raise ValueError(
            "`y_pred` must be distances [N] or [N, 1], or stacked embedding "
            f"pairs [N, 2, D]. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    return ops.cast(y_pred, distances.compute_dtype(y_pred))


def _pair_labels(y_true, batch_size):
    """Pair labels as a float vector `[N]`, checked against `{0, 1}`."""
    y_true = ops.convert_to_tensor(y_true)
    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[1] == 1:
        y_true = ops.squeeze(y_true, axis=1)
    elif len(shape) != 1:
        raise ValueError(
            "`y_true` must be pair labels [N] or [N, 1]. "
            f"Received: y_true.shape={shape}"
        )
    if None not in (y_true.shape[0], batch_size) and (
        y_true.shape[0] != batch_size
    ):
        raise ValueError(
            "`y_true` and `y_pred` must hold the same number of pairs. "
            f"Received: {y_true.shape[0]} labels and {batch_size} pairs"
        )
    if is_concrete(y_true):
        values = np.asarray(ops.convert_to_numpy(y_true))
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            raise ValueError(
                "Pair labels in `y_true` must be 0 or 1 (0 = similar unless "
                f"similar_label=1). Received values such as "
                f"{np.unique(bad)[:5].tolist()}"
            )
    return ops.cast(y_true, "float32")


def _assert_binary_in_graph(valid):
    """Under a TensorFlow graph, raise at run time on labels outside {0, 1}.

    XLA compiles asserts away; there the NaN that `contrastive_loss` puts on
    such pairs is what surfaces the error.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            tf.debugging.assert_equal(
                tf.reduce_all(valid),
                True,
                message="Pair labels in `y_true` must be 0 or 1",
            )


def contrastive_loss(
    y_true,
    y_pred,
    *,
    margin: float = 1.0,
    positive_margin: float = 0.0,
    similar_label: int = 0,
    squared: bool = True,
    metric="euclidean",
):
    """Margin contrastive loss, one value per pair.

    With ``Y = 0`` for a similar pair and ``Y = 1`` for a dissimilar one
    (the default `similar_label=0`), and `D` the pair's distance::

        L = (1 - Y) * max(0, D - positive_margin)^p + Y * max(0, margin - D)^p

    with ``p = 2`` when `squared` (default) and ``p = 1`` otherwise. With the
    defaults this is exactly ``(1 - Y) D^2 + Y max(0, m - D)^2`` (Hadsell et
    al. 2006). Similar pairs are pulled together until they are within
    `positive_margin`; dissimilar pairs are pushed apart until they are at
    least `margin` away.

    Args:
        y_true: pair labels `[N]` or `[N, 1]`, int, float or bool, each 0 or
            1. ``0`` = similar unless ``similar_label=1``.
        y_pred: distances `[N]` or `[N, 1]` (the output of
            `keras_contrastive.layers.PairDistance`), or stacked embedding
            pairs `[N, 2, D]`, whose distance `metric` computes.
        margin: distance beyond which a dissimilar pair costs nothing; > 0.
        positive_margin: distance within which a similar pair costs nothing;
            ``0 <= positive_margin < margin``.
        similar_label: which label value marks a similar pair, 0 or 1.
        squared: square the hinge terms (``p = 2``) or not (``p = 1``, the
            PyTorch Metric Learning form).
        metric: distance for `[N, 2, D]` inputs: ``"euclidean"``,
            ``"squared_euclidean"``, ``"cosine"`` or a callable.

    Returns:
        Per-pair losses `[N]`, float32 for float16/bfloat16 inputs. A NaN
        distance gives a NaN loss; an infinite distance costs ``inf`` for a
        similar pair and 0 for a dissimilar one. Labels outside {0, 1} raise
        a `ValueError` when seen eagerly, fail a run-time assertion inside a
        TensorFlow graph, and give NaN for those pairs under XLA or JAX jit.

    Example:
    >>> from keras_contrastive.losses import contrastive_loss
    >>> contrastive_loss([0, 1], [0.5, 0.25])  # [0.25, 0.5625]

    Reference:
        Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an
        Invariant Mapping. CVPR 2006.
    """
    margin, positive_margin = check_margins(margin, positive_margin)
    similar_label = check_similar_label(similar_label)
    distance = _pair_distances(y_pred, metric)
    labels = _pair_labels(y_true, distance.shape[0])
    labels = ops.cast(labels, distance.dtype)
    valid = ops.logical_or(ops.equal(labels, 0), ops.equal(labels, 1))
    _assert_binary_in_graph(valid)
    loss = margin_loss(
        distance,
        ops.equal(labels, similar_label),
        margin=margin,
        positive_margin=positive_margin,
        squared=squared,
    )
    return ops.where(valid, loss, ops.full_like(loss, float("nan")))


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ContrastiveLoss(keras.losses.Loss):
    """Margin contrastive loss for Siamese networks, as a Keras `Loss`.

    Per pair, with ``Y = 0`` similar and ``Y = 1`` dissimilar (unless
    ``similar_label=1``) and `D` the pair's distance::

        L = (1 - Y) * max(0, D - positive_margin)^p + Y * max(0, margin - D)^p

    ``p = 2`` if `squared` else 1. `call` returns one loss per pair, so
    Keras applies the `reduction`, `sample_weight` and, under a
    `tf.distribute` strategy, the ``1 / num_replicas`` scaling. The default
    reduction ``"sum_over_batch_size"`` averages over all pairs, similar
    and dissimilar alike (unlike PyTorch Metric Learning, which averages
    only the non-zero terms): the gradient then does not jump when a few
    hard pairs appear or disappear.

    Args:
        margin: distance beyond which a dissimilar pair costs nothing.
        positive_margin: distance within which a similar pair costs nothing.
        similar_label: the label value of a similar pair, 0 (default) or 1.
        squared: square the hinge terms.
        metric: distance used when `y_pred` is stacked pairs `[N, 2, D]`.
        reduction: a Keras reduction: ``"sum_over_batch_size"``, ``"sum"``,
            ``"mean"``, ``"mean_with_sample_weight"`` or None.
        name: name of the loss.
        dtype: dtype the loss is computed in (default: floatx).

    Shapes:
        `y_true`: `[N]` or `[N, 1]` pair labels; `y_pred`: `[N]`/`[N, 1]`
        distances or `[N, 2, D]` embedding pairs.

    Example:
    >>> import keras
    >>> from keras_contrastive.layers import PairDistance
    >>> from keras_contrastive.losses import ContrastiveLoss
    >>> a, b = keras.Input((8,)), keras.Input((8,))
    >>> encoder = keras.layers.Dense(4)
    >>> distance = PairDistance()([encoder(a), encoder(b)])
    >>> model = keras.Model([a, b], distance)
    >>> model.compile(optimizer="adam", loss=ContrastiveLoss(margin=1.0))

    Reference:
        Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an
        Invariant Mapping. CVPR 2006.
    """

    def __init__(
        self,
        margin: float = 1.0,
        positive_margin: float = 0.0,
        similar_label: int = 0,
        squared: bool = True,
        metric="euclidean",
        reduction="sum_over_batch_size",
        name: str = "contrastive_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin, self.positive_margin = check_margins(
            margin, positive_margin
        )
        self.similar_label = check_similar_label(similar_label)
        self.squared = bool(squared)
        distances.get(metric)
        self.metric = distances.serialize(metric)

    def call(self, y_true, y_pred):
        return contrastive_loss(
            y_true,
            y_pred,
            margin=self.margin,
            positive_margin=self.positive_margin,
            similar_label=self.similar_label,
            squared=self.squared,
            metric=self.metric,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "margin": self.margin,
                "positive_margin": self.positive_margin,
                "similar_label": self.similar_label,
                "squared": self.squared,
                "metric": self.metric,
            }
        )
        return config


__all__ = ["ContrastiveLoss", "contrastive_loss"]

# The in-batch losses live in their own module; they are part of this one's
# public API.
from keras_contrastive.batch_losses import (  # noqa: E402
    BatchContrastiveLoss,
    NTXentLoss,
    batch_contrastive_loss,
    nt_xent_loss,
)

__all__ += [
    "BatchContrastiveLoss",
    "NTXentLoss",
    "batch_contrastive_loss",
    "nt_xent_loss",
]
