"""Evaluation of embeddings: pair verification, retrieval, few-shot.

Numpy only (no Keras, no scikit-learn), and memory-bounded: retrieval
computes distances one block of queries at a time, so 60,000 embeddings
never build a 60,000 x 60,000 matrix.

* `verification_metrics`: is this pair the same class? ROC-AUC, equal
  error rate, best threshold and the accuracy at it.
* `retrieval_metrics`: do the nearest neighbours share the query's class?
  recall@k, precision@1, R-precision and MAP@R, as PyTorch Metric
  Learning's ``AccuracyCalculator`` defines them.
* `few_shot_accuracy`: N-way K-shot classification by the nearest support
  example, averaged over random episodes, with a 95% confidence interval.
"""

import numbers
from typing import Dict, Optional, Tuple

import numpy as np

from keras_contrastive._neighbours import (
    as_vector,
    few_shot_accuracy,
    retrieval_metrics,
)


def check_pairs(
    distances, pair_labels, similar_label: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Validate pair distances and labels; return ``(distances, similar)``.

    Args:
        distances: `[N]` or `[N, 1]` finite distances.
        pair_labels: `[N]` or `[N, 1]` labels in {0, 1}; ``0`` = similar
            unless ``similar_label=1``.
        similar_label: the label of a similar pair, 0 or 1.

    Returns:
        float64 distances `[N]` and a boolean mask `[N]` of similar pairs.
    """
    if similar_label not in (0, 1) or isinstance(similar_label, float):
        raise ValueError(
            "`similar_label` must be 0 or 1. "
            f"Received: similar_label={similar_label!r}"
        )
    distances = as_vector("distances", distances).astype(np.float64)
    labels = as_vector("pair_labels", pair_labels)
    if len(distances) != len(labels):
        raise ValueError(
            "`distances` and `pair_labels` must have the same length. "
            f"Received: {len(distances)} distances and {len(labels)} labels"
        )
    if not np.all(np.isfinite(distances)):
        raise ValueError(
            "`distances` must be finite. Received "
            f"{int(np.sum(~np.isfinite(distances)))} NaN or infinite values"
        )
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(
            "`pair_labels` must be 0 or 1 (0 = similar unless "
            f"similar_label=1). Received values such as "
            f"{np.unique(bad)[:5].tolist()}"
        )
    return distances, labels == similar_label


def verification_metrics(
    distances,
    pair_labels,
    *,
    similar_label: int = 0,
    threshold: Optional[float] = None,
) -> Dict[str, float]:
    """How well distances separate similar from dissimilar pairs.

    A pair is predicted similar when ``distance <= threshold``.

    * ``roc_auc``: probability that a random dissimilar pair is farther
      apart than a random similar pair (ties count 1/2), from the
      Mann-Whitney U statistic on ranks:
      ``AUC = (R_dis - n_dis (n_dis + 1) / 2) / (n_sim n_dis)``, with
      ``R_dis`` the sum of the ranks of the dissimilar distances among all
      (ties get their average rank). Same value as
      ``sklearn.metrics.roc_auc_score(similar, -distances)``.
    * ``eer``: equal error rate, where the false accept rate (dissimilar
      pairs within the threshold) equals the false reject rate (similar
      pairs beyond it), linearly interpolated on the ROC curve;
      ``eer_threshold`` is the distance there.
    * ``threshold``, ``accuracy``: the threshold that maximises
      ``(TP + TN) / N`` (midway between the two neighbouring distances)
      and that accuracy, unless `threshold` is given; ``balanced_accuracy``
      ``= (TPR + TNR) / 2`` at the same threshold. The best threshold is
      chosen on these very pairs, so it is optimistic: choose it on
      validation pairs and pass it as `threshold` for an honest test.

    Args:
        distances: `[N]` or `[N, 1]` distances (smaller = more similar),
            e.g. the output of `keras_contrastive.models.SiameseModel`.
        pair_labels: `[N]` or `[N, 1]` labels in {0, 1}. ``0`` = similar
            pair unless ``similar_label=1``.
        similar_label: the label value of a similar pair, 0 or 1.
        threshold: evaluate accuracy at this distance instead of the best.

    Returns:
        dict with ``roc_auc``, ``eer``, ``eer_threshold``, ``threshold``,
        ``accuracy``, ``balanced_accuracy``, ``true_positive_rate``,
        ``true_negative_rate``, ``num_pairs``, ``num_similar``,
        ``num_dissimilar`` (Python floats and ints).

    Raises:
        ValueError: mismatched lengths, non-finite distances, labels
            outside {0, 1}, or only one kind of pair.

    Example:
    >>> from keras_contrastive.evaluation import verification_metrics
    >>> verification_metrics([0.1, 0.3, 0.8, 0.9], [0, 0, 1, 1])["roc_auc"]
    1.0

    Reference:
        Fawcett. An introduction to ROC analysis. Pattern Recognition
        Letters 27, 2006.
    """
    distances, similar = check_pairs(distances, pair_labels, similar_label)
    num_similar = int(similar.sum())
    num_dissimilar = int(len(similar) - num_similar)
    if num_similar == 0 or num_dissimilar == 0:
        raise ValueError(
            "`pair_labels` must contain both similar and dissimilar pairs. "
            f"Received {num_similar} similar and {num_dissimilar} "
            f"dissimilar pairs (similar_label={similar_label})"
        )
    unique, inverse, counts = np.unique(
        distances, return_inverse=True, return_counts=True
    )
    # 1-based ranks of the distances, tied values sharing their average.
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    rank_sum = ranks[~similar].sum()
    auc = (rank_sum - num_dissimilar * (num_dissimilar + 1) / 2.0) / (
        num_similar * num_dissimilar
    )

    # Operating points "similar iff d <= u_i" for every distinct distance,
    # preceded by "nothing is similar".
    similar_at = np.bincount(inverse, weights=similar, minlength=len(unique))
    tp = np.concatenate([[0.0], np.cumsum(similar_at)])
    fp = np.concatenate([[0.0], np.cumsum(counts - similar_at)])
    tpr = tp / num_similar
    fpr = fp / num_dissimilar
    cuts = np.concatenate(
        [[np.nextafter(unique[0], -np.inf)], (unique[:-1] + unique[1:]) / 2,
         [unique[-1]]]
    )

    gap = (1.0 - tpr) - fpr  # false reject - false accept: 1 ... -1
    i = int(np.argmax(gap <= 0))
    step = gap[i - 1] - gap[i]
    alpha = gap[i - 1] / step if step > 0 else 0.0
    eer = fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1])
    low = unique[i - 2] if i >= 2 else unique[0]
    eer_threshold = low + alpha * (unique[i - 1] - low)

    if threshold is None:
        correct = tp + (num_dissimilar - fp)
        best = int(np.argmax(correct))
        threshold = float(cuts[best])
        tp_t, fp_t = tp[best], fp[best]
    else:
        if isinstance(threshold, bool) or not isinstance(
            threshold, numbers.Real
        ):
            raise TypeError(
                f"`threshold` must be a number. Received: threshold="
                f"{threshold!r}"
            )
        threshold = float(threshold)
        within = distances <= threshold
        tp_t = float(np.sum(within & similar))
        fp_t = float(np.sum(within & ~similar))
    true_positive_rate = tp_t / num_similar
    true_negative_rate = 1.0 - fp_t / num_dissimilar
    return {
        "roc_auc": float(auc),
        "eer": float(eer),
        "eer_threshold": float(eer_threshold),
        "threshold": threshold,
        "accuracy": float((tp_t + num_dissimilar - fp_t) / len(distances)),
        "balanced_accuracy": float(
            (true_positive_rate + true_negative_rate) / 2
        ),
        "true_positive_rate": float(true_positive_rate),
        "true_negative_rate": float(true_negative_rate),
        "num_pairs": int(len(distances)),
        "num_similar": num_similar,
        "num_dissimilar": num_dissimilar,
    }


__all__ = [
    "check_pairs",
    "few_shot_accuracy",
    "retrieval_metrics",
    "verification_metrics",
]
