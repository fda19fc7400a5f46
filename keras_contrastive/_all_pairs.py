"""The in-batch contrastive loss over all pairs, with a hand-written gradient.

`keras_contrastive.batch_losses.batch_contrastive_loss` with ``miner="all"``
and a built-in metric comes here: it is the common case and the one whose
cost matters (every pair of a large batch), so it is written to need two
matrix products (forward ``z z^T`` and backward ``H z``) and few passes over
the ``[B, B]`` matrix. Backend-agnostic (`keras.ops.custom_gradient`).
"""

from keras import ops

from keras_contrastive import mining
from keras_contrastive._common import margin_loss
from keras_contrastive.distances import _unit_rows, safe_sqrt


def all_pairs_loss(x, labels, *, metric, margin, positive_margin, squared):
    """`batch_contrastive_loss` with miner "all" and a built-in metric.

    The gradient is written by hand. For a symmetric pair loss,
    ``d/dz_k sum_i u_i v_i = sum_j (u_k + u_j) g_kj dS_kj/dz_k`` with
    ``g = w dL/dS`` symmetric: one matrix product ``H @ z`` instead of the
    two that autodiff of ``z @ z^T`` takes. Only the Gram matrix is kept
    for the backward pass, which recomputes the rest in one elementwise
    pass (with `rsqrt`, so XLA does not store the forward's `sqrt`).
    """
    dtype = x.dtype
    cosine, euclidean = metric == "cosine", metric == "euclidean"
    size = ops.cast(ops.shape(x)[0], dtype)
    positive_count = ops.sum(ops.cast(mining.class_sizes(labels), dtype))
    positive_count = positive_count - size
    negative_count = size * size - size - positive_count
    positive_scale = ops.divide_no_nan(size, positive_count)
    negative_scale = ops.divide_no_nan(size, negative_count)

    def pair_terms(gram, z, labels, scales):
        # Everything is made here, not closed over: JAX's custom gradient
        # cannot capture tracers of an enclosing jit.
        zero = ops.zeros((), dtype)
        same = ops.equal(
            ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)
        )
        not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(z)[0]), "bool"))
        # w_ij: B / (number of pairs of its kind); 0 on the diagonal.
        weight = ops.where(
            same, ops.where(not_self, scales[0], zero), scales[1]
        )
        if cosine:
            return same, weight, 1.0 - gram
        norms = ops.sum(ops.square(z), axis=1)
        squared_distance = ops.maximum(
            ops.expand_dims(norms, 1) + ops.expand_dims(norms, 0) - 2.0 * gram,
            zero,
        )
        return same, weight, squared_distance

    @ops.custom_gradient
    def loss(z, labels, scales):
        gram = ops.matmul(z, ops.transpose(z))
        same, weight, value = pair_terms(gram, z, labels, scales)
        if cosine:
            distance = ops.clip(value, 0.0, 2.0)
        else:
            distance = safe_sqrt(value) if euclidean else value
        pair = margin_loss(
            distance, same, margin=margin, positive_margin=positive_margin,
            squared=squared,
        )

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            same, weight, value = pair_terms(gram, z, labels, scales)
            zero, one = ops.zeros((), dtype), ops.ones((), dtype)
            if euclidean:
                # dL/dS with D = sqrt(S): dD/dS = 1 / (2 D) = rsqrt(S) / 2,
                # 0 where safe_sqrt clamps S to 0.
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
            else:
                distance = value  # S itself, or 1 - cos before the clip
                if squared:
                    slope = 2.0 * ops.where(
                        same,
                        ops.maximum(distance - positive_margin, zero),
                        ops.minimum(distance - margin, zero),
                    )
                else:
                    slope = ops.where(
                        same,
                        ops.where(distance > positive_margin, one, zero),
                        ops.where(distance < margin, -one, zero),
                    )
                if cosine:
                    inside = ops.logical_and(value >= 0.0, value <= 2.0)
                    slope = ops.where(inside, slope, zero)
                else:
                    slope = ops.where(value > zero, slope, zero)
            slope = slope * weight * (
                ops.expand_dims(upstream, 1) + ops.expand_dims(upstream, 0)
            )
            if cosine:  # dD_kj/dz_k = -z_j
                return -ops.matmul(slope, z), None, None
            # dS_kj/dz_k = 2 (z_k - z_j)
            rows = ops.expand_dims(ops.sum(slope, axis=1), 1)
            return 2.0 * (rows * z - ops.matmul(slope, z)), None, None

        return ops.sum(weight * pair, axis=1), grad

    z = _unit_rows(x) if cosine else x
    scales = ops.stack([positive_scale, negative_scale])
    return loss(z, labels, scales)
