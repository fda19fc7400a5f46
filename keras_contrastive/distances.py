"""Numerically safe distances between embeddings, in `keras.ops`.

Two shapes of question are answered here:

* paired rows, ``[N, D] x [N, D] -> [N]``: `euclidean`, `squared_euclidean`,
  `cosine` (what a Siamese network compares);
* all pairs, ``[N, D] x [M, D] -> [N, M]``: `pairwise_distances` (what
  in-batch losses, mining and retrieval compare).

Every function computes in float32 when given float16 or bfloat16 inputs
(mixed precision) and keeps float32/float64 otherwise. All of them are
distances: 0 for identical inputs, larger for less similar ones.
"""

from typing import Callable, Optional, Union

import keras
from keras import ops

from keras_contrastive._common import registered_name, resolve

# Squared distances at or below this value are treated as exactly zero before
# the square root. sqrt has an infinite slope at 0, and XLA turns the
# resulting 0 * inf into NaN; 1e-30 only affects distances below 1e-15, far
# under float32 resolution for any embedding, so no real distance is biased.
_TINY_SQUARED = 1e-30
# Norms are floored at this value before dividing, so a zero vector gets a
# cosine distance of 1 (orthogonal to everything) and a finite gradient.
_NORM_EPSILON = 1e-12

_LOW_PRECISION = ("float16", "bfloat16")


def compute_dtype(x) -> str:
    """The dtype distances of `x` are computed in.

    float16/bfloat16 become float32 (their range and resolution are too
    small for squared distances); integer and boolean inputs become
    `keras.config.floatx()`; float32/float64 are kept.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in _LOW_PRECISION:
        return "float32"
    if not dtype.startswith("float"):
        return keras.config.floatx()
    return dtype


def _as_compute_tensor(x):
    x = ops.convert_to_tensor(x)
    return ops.cast(x, compute_dtype(x))


def _check_paired(a, b):
    if a.shape != b.shape and None not in a.shape + b.shape:
        raise ValueError(
            "Paired distances need `a` and `b` of the same shape [N, D]. "
            f"Received: a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}"
        )
    if len(a.shape) < 1:
        raise ValueError(
            "Paired distances need inputs of rank >= 1, such as [N, D]. "
            f"Received: a.shape={tuple(a.shape)}"
        )


def safe_sqrt(squared):
    """Square root with a finite (zero) gradient at 0, eagerly and under XLA.

    Values at or below 1e-30 map to exactly 0; every other value is the
    plain `sqrt`, so no distance above 1e-15 is biased.
    """
    positive = squared > _TINY_SQUARED
    safe = ops.where(positive, squared, ops.ones_like(squared))
    return ops.where(positive, ops.sqrt(safe), ops.zeros_like(squared))


def _unit_rows(x):
    # x / max(|x|, eps) written with a floored squared norm, so the gradient
    # of a zero row is finite.
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    floor = ops.cast(_NORM_EPSILON**2, x.dtype)
    return x * ops.rsqrt(ops.maximum(squared_norm, floor))


@keras.saving.register_keras_serializable(package="keras_contrastive")
def squared_euclidean(a, b):
    """Squared Euclidean distance between paired rows.

    ``d(a_i, b_i) = sum_k (a_ik - b_ik)^2``

    Args:
        a: embeddings `[N, D]` (any leading shape works: the last axis is
            reduced).
        b: embeddings of the same shape as `a`.

    Returns:
        Distances `[N]`, in float32 for float16/bfloat16 inputs.

    Example:
    >>> from keras_contrastive import distances
    >>> distances.squared_euclidean([[0.0, 0.0]], [[3.0, 4.0]])  # [25.]
    """
    a, b = _as_compute_tensor(a), _as_compute_tensor(b)
    _check_paired(a, b)
    return ops.sum(ops.square(a - b), axis=-1)


@keras.saving.register_keras_serializable(package="keras_contrastive")
def euclidean(a, b):
    """Euclidean (L2) distance between paired rows, safe at zero distance.

    ``d(a_i, b_i) = sqrt(sum_k (a_ik - b_ik)^2)``

    The difference is taken directly (not through the
    ``|a|^2 + |b|^2 - 2 a.b`` expansion), so an identical pair is exactly 0.
    The gradient at zero distance is 0, not NaN, also under
    `jit_compile=True`.

    Args:
        a: embeddings `[N, D]`.
        b: embeddings of the same shape as `a`.

    Returns:
        Distances `[N]`, in float32 for float16/bfloat16 inputs.

    Example:
    >>> from keras_contrastive import distances
    >>> distances.euclidean([[0.0, 0.0]], [[3.0, 4.0]])  # [5.]
    """
    return safe_sqrt(squared_euclidean(a, b))


@keras.saving.register_keras_serializable(package="keras_contrastive")
def cosine(a, b):
    """Cosine distance between paired rows: one minus cosine similarity.

    ``d(a_i, b_i) = 1 - a_i.b_i / (|a_i| |b_i|)``, clipped to ``[0, 2]``.

    A zero row counts as orthogonal to everything (distance 1), with a
    finite gradient.

    Args:
        a: embeddings `[N, D]`.
        b: embeddings of the same shape as `a`.

    Returns:
        Distances `[N]` in ``[0, 2]``, float32 for float16/bfloat16 inputs.

    Example:
    >>> from keras_contrastive import distances
    >>> distances.cosine([[1.0, 0.0]], [[0.0, 2.0]])  # [1.]
    """
    a, b = _as_compute_tensor(a), _as_compute_tensor(b)
    _check_paired(a, b)
    similarity = ops.sum(_unit_rows(a) * _unit_rows(b), axis=-1)
    return ops.clip(1.0 - similarity, 0.0, 2.0)


_METRICS = {
    "euclidean": euclidean,
    "squared_euclidean": squared_euclidean,
    "cosine": cosine,
}

Metric = Union[str, Callable, dict]


def get(identifier: Metric) -> Callable:
    """Return the paired-row distance function for a name or a callable.

    Args:
        identifier: one of ``"euclidean"``, ``"squared_euclidean"``,
            ``"cosine"``; a callable ``f(a, b) -> [N]``; or a config dict
            from `keras.saving.serialize_keras_object` of a registered
            function.

    Returns:
        The distance function.

    Raises:
        ValueError: for an unknown name (the valid names are listed).
        TypeError: for anything that is neither a string nor a callable.
    """
    return resolve(identifier, _METRICS, argument="metric",
                   usage="f(a, b) -> [N]")


def serialize(metric: Metric):
    """The JSON-friendly form of a metric for a `get_config`."""
    if isinstance(metric, (str, dict)):
        return metric
    name = registered_name(metric, _METRICS)
    return name or keras.saving.serialize_keras_object(metric)


def name_of(metric: Metric) -> Optional[str]:
    """The built-in name of `metric`, or None for a custom callable."""
    return registered_name(get(metric), _METRICS)


def pairwise_distances(x, y=None, metric: Metric = "euclidean"):
    """Distances between every row of `x` and every row of `y`.

    For the built-in metrics the ``|x|^2 + |y|^2 - 2 x.y`` expansion is
    used (one matrix product), clamped at 0 against rounding; with
    ``y=None`` the distances of `x` to itself are returned and the diagonal
    is exactly 0. Off-diagonal duplicates can come out slightly above 0
    (about ``sqrt(eps) * |x|`` for euclidean) because of the expansion; use
    the paired functions when exact zeros matter. A custom callable metric
    is applied by broadcasting, using ``O(N * M * D)`` memory.

    Args:
        x: embeddings `[N, D]`.
        y: embeddings `[M, D]`, or None for `x` against itself.
        metric: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or a
            paired-row callable.

    Returns:
        Distances `[N, M]`, float32 for float16/bfloat16 inputs.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive import distances
    >>> x = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> distances.pairwise_distances(x)  # [[0, 5], [5, 0]]
    """
    function = get(metric)
    x = _as_compute_tensor(x)
    same = y is None
    y = x if same else ops.cast(ops.convert_to_tensor(y), x.dtype)
    if len(x.shape) != 2 or len(y.shape) != 2:
        raise ValueError(
            "`pairwise_distances` needs rank-2 inputs [N, D] and [M, D]. "
            f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if None not in (x.shape[-1], y.shape[-1]) and x.shape[-1] != y.shape[-1]:
        raise ValueError(
            "`x` and `y` must have the same embedding size D. Received: "
            f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )

    if function is cosine:
        x_unit = _unit_rows(x)
        y_unit = x_unit if same else _unit_rows(y)
        result = ops.clip(1.0 - ops.matmul(x_unit, ops.transpose(y_unit)),
                          0.0, 2.0)
    elif function in (euclidean, squared_euclidean):
        x_norm = ops.sum(ops.square(x), axis=-1)
        y_norm = x_norm if same else ops.sum(ops.square(y), axis=-1)
        result = (ops.expand_dims(x_norm, 1) + ops.expand_dims(y_norm, 0)
                  - 2.0 * ops.matmul(x, ops.transpose(y)))
        # Rounding in the expansion can go slightly negative.
        result = ops.maximum(result, 0.0)
    else:
        result = function(ops.expand_dims(x, 1), ops.expand_dims(y, 0))

    if same:
        size = ops.shape(x)[0]
        off_diagonal = ops.logical_not(ops.cast(ops.eye(size), "bool"))
        result = ops.where(off_diagonal, result, ops.zeros_like(result))
    if function is euclidean:
        result = safe_sqrt(result)
    return result


__all__ = [
    "compute_dtype",
    "cosine",
    "euclidean",
    "get",
    "name_of",
    "pairwise_distances",
    "safe_sqrt",
    "serialize",
    "squared_euclidean",
]
