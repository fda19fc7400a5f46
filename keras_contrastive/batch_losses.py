"""In-batch contrastive losses: mined margin pairs, and NT-Xent / SupCon.

Both losses take class labels (or sample ids) `[B]` as `y_true` and
embeddings `[B, D]` as `y_pred`, compare every example with every other
one in the batch (or, with ``cross_replica=True``, in the global batch of
all replicas) and return one loss per anchor, so `keras.losses.Loss`
reduces, weights and scales them for replicas. Re-exported by
`keras_contrastive.losses`.
"""

import functools

import keras
from keras import ops

from keras_contrastive import distances, mining
from keras_contrastive._all_pairs import all_pairs_loss, xla_on_tensorflow
from keras_contrastive._common import check_margins, check_number, margin_loss
from keras_contrastive._in_batch import (
    Batch,
    InBatchLoss,
    check_embeddings,
    check_labels,
)
from keras_contrastive.distances import _unit_rows


def _rank_hardest(x, others, positive, negative, ranking):
    # Squared distances rank pairs like euclidean ones, without a sqrt.
    if ranking == "euclidean":
        ranking = "squared_euclidean"
    distance = distances.pairwise_distances(x, others, ranking)
    return mining.batch_hard_indices(
        ops.stop_gradient(distance), positive, negative
    )


@functools.lru_cache(maxsize=1)
def _hardest_pairs():
    return xla_on_tensorflow(_rank_hardest)


def batch_contrastive_loss(
    labels,
    embeddings,
    *,
    margin: float = 1.0,
    positive_margin: float = 0.0,
    metric="euclidean",
    miner="all",
    squared: bool = True,
    cross_replica: bool = False,
    pos_threshold: float = 0.2,
    neg_threshold: float = 0.8,
):
    """Margin contrastive loss over the mined pairs of a batch, per anchor.

    Every ordered pair ``(i, j), i != j`` of the batch is positive (same
    label) or negative; the `miner` gives each a weight ``w_ij`` (0 or 1
    for the built-in miners). With the per-pair formula of
    `contrastive_loss`::

        Lpos_ij = max(0, D_ij - positive_margin)^p
        Lneg_ij = max(0, margin - D_ij)^p           (p = 2 if squared else 1)
        loss    = sum_pos w Lpos / sum_pos w  +  sum_neg w Lneg / sum_neg w

    that is, the mean over the mined positive pairs plus the mean over the
    mined negative pairs. Positives and negatives are averaged separately
    because a batch holds about ``B K`` positive and ``B^2`` negative pairs
    (``K`` examples per class); one mean over all pairs would let the
    negatives drown the positives. Unlike PyTorch Metric Learning, pairs
    with zero loss stay in the means, so the gradient does not jump when a
    few hard pairs appear or disappear; choose a miner to focus on hard
    pairs. A term with no mined pair is 0 (a batch without positive pairs
    gives only the negative term, never NaN).

    The value for anchor `i` is ``v_i = B * (sum_{j pos} w_ij Lpos_ij /
    sum_pos w + sum_{j neg} w_ij Lneg_ij / sum_neg w)``, so the mean of
    `v` over the `B` anchors (Keras's ``"sum_over_batch_size"``) is
    `loss`. Anchors without mined pairs give 0, with a zero gradient.

    Args:
        labels: class labels `[B]` or `[B, 1]`.
        embeddings: `[B, D]`; float16/bfloat16 are computed in float32.
        margin: negatives closer than this are pushed apart; > 0.
        positive_margin: positives farther than this are pulled together;
            ``0 <= positive_margin < margin``.
        metric: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or a
            paired-row callable ``f(a, b) -> [N]``.
        miner: ``"all"``, ``"pair_margin"``, ``"batch_hard"``,
            ``"semi_hard"`` (semi-hard band of width `margin`) or a callable
            ``miner(distances, positive_mask, negative_mask) -> weights``;
            see `keras_contrastive.mining`.
        squared: square the hinge terms.
        cross_replica: under a `tf.distribute` strategy, compare the local
            anchors with the global batch of all replicas (B above is then
            the global batch size and the means are global). Outside a
            strategy it changes nothing.
        pos_threshold: ``"pair_margin"`` mines positives with D above this.
        neg_threshold: ``"pair_margin"`` mines negatives with D below this.

    Returns:
        Per-anchor losses `[B]`, float32 for float16/bfloat16 inputs.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.losses import batch_contrastive_loss
    >>> x = np.array([[0.0, 0.0], [0.0, 0.5], [3.0, 0.0], [3.0, 0.5]])
    >>> batch_contrastive_loss([0, 0, 1, 1], x).shape  # (4,)

    Reference:
        Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an
        Invariant Mapping. CVPR 2006.
    """
    margin, positive_margin = check_margins(margin, positive_margin)
    miner_function = mining.get(miner)
    metric_function = distances.get(metric)
    mining.check_thresholds(pos_threshold, neg_threshold)
    x = check_embeddings(embeddings)
    labels = check_labels(labels, x.shape[0])
    formula = dict(
        margin=margin, positive_margin=positive_margin, squared=squared
    )
    batch = Batch(x, labels, cross_replica)
    miner_name, metric_name = mining.name_of(miner), distances.name_of(metric)
    if batch.distributed is None and miner_name == "all" and metric_name:
        # A fused path with a hand-written gradient (one extra matmul).
        return all_pairs_loss(x, labels, metric=metric_name, **formula)

    candidates = batch.candidates(x)
    others = None if batch.distributed is None else candidates
    scale = ops.cast(batch.size, x.dtype)
    positive, negative = batch.masks()
    if miner_name == "batch_hard":
        # Only 2 pairs per anchor: mine without gradient, then recompute the
        # 2 distances row by row, so the gradient skips the [B, M] matrix.
        positive_index, negative_index, valid = _hardest_pairs()(
            x, others, positive, negative, ranking=metric_name or metric
        )
        positive_loss = margin_loss(
            metric_function(x, ops.take(candidates, positive_index, axis=0)),
            True,
            **formula,
        )
        negative_loss = margin_loss(
            metric_function(x, ops.take(candidates, negative_index, axis=0)),
            False,
            **formula,
        )
        valid = ops.cast(valid, x.dtype)
        count = batch.total(ops.sum(valid))
        values = valid * (positive_loss + negative_loss)
        return ops.divide_no_nan(scale * values, count)

    distance = distances.pairwise_distances(x, others, metric)
    params = {}
    if miner_name == "pair_margin":
        params = dict(pos_threshold=pos_threshold, neg_threshold=neg_threshold)
    elif miner_name == "semi_hard":
        params = dict(margin=margin)
    weights = ops.stop_gradient(
        miner_function(ops.stop_gradient(distance), positive, negative,
                       **params)
    )
    zero = ops.zeros_like(weights)
    positive_weights = ops.where(positive, weights, zero)
    negative_weights = ops.where(negative, weights, zero)
    pair_loss = margin_loss(distance, positive, **formula)
    positive_term = ops.divide_no_nan(
        ops.sum(positive_weights * pair_loss, axis=1),
        batch.total(ops.sum(positive_weights)),
    )
    negative_term = ops.divide_no_nan(
        ops.sum(negative_weights * pair_loss, axis=1),
        batch.total(ops.sum(negative_weights)),
    )
    return scale * (positive_term + negative_term)


def nt_xent_loss(
    labels,
    embeddings,
    *,
    temperature: float = 0.1,
    cross_replica: bool = False,
):
    """NT-Xent (SimCLR) and its supervised form SupCon, one value per anchor.

    With ``z = embeddings / |embeddings|`` and ``s_ij = z_i . z_j / T``,
    `P(i)` the other examples with the label of `i` and `A(i)` all the
    other examples::

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)}
              exp(s_ia) )

    `labels` are sample ids: two augmented views of one example share an
    id, so each anchor has one positive and this is SimCLR's NT-Xent. With
    more examples per id (or class labels) it is SupCon's ``L_out``.
    Anchors without a positive give 0 and still serve as negatives. The
    self-similarity is masked out, not replaced by a large constant (which
    overflows float16); the log-sum-exp is shifted by the row maximum.

    Args:
        labels: sample ids (or class labels) `[B]` or `[B, 1]`.
        embeddings: `[B, D]`, normalised inside.
        temperature: `T` > 0; smaller is sharper.
        cross_replica: under a `tf.distribute` strategy, use the embeddings
            of all replicas as candidates.

    Returns:
        Per-anchor losses `[B]`, float32 for float16/bfloat16 inputs.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.losses import nt_xent_loss
    >>> views = np.random.normal(size=(8, 16))  # 4 examples x 2 views
    >>> nt_xent_loss([0, 1, 2, 3, 0, 1, 2, 3], views).shape  # (8,)

    Reference:
        Chen et al. A Simple Framework for Contrastive Learning of Visual
        Representations (SimCLR). ICML 2020. Khosla et al. Supervised
        Contrastive Learning. NeurIPS 2020.
    """
    temperature = check_number(
        "temperature", temperature, minimum=0.0, exclusive=True
    )
    x = check_embeddings(embeddings)
    labels = check_labels(labels, x.shape[0])
    batch = Batch(x, labels, cross_replica)
    z = _unit_rows(x)
    inverse = ops.cast(1.0 / temperature, x.dtype)
    logits = ops.matmul(z, ops.transpose(batch.candidates(z))) * inverse
    positive, negative = batch.masks()
    candidate = ops.logical_or(positive, negative)
    # Cosine logits are >= -1/T, so -1/T is a safe floor for the row max.
    row_max = ops.stop_gradient(
        ops.max(ops.where(candidate, logits, -inverse), axis=1)
    )
    shifted = ops.where(candidate, logits - ops.expand_dims(row_max, 1), 0.0)
    total = ops.sum(ops.where(candidate, ops.exp(shifted), 0.0), axis=1)
    has_candidate = ops.any(candidate, axis=1)
    log_denominator = row_max + ops.log(ops.where(has_candidate, total, 1.0))
    positive = ops.cast(positive, x.dtype)
    count = ops.sum(positive, axis=1)
    mean_positive = ops.divide_no_nan(ops.sum(positive * logits, 1), count)
    return ops.where(count > 0, log_denominator - mean_positive, 0.0)


@keras.saving.register_keras_serializable(package="keras_contrastive")
class BatchContrastiveLoss(InBatchLoss):
    """Margin contrastive loss over the mined pairs of each batch.

    `y_true` holds class labels `[B]`, `y_pred` embeddings `[B, D]`. Every
    pair of the batch is positive (same label) or negative, a `miner`
    picks the pairs, and the loss is the mean of ``max(0, D -
    positive_margin)^p`` over the mined positives plus the mean of
    ``max(0, margin - D)^p`` over the mined negatives (``p = 2`` if
    `squared`). `call` returns one value per anchor whose mean over the
    batch is that loss, so keep the default reduction; Keras then applies
    sample weights and the ``1 / num_replicas`` scaling. See
    `batch_contrastive_loss` for the exact formula and `docs/mining.md`.

    Feed batches of `P` classes x `K` examples (for example from
    `keras_contrastive.data.class_balanced_dataset`) with a static batch
    size, so every anchor has positives. Labels pass through
    `keras.losses.Loss` as floats: ids must be below 2^24.

    Args:
        margin, positive_margin, metric, miner, squared, cross_replica,
        pos_threshold, neg_threshold: as in `batch_contrastive_loss`.
        reduction: a Keras reduction; the default averages over anchors.
        name: name of the loss.
        dtype: dtype the loss is computed in (default: floatx).

    Example:
    >>> import keras
    >>> from keras_contrastive.losses import BatchContrastiveLoss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam",
    ...               loss=BatchContrastiveLoss(miner="batch_hard"))

    Reference:
        Hadsell, Chopra, LeCun. CVPR 2006; Hermans et al. 2017 (batch-hard);
        Schroff et al. 2015 (semi-hard).
    """

    _function = staticmethod(batch_contrastive_loss)
    _fields = ("margin", "positive_margin", "metric", "miner", "squared",
               "cross_replica", "pos_threshold", "neg_threshold")

    def __init__(
        self,
        margin: float = 1.0,
        positive_margin: float = 0.0,
        metric="euclidean",
        miner="all",
        squared: bool = True,
        cross_replica: bool = False,
        pos_threshold: float = 0.2,
        neg_threshold: float = 0.8,
        reduction="sum_over_batch_size",
        name: str = "batch_contrastive_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin, self.positive_margin = check_margins(
            margin, positive_margin
        )
        self.pos_threshold, self.neg_threshold = mining.check_thresholds(
            pos_threshold, neg_threshold
        )
        distances.get(metric)
        self.metric = distances.serialize(metric)
        self.miner = mining.name_of(miner) or (
            keras.saving.serialize_keras_object(miner)
        )
        self.squared = bool(squared)
        self.cross_replica = bool(cross_replica)


@keras.saving.register_keras_serializable(package="keras_contrastive")
class NTXentLoss(InBatchLoss):
    """NT-Xent (SimCLR) / SupCon loss over each batch, as a Keras `Loss`.

    `y_true` holds sample ids `[B]` (two views of an example share an id;
    with class labels it is SupCon), `y_pred` embeddings `[B, D]`. Per
    anchor: minus the mean, over its positives, of the log-softmax of the
    cosine similarities divided by `temperature`. See `nt_xent_loss`.

    Args:
        temperature: softmax temperature, > 0 (SimCLR uses 0.1-0.5).
        cross_replica: take negatives from all replicas.
        reduction: a Keras reduction; the default averages over anchors.
        name: name of the loss.
        dtype: dtype the loss is computed in (default: floatx).

    Example:
    >>> import keras
    >>> from keras_contrastive.losses import NTXentLoss
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="adam", loss=NTXentLoss(temperature=0.2))

    Reference:
        Chen et al. SimCLR, ICML 2020; Khosla et al. SupCon, NeurIPS 2020.
    """

    _function = staticmethod(nt_xent_loss)
    _fields = ("temperature", "cross_replica")

    def __init__(
        self,
        temperature: float = 0.1,
        cross_replica: bool = False,
        reduction="sum_over_batch_size",
        name: str = "nt_xent_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = check_number(
            "temperature", temperature, minimum=0.0, exclusive=True
        )
        self.cross_replica = bool(cross_replica)


__all__ = [
    "BatchContrastiveLoss",
    "NTXentLoss",
    "batch_contrastive_loss",
    "nt_xent_loss",
]
