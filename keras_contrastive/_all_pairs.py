"""The in-batch contrastive loss over all pairs, with a hand-written gradient.

`keras_contrastive.batch_losses.batch_contrastive_loss` with ``miner="all"``
and a built-in metric comes here: it is the common case and the one whose
cost matters (every pair of a large batch), so it needs two matrix products
(forward ``z z^T``, backward ``H z``) and few passes over the ``[B, B]``
matrix. Backend-agnostic (`keras.ops.custom_gradient`).

For a symmetric pair loss with per-anchor values ``v_i = sum_j w_ij
L(S_ij)`` and upstream gradients ``u``::

    d/dz_k sum_i u_i v_i = sum_j (u_k + u_j) w_kj L'(S_kj) dS_kj/dz_k

one matrix product ``H @ z`` with ``H = (u_k + u_j) w L'``, where autodiff
of ``z @ z^T`` takes two. Only the Gram matrix is kept for the backward
pass, which recomputes the rest in one elementwise pass (with `rsqrt`, so
XLA does not keep the forward's `sqrt` matrix).
"""

import functools

import keras
from keras import ops

from keras_contrastive import mining
from keras_contrastive._common import margin_loss
from keras_contrastive.distances import _unit_rows, safe_sqrt


def _pair_terms(gram, z, labels, scales, metric):
    """Same-label mask, pair weights and S (squared distance, or 1 - cos)."""
    dtype = z.dtype
    zero = ops.zeros((), dtype)
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(z)[0]), "bool"))
    # w_ij: B / (number of pairs of its kind); 0 on the diagonal.
    weight = ops.where(same, ops.where(not_self, scales[0], zero), scales[1])
    if metric == "cosine":
        return same, weight, 1.0 - gram
    norms = ops.sum(ops.square(z), axis=1)
    squared_distance = ops.maximum(
        ops.expand_dims(norms, 1) + ops.expand_dims(norms, 0) - 2.0 * gram,
        zero,
    )
    return same, weight, squared_distance


def _kernels(metric, margin, positive_margin, squared):
    """The forward and backward elementwise passes, for one configuration."""
    formula = dict(
        margin=margin, positive_margin=positive_margin, squared=squared
    )

    def forward(gram, z, labels, scales):
        same, weight, value = _pair_terms(gram, z, labels, scales, metric)
        if metric == "cosine":
            distance = ops.clip(value, 0.0, 2.0)
        elif metric == "euclidean":
            distance = safe_sqrt(value)
        else:
            distance = value
        return ops.sum(weight * margin_loss(distance, same, **formula), 1)

    def backward(gram, z, labels, scales, upstream):
        same, weight, value = _pair_terms(gram, z, labels, scales, metric)
        zero, one = ops.zeros((), z.dtype), ops.ones((), z.dtype)
        if metric == "euclidean":
            # dL/dS with D = sqrt(S): dD/dS = rsqrt(S) / 2; 0 where
            # safe_sqrt clamps S to 0.
            valid = value > 1e-30
            inverse = ops.rsqrt(ops.where(valid, value, one))
            if squared:
                slope = ops.where(
                    same,
                    ops.maximum(1.0 - positive_margin * inverse, zero),
                    ops.minimum(1.0 - margin * inverse, zero),
                )
            else:
                slope = 0.5 * inverse * ops.where(
                    same,
                    ops.where(value > positive_margin**2, one, zero),
                    ops.where(value < margin**2, -one, zero),
                )
            slope = ops.where(valid, slope, zero)
        else:  # dL/dD, D = S or D = 1 - cos
            if squared:
                slope = 2.0 * ops.where(
                    same,
                    ops.maximum(value - positive_margin, zero),
                    ops.minimum(value - margin, zero),
                )
            else:
                slope = ops.where(
                    same,
                    ops.where(value > positive_margin, one, zero),
                    ops.where(value < margin, -one, zero),
                )
            if metric == "cosine":  # no gradient outside the clip
                inside = ops.logical_and(value >= 0.0, value <= 2.0)
                slope = ops.where(inside, slope, zero)
            else:
                slope = ops.where(value > zero, slope, zero)
        slope = slope * weight * (
            ops.expand_dims(upstream, 1) + ops.expand_dims(upstream, 0)
        )
        if metric == "cosine":
            return slope, None
        return slope, ops.sum(slope, axis=1)

    return forward, backward


def xla_on_tensorflow(function):
    """`function` compiled with XLA on TensorFlow, unchanged elsewhere.

    Fuses elementwise passes over ``[B, B]`` matrices even when the caller
    runs without jit_compile (as under MirroredStrategy); inside an XLA
    function it is simply inlined.
    """
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(
        function, jit_compile=True, autograph=False, reduce_retracing=True
    )


@functools.lru_cache(maxsize=64)
def _compiled_kernels(metric, margin, positive_margin, squared):
    forward, backward = _kernels(metric, margin, positive_margin, squared)
    # The matrix products stay outside, with the backend's own kernels.
    return xla_on_tensorflow(forward), xla_on_tensorflow(backward)


def all_pairs_loss(x, labels, *, metric, margin, positive_margin, squared):
    """Per-anchor values of `batch_contrastive_loss` with miner "all".

    Args:
        x: embeddings `[B, D]` in their compute dtype.
        labels: `[B]`.
        metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        margin, positive_margin, squared: the per-pair formula.

    Returns:
        `[B]`: ``B * (sum_{j pos} Lpos_ij / #pos + sum_{j neg} Lneg_ij /
        #neg)``.
    """
    dtype = x.dtype
    forward, backward = _compiled_kernels(
        metric, float(margin), float(positive_margin), bool(squared)
    )
    size = ops.cast(ops.shape(x)[0], dtype)
    positive_count = ops.sum(ops.cast(mining.class_sizes(labels), dtype))
    positive_count = positive_count - size
    negative_count = size * size - size - positive_count
    scales = ops.stack([ops.divide_no_nan(size, positive_count),
                        ops.divide_no_nan(size, negative_count)])

    # Labels and scales are arguments, not closures: JAX's custom gradient
    # cannot capture tracers of an enclosing jit.
    @ops.custom_gradient
    def loss(z, labels, scales):
        gram = ops.matmul(z, ops.transpose(z))

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            slope, rows = backward(gram, z, labels, scales, upstream)
            if rows is None:  # cosine: dD_kj/dz_k = -z_j
                return -ops.matmul(slope, z), None, None
            # dS_kj/dz_k = 2 (z_k - z_j)
            gradient = ops.expand_dims(rows, 1) * z - ops.matmul(slope, z)
            return 2.0 * gradient, None, None

        return forward(gram, z, labels, scales), grad

    return loss(_unit_rows(x) if metric == "cosine" else x, labels, scales)
