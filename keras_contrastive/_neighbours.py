"""Internals of `keras_contrastive.evaluation`: retrieval and few-shot.

Distances are computed one block of queries at a time (numpy only), so
60,000 embeddings never build a 60,000 x 60,000 matrix. The public names
are `keras_contrastive.evaluation.retrieval_metrics` and
`few_shot_accuracy`.
"""

import numbers
from typing import Dict, Optional, Sequence, Union

import numpy as np

from keras_contrastive._validation import check_integer

_METRICS = ("euclidean", "squared_euclidean", "cosine")
# Distance blocks hold about this many float64 values (64 MiB).
_BLOCK_VALUES = 1 << 23


def _check_metric(metric) -> str:
    if metric not in _METRICS:
        raise ValueError(
            f"Unknown `metric`: {metric!r}. Valid names are {list(_METRICS)}."
        )
    return metric


def as_vector(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must have shape [N] or [N, 1]. "
            f"Received: {name}.shape={array.shape}"
        )
    return array


def _check_embeddings(name, embeddings, labels_name, labels):
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape [N, D] with N >= 1. "
            f"Received: {name}.shape={embeddings.shape}"
        )
    labels = as_vector(labels_name, labels)
    if len(labels) != len(embeddings):
        raise ValueError(
            f"`{name}` and `{labels_name}` must have the same length. "
            f"Received: {len(embeddings)} embeddings and {len(labels)} labels"
        )
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"`{name}` must be finite (no NaN or inf).")
    return embeddings, labels


def _distance_block(queries, reference, reference_norms, metric):
    """Distances `[B, M]` from a block of queries to every reference."""
    if metric == "cosine":
        return 1.0 - queries @ reference.T
    squared = (
        np.sum(queries**2, axis=1)[:, None]
        + reference_norms[None, :]
        - 2.0 * queries @ reference.T
    )
    np.maximum(squared, 0.0, out=squared)
    return np.sqrt(squared) if metric == "euclidean" else squared


def _unit_rows(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def retrieval_metrics(
    embeddings,
    labels,
    *,
    k: Union[int, Sequence[int]] = (1, 5, 10),
    metric: str = "euclidean",
    reference=None,
    chunk_size: Optional[int] = None,
) -> Dict[str, float]:
    """Nearest-neighbour retrieval quality, as in PyTorch Metric Learning.

    Each embedding is a query; its neighbours are ranked by distance among
    the other embeddings (the query itself is excluded), or among
    ``reference = (ref_embeddings, ref_labels)`` when given (then nothing is
    excluded). A neighbour is relevant when it has the query's label. ``R``
    is the number of relevant references of a query; queries with ``R = 0``
    (their class has no other example) are left out of every metric and
    counted in ``num_lone_queries``. Averages are over queries:

    * ``recall_at_k``: 1 if any of the `k` nearest is relevant, else 0
      (`k` is capped at the number of references);
    * ``precision_at_1``: the nearest neighbour is relevant;
    * ``r_precision``: ``(relevant among the R nearest) / R``;
    * ``map_at_r``: ``(1/R) sum_{i<=R} P(i) rel(i)``, with ``rel(i)`` 1
      when the i-th nearest is relevant and ``P(i)`` the precision of the
      i nearest (Musgrave et al. 2020).

    Exact ties in distance are broken arbitrarily, as in any
    nearest-neighbour search. Unlike PyTorch Metric Learning with faiss,
    ``R`` is not capped at 1023.

    Args:
        embeddings: query embeddings `[N, D]`.
        labels: class labels `[N]` (any comparable dtype).
        k: the `k` of recall@k, an int or a sequence of ints.
        metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        reference: None, or a pair ``(ref_embeddings [M, D],
            ref_labels [M])`` searched instead of the queries themselves.
        chunk_size: queries per distance block (default: about 8M
            distances per block, 64 MiB).

    Returns:
        dict with ``recall_at_{k}`` for each `k`, ``precision_at_1``,
        ``r_precision``, ``map_at_r``, ``num_queries``, ``num_lone_queries``.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.evaluation import retrieval_metrics
    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> retrieval_metrics(x, [0, 0, 1, 1], k=1)["map_at_r"]
    1.0

    Reference:
        Musgrave, Belongie, Lim. A Metric Learning Reality Check.
        ECCV 2020.
    """
    queries, labels = _check_embeddings("embeddings", embeddings, "labels",
                                        labels)
    metric = _check_metric(metric)
    ks = (k,) if isinstance(k, numbers.Integral) else tuple(k)
    if not ks:
        raise ValueError(f"`k` must not be empty. Received: k={k!r}")
    ks = tuple(check_integer("k", value) for value in ks)
    same_source = reference is None
    if same_source:
        ref, ref_labels = queries, labels
    else:
        if not isinstance(reference, (tuple, list)) or len(reference) != 2:
            raise ValueError(
                "`reference` must be None or a pair (ref_embeddings, "
                f"ref_labels). Received: {type(reference).__name__}"
            )
        ref, ref_labels = _check_embeddings(
            "reference[0]", reference[0], "reference[1]", reference[1]
        )
        if ref.shape[1] != queries.shape[1]:
            raise ValueError(
                "`reference` embeddings must have the same size D as "
                f"`embeddings`. Received: D={ref.shape[1]} and "
                f"D={queries.shape[1]}"
            )
    if metric == "cosine":
        queries, ref = _unit_rows(queries), _unit_rows(ref)
    num_ref = len(ref) - (1 if same_source else 0)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_VALUES // max(len(ref), 1))
    chunk_size = check_integer("chunk_size", chunk_size)

    # R per query: references with the same label, minus the query itself.
    classes, ref_counts = np.unique(ref_labels, return_counts=True)
    position = np.searchsorted(classes, labels)
    position = np.minimum(position, len(classes) - 1)
    found = classes[position] == labels
    relevant_counts = np.where(found, ref_counts[position], 0)
    if same_source:
        relevant_counts = relevant_counts - 1
    keep = relevant_counts > 0
    depth = min(num_ref, max(max(ks), int(relevant_counts.max(initial=0))))
    ref_norms = np.sum(ref**2, axis=1)

    hits_at = {value: 0 for value in ks}
    precision_at_1, r_precision, map_at_r = 0, 0.0, 0.0
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        rows = np.arange(start, stop)[keep[start:stop]]
        if not len(rows) or depth == 0:
            continue
        # A score with the order of the distance along each row: the
        # query's own norm and the square root do not change the ranking.
        block = queries[rows] @ ref.T
        if metric == "cosine":
            np.negative(block, out=block)
        else:
            block *= -2.0
            block += ref_norms[None, :]
        if same_source:
            block[np.arange(len(rows)), rows] = np.inf
        if depth < block.shape[1]:
            nearest = np.argpartition(block, depth - 1, axis=1)[:, :depth]
            order = np.argsort(np.take_along_axis(block, nearest, axis=1),
                               axis=1)
            nearest = np.take_along_axis(nearest, order, axis=1)
        else:
            nearest = np.argsort(block, axis=1)[:, :depth]
        relevant = ref_labels[nearest] == labels[rows][:, None]
        r = relevant_counts[rows]
        cumulative = np.cumsum(relevant, axis=1)
        within_r = np.arange(1, depth + 1)[None, :] <= r[:, None]
        for value in ks:
            hits_at[value] += int(
                np.sum(relevant[:, : min(value, depth)].any(1))
            )
        precision_at_1 += int(np.sum(relevant[:, 0]))
        r_precision += np.sum(np.sum(relevant & within_r, axis=1) / r)
        precision = cumulative / np.arange(1, depth + 1)[None, :]
        map_at_r += np.sum(
            np.sum(precision * (relevant & within_r), axis=1) / r
        )

    count = max(int(keep.sum()), 1)
    result = {f"recall_at_{value}": hits_at[value] / count for value in ks}
    result.update(
        {
            "precision_at_1": precision_at_1 / count,
            "r_precision": float(r_precision / count),
            "map_at_r": float(map_at_r / count),
            "num_queries": int(keep.sum()),
            "num_lone_queries": int(len(queries) - keep.sum()),
        }
    )
    return result


def few_shot_accuracy(
    embeddings,
    labels,
    *,
    ways: int = 20,
    shots: int = 1,
    queries_per_class: int = 1,
    episodes: int = 600,
    seed: int = 0,
    metric: str = "euclidean",
    classifier: str = "nearest",
) -> Dict[str, float]:
    """N-way K-shot classification accuracy over random episodes.

    Each episode draws `ways` classes, then `shots` support and
    `queries_per_class` query examples of each (without overlap). A query
    is assigned the class of its nearest support example
    (``classifier="nearest"``, Koch et al. 2015) or of the nearest class
    mean of the supports (``classifier="prototype"``, Snell et al. 2017;
    identical when ``shots=1``). Ties go to the first support drawn.

    ``accuracy = mean_e acc_e``, ``ci95 = 1.96 std_e(acc_e) / sqrt(E)``.

    Args:
        embeddings: `[N, D]` embeddings (of classes never trained on, for a
            fair one-shot test).
        labels: class labels `[N]`.
        ways: classes per episode (N).
        shots: support examples per class (K).
        queries_per_class: query examples per class and episode.
        episodes: number of episodes (E).
        seed: seed of the episode sampler (same seed, same episodes).
        metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        classifier: ``"nearest"`` support example or class ``"prototype"``.

    Returns:
        dict with ``accuracy``, ``ci95``, ``std``, ``episodes``, ``ways``,
        ``shots``, ``queries_per_class``.

    Raises:
        ValueError: fewer classes than `ways`, or a class with fewer than
            ``shots + queries_per_class`` examples (which are named).

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.evaluation import few_shot_accuracy
    >>> x = np.repeat(np.eye(5), 3, axis=0)
    >>> few_shot_accuracy(x, np.repeat(np.arange(5), 3), ways=5,
    ...                   episodes=10)["accuracy"]
    1.0

    Reference:
        Vinyals et al. Matching Networks for One Shot Learning. NIPS 2016.
        Snell, Swersky, Zemel. Prototypical Networks for Few-shot
        Learning. NIPS 2017.
    """
    embeddings, labels = _check_embeddings("embeddings", embeddings,
                                           "labels", labels)
    metric = _check_metric(metric)
    ways = check_integer("ways", ways, minimum=2)
    shots = check_integer("shots", shots)
    queries_per_class = check_integer("queries_per_class", queries_per_class)
    episodes = check_integer("episodes", episodes)
    if classifier not in ("nearest", "prototype"):
        raise ValueError(
            "`classifier` must be 'nearest' or 'prototype'. "
            f"Received: classifier={classifier!r}"
        )
    classes, inverse, counts = np.unique(
        labels, return_inverse=True, return_counts=True
    )
    if len(classes) < ways:
        raise ValueError(
            f"`ways` ({ways}) is larger than the number of classes in "
            f"`labels` ({len(classes)})."
        )
    needed = shots + queries_per_class
    small = classes[counts < needed]
    if len(small):
        raise ValueError(
            f"Every class needs at least shots + queries_per_class = "
            f"{needed} examples; classes {small[:10].tolist()} have fewer. "
            "Lower `shots` or `queries_per_class`, or drop those classes."
        )
    if metric == "cosine":
        embeddings = _unit_rows(embeddings)
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(counts)[:-1])
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for episode in range(episodes):
        chosen = rng.choice(len(classes), size=ways, replace=False)
        picks = np.stack(
            [rng.choice(members[c], size=needed, replace=False)
             for c in chosen]
        )  # [ways, needed]
        support = embeddings[picks[:, :shots]]  # [ways, shots, D]
        query = embeddings[picks[:, shots:].reshape(-1)]
        truth = np.repeat(np.arange(ways), queries_per_class)
        if classifier == "prototype":
            support = support.mean(axis=1, keepdims=True)
            if metric == "cosine":
                support = _unit_rows(support[:, 0])[:, None]
        flat = support.reshape(-1, support.shape[-1])
        block = _distance_block(query, flat, np.sum(flat**2, axis=1), metric)
        predicted = np.argmin(block, axis=1) // support.shape[1]
        accuracies[episode] = np.mean(predicted == truth)
    std = float(accuracies.std(ddof=1)) if episodes > 1 else 0.0
    return {
        "accuracy": float(accuracies.mean()),
        "ci95": float(1.96 * std / np.sqrt(episodes)),
        "std": std,
        "episodes": episodes,
        "ways": ways,
        "shots": shots,
        "queries_per_class": queries_per_class,
    }
