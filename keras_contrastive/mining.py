"""Pair masks and pair miners for in-batch losses, in `keras.ops`.

A batch of `B` labelled embeddings compared with `M` reference embeddings
(the same batch, or the batch gathered from all replicas) holds `B x M`
ordered pairs. `pair_masks` says which of them are positive (same label)
and which negative; a miner then picks the pairs worth training on and
returns their weights. Every miner has the signature::

    miner(distances, positive_mask, negative_mask, **params) -> weights

with `distances` `[B, M]` (larger = less similar), the two boolean masks
`[B, M]`, and `weights` `[B, M]` in the dtype of `distances`: 1 for a
mined pair, 0 otherwise. Miners only select pairs: they are not
differentiable and the losses stop their gradient.

Everything uses masks, `ops.where` and masked reductions (no boolean
indexing, no branch on tensor values), so shapes stay static and the code
runs under `jit_compile=True`, on TPU and under every Keras backend. No
constant overflows float16: the fill values are the dtype's own finite
extremes.

The names and definitions follow PyTorch Metric Learning (PML) for
``"pair_margin"`` and ``"batch_hard"`` and FaceNet for ``"semi_hard"``.
"""

import math
from typing import Callable, Optional, Union

import keras
from keras import ops

from keras_contrastive._common import check_number, registered_name, resolve

# Largest finite value of each float dtype (numpy lacks bfloat16).
_FINITE_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


def _finite_max(dtype) -> float:
    return _FINITE_MAX[keras.backend.standardize_dtype(dtype)]


def _as_label_vector(labels, name):
    labels = ops.convert_to_tensor(labels)
    shape = tuple(labels.shape)
    if len(shape) == 2 and shape[1] == 1:
        labels = ops.squeeze(labels, axis=1)
    elif len(shape) != 1:
        raise ValueError(
            f"`{name}` must be class labels of shape [B] or [B, 1]. "
            f"Received: {name}.shape={shape}"
        )
    return labels


def pair_masks(labels, ref_labels=None):
    """Positive and negative pair masks from class labels.

    ``positive[i, j] = labels[i] == ref_labels[j]`` and
    ``negative[i, j] = labels[i] != ref_labels[j]``. With
    ``ref_labels=None`` the batch is compared with itself and the diagonal
    (an example paired with itself) is in neither mask.

    Args:
        labels: class labels `[B]` or `[B, 1]`, any integer or float dtype.
        ref_labels: labels `[M]` or `[M, 1]` of the reference embeddings, or
            None to compare `labels` with themselves (``M = B``).

    Returns:
        A tuple ``(positive_mask, negative_mask)`` of boolean tensors
        `[B, M]`.

    Example:
    >>> from keras_contrastive import mining
    >>> positive, negative = mining.pair_masks([0, 0, 1])
    >>> # positive: [[F, T, F], [T, F, F], [F, F, F]]
    >>> # negative: [[F, F, T], [F, F, T], [T, T, F]]
    """
    labels = _as_label_vector(labels, "labels")
    same_batch = ref_labels is None
    if same_batch:
        ref_labels = labels
    else:
        ref_labels = _as_label_vector(ref_labels, "ref_labels")
        if labels.dtype != ref_labels.dtype:
            ref_labels = ops.cast(ref_labels, labels.dtype)
    same = ops.equal(
        ops.expand_dims(labels, 1), ops.expand_dims(ref_labels, 0)
    )
    negative = ops.logical_not(same)
    if same_batch:
        size = ops.shape(labels)[0]
        not_self = ops.logical_not(ops.cast(ops.eye(size), "bool"))
        same = ops.logical_and(same, not_self)
    return same, negative


def class_sizes(labels):
    """For each label, how many labels in the batch equal it (itself too).

    Sort and binary search: O(B log B), no `[B, B]` comparison.

    Args:
        labels: `[B]`.

    Returns:
        int32 counts `[B]`.
    """
    labels = _as_label_vector(labels, "labels")
    rows = ops.expand_dims(ops.sort(labels), 0)
    queries = ops.expand_dims(labels, 0)
    at_most = _count_at_most(rows, queries)
    below = _count_at_most(rows, queries, strict=True)
    return ops.squeeze(at_most - below, 0)


def all_pairs(distances, positive_mask, negative_mask):
    """Every positive and every negative pair: ``w = [positive or negative]``.

    Args:
        distances: `[B, M]`; only its dtype is used.
        positive_mask: boolean `[B, M]`.
        negative_mask: boolean `[B, M]`.

    Returns:
        Pair weights `[B, M]`, 1 for each valid pair (self-pairs excluded by
        the masks).
    """
    valid = ops.logical_or(positive_mask, negative_mask)
    return ops.cast(valid, distances.dtype)


def check_thresholds(pos_threshold, neg_threshold):
    """Validate the two thresholds of `pair_margin`."""
    pos_threshold = check_number("pos_threshold", pos_threshold, minimum=0.0)
    neg_threshold = check_number("neg_threshold", neg_threshold, minimum=0.0)
    if pos_threshold > neg_threshold:
        raise ValueError(
            "`pos_threshold` must not exceed `neg_threshold` (positives "
            "farther than the first and negatives nearer than the second "
            "are mined). Received: pos_threshold="
            f"{pos_threshold}, neg_threshold={neg_threshold}"
        )
    return pos_threshold, neg_threshold


def pair_margin(
    distances,
    positive_mask,
    negative_mask,
    *,
    pos_threshold: float = 0.2,
    neg_threshold: float = 0.8,
):
    """Hard pairs by fixed thresholds, like PML's `PairMarginMiner`.

    ``w_ij = [positive and D_ij > pos_threshold]
    + [negative and D_ij < neg_threshold]``

    Positives that are still too far apart and negatives that are still
    too close are mined; the defaults are PML's (``pos_margin=0.2``,
    ``neg_margin=0.8``), in units of the distance.

    Args:
        distances: `[B, M]`.
        positive_mask: boolean `[B, M]`.
        negative_mask: boolean `[B, M]`.
        pos_threshold: positives farther than this are mined; >= 0.
        neg_threshold: negatives nearer than this are mined;
            ``>= pos_threshold``.

    Returns:
        Pair weights `[B, M]`.

    Reference:
        PyTorch Metric Learning, `miners.PairMarginMiner`.
    """
    pos_threshold, neg_threshold = check_thresholds(
        pos_threshold, neg_threshold
    )
    dtype = distances.dtype
    hard_positive = ops.logical_and(
        positive_mask, distances > ops.cast(pos_threshold, dtype)
    )
    hard_negative = ops.logical_and(
        negative_mask, distances < ops.cast(neg_threshold, dtype)
    )
    return ops.cast(ops.logical_or(hard_positive, hard_negative), dtype)


def batch_hard_indices(distances, positive_mask, negative_mask):
    """Per anchor, the farthest positive and the nearest negative.

    Ties go to the lowest column index.

    Args:
        distances: `[B, M]`.
        positive_mask: boolean `[B, M]`.
        negative_mask: boolean `[B, M]`.

    Returns:
        ``(positive_index, negative_index, valid)``: int32 column indices
        `[B]` and a boolean `[B]` that is True for anchors with at least one
        positive and one negative (the indices of other anchors are
        arbitrary).
    """
    # Masked max/min, then the first column holding it: plain reductions,
    # which XLA fuses better than a variadic argmax.
    dtype = distances.dtype
    big = ops.cast(_finite_max(dtype), dtype)
    hardest_positive = ops.max(
        ops.where(positive_mask, distances, -big), axis=1, keepdims=True
    )
    hardest_negative = ops.min(
        ops.where(negative_mask, distances, big), axis=1, keepdims=True
    )
    size = ops.shape(distances)[1]
    columns = ops.expand_dims(ops.arange(size, dtype="int32"), 0)
    beyond = ops.cast(size, "int32")

    def first_column(mask, hardest):
        hit = ops.logical_and(mask, ops.equal(distances, hardest))
        index = ops.min(ops.where(hit, columns, beyond), axis=1)
        return ops.minimum(index, beyond - 1)

    valid = ops.logical_and(
        ops.any(positive_mask, axis=1), ops.any(negative_mask, axis=1)
    )
    return (
        first_column(positive_mask, hardest_positive),
        first_column(negative_mask, hardest_negative),
        valid,
    )


def batch_hard(distances, positive_mask, negative_mask):
    """The hardest positive and hardest negative of each anchor (PML).

    For anchor `i` with at least one positive and one negative:
    ``p(i) = argmax_{j positive} D_ij``, ``n(i) = argmin_{j negative} D_ij``
    and ``w_ij = [j = p(i)] + [j = n(i)]``. Anchors lacking a positive or a
    negative get no pair, as in PML's `BatchHardMiner`.

    Args:
        distances: `[B, M]`.
        positive_mask: boolean `[B, M]`.
        negative_mask: boolean `[B, M]`.

    Returns:
        Pair weights `[B, M]`: at most two non-zero entries per row.

    Reference:
        Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person
        Re-Identification. arXiv:1703.07737, 2017. PyTorch Metric Learning,
        `miners.BatchHardMiner`.
    """
    positive_index, negative_index, valid = batch_hard_indices(
        distances, positive_mask, negative_mask
    )
    size = ops.shape(distances)[1]
    dtype = distances.dtype
    one_hot = ops.one_hot(positive_index, size, dtype=dtype) + ops.one_hot(
        negative_index, size, dtype=dtype
    )
    return one_hot * ops.cast(ops.expand_dims(valid, 1), dtype)


def _count_at_most(sorted_rows, queries, *, strict=False):
    """``count[b, q] = #{j : sorted_rows[b, j] <= queries[b, q]}`` (``<``
    when `strict`).

    A batched binary search (`sorted_rows` ascending per row) with a static
    number of steps: O(B * Q * log M) work instead of the O(B * Q * M) of a
    broadcast comparison.
    """
    size = sorted_rows.shape[1]
    steps = 32 if size is None else max(1, math.ceil(math.log2(size + 1)))
    last = ops.shape(sorted_rows)[1] - 1
    low = ops.zeros(ops.shape(queries), "int32")
    high = low + ops.cast(ops.shape(sorted_rows)[1], "int32")
    for _ in range(steps):
        middle = (low + high) // 2
        value = ops.take_along_axis(
            sorted_rows, ops.minimum(middle, last), axis=1
        )
        active = low < high
        at_most = value < queries if strict else value <= queries
        low = ops.where(ops.logical_and(active, at_most), middle + 1, low)
        high = ops.where(
            ops.logical_and(active, ops.logical_not(at_most)), middle, high
        )
    return low


def semi_hard(distances, positive_mask, negative_mask, *, margin=1.0):
    """All positives and the semi-hard negatives (FaceNet), per positive pair.

    A negative `n` of anchor `a` is semi-hard when it is farther than one of
    the anchor's positives `p`, but by less than the margin::

        D_ap < D_an < D_ap + margin        for some positive p of a

    ``w_an = 1`` for such negatives, and ``w_ap = 1`` for every positive
    (FaceNet trains on all anchor-positive pairs). The negatives mined are
    exactly those that appear in a semi-hard triplet of PML's
    ``TripletMarginMiner(type_of_triplets="semihard")``, each counted once.
    Anchors without a positive get no negative. The search is a sort and a
    binary search per row: O(B M log M), no `[B, M, M]` tensor.

    Args:
        distances: `[B, M]`.
        positive_mask: boolean `[B, M]`.
        negative_mask: boolean `[B, M]`.
        margin: width of the semi-hard band; > 0.

    Returns:
        Pair weights `[B, M]`.

    Reference:
        Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for
        Face Recognition and Clustering. CVPR 2015.
    """
    margin = check_number("margin", margin, minimum=0.0, exclusive=True)
    dtype = distances.dtype
    big = ops.cast(_finite_max(dtype), dtype)
    # Each row's positive distances in ascending order; other entries are
    # pushed to the end.
    sorted_positive = ops.sort(
        ops.where(positive_mask, distances, big), axis=1
    )
    positive_count = ops.sum(ops.cast(positive_mask, "int32"), axis=1)
    # The nearest positive farther than D_an - margin: it is the one at
    # index #{p : D_ap <= D_an - margin}; the negative is semi-hard when
    # that positive exists and is nearer than D_an.
    first = _count_at_most(sorted_positive, distances - ops.cast(margin, dtype))
    last = ops.shape(distances)[1] - 1
    candidate = ops.take_along_axis(
        sorted_positive, ops.minimum(first, last), axis=1
    )
    semi_hard_negative = ops.logical_and(
        negative_mask,
        ops.logical_and(
            first < ops.expand_dims(positive_count, 1), candidate < distances
        ),
    )
    return ops.cast(ops.logical_or(positive_mask, semi_hard_negative), dtype)


MINERS = {
    "all": all_pairs,
    "pair_margin": pair_margin,
    "batch_hard": batch_hard,
    "semi_hard": semi_hard,
}

Miner = Union[str, Callable]


def get(identifier: Miner) -> Callable:
    """Return the miner function for a name or a callable.

    Args:
        identifier: ``"all"``, ``"pair_margin"``, ``"batch_hard"``,
            ``"semi_hard"``, a callable
            ``miner(distances, positive_mask, negative_mask) -> weights``,
            or the config dict of a registered callable.

    Returns:
        The miner function.

    Raises:
        ValueError: for an unknown name (the valid names are listed).
        TypeError: for anything that is neither a string nor a callable.
    """
    return resolve(
        identifier, MINERS, argument="miner",
        usage="miner(distances, positive_mask, negative_mask) -> weights",
    )


def name_of(miner: Miner) -> Optional[str]:
    """The built-in name of `miner`, or None for a custom callable."""
    return registered_name(get(miner), MINERS)


__all__ = [
    "MINERS",
    "all_pairs",
    "batch_hard",
    "batch_hard_indices",
    "check_thresholds",
    "class_sizes",
    "get",
    "name_of",
    "pair_margin",
    "pair_masks",
    "semi_hard",
]
