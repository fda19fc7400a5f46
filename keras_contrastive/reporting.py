"""The metrics, plots and `report.json` of a `keras-contrastive` run.

`evaluate_encoder` embeds one labelled set and measures verification
(over pairs), retrieval and, when asked, N-way one-shot accuracy;
`write_report` does that for each part of a split and writes the report and
the two plots. Used by `keras_contrastive.trainer` (and so by the CLI) and
by `benchmarks/quality.py`.
"""

import json
import os
from typing import Dict, Optional

import keras
import numpy as np

from keras_contrastive import distances, evaluation

# All pairs of an evaluation set up to this many, else a random sample.
MAX_PAIRS = 400_000
# What `at_validation_threshold` keeps of `verification_metrics`.
_AT_THRESHOLD = ("accuracy", "balanced_accuracy", "true_positive_rate",
                 "true_negative_rate", "threshold")


def pair_indices(y, seed: int, max_pairs: int = MAX_PAIRS):
    """All pairs ``i < j`` of a small set, or a random sample of a big one.

    The sample is about half similar pairs (an anchor and another example
    of its class) and half uniformly random pairs, without self-pairs.

    Args:
        y: class labels `[N]`.
        seed: seeds the sample.
        max_pairs: all pairs are used up to this many.

    Returns:
        Two index arrays `(first, second)` of the same length.
    """
    y = np.asarray(y)
    n = len(y)
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, k=1)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=max_pairs)
    same_class = rng.random(max_pairs) < 0.5
    order = np.argsort(y, kind="stable")
    starts = np.searchsorted(y[order], y[first], side="left")
    counts = np.searchsorted(y[order], y[first], side="right") - starts
    positive = order[starts + (rng.random(max_pairs) * counts).astype(int)]
    second = np.where(same_class, positive, rng.integers(0, n, max_pairs))
    keep = first != second
    return first[keep], second[keep]


def balanced_threshold(distances, pair_labels) -> float:
    """The distance threshold with the best balanced accuracy.

    Maximises ``(TPR + TNR) / 2`` (Youden's J), not plain accuracy: the
    pairs of a labelled set are mostly dissimilar, and the plain-accuracy
    threshold would then reject too many similar pairs of a balanced test.
    Pair labels: 0 = similar. The threshold is midway between neighbouring
    distances; a pair is similar when ``distance <= threshold``.
    """
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    similar = np.asarray(pair_labels).reshape(-1) == 0
    order = np.argsort(distances, kind="stable")
    sorted_distances, sorted_similar = distances[order], similar[order]
    true_positive_rate = np.cumsum(sorted_similar) / max(1, similar.sum())
    false_positive_rate = np.cumsum(~sorted_similar) / max(
        1, (~similar).sum())
    # Only cut between different distances.
    last = np.append(sorted_distances[1:] != sorted_distances[:-1], True)
    score = np.where(last, true_positive_rate - false_positive_rate, -np.inf)
    best = int(np.argmax(score))
    if best + 1 < len(sorted_distances):
        return float((sorted_distances[best] + sorted_distances[best + 1])
                     / 2)
    return float(sorted_distances[best])


def few_shot(embeddings, labels, *, ways: int, shots: int = 1,
             episodes: int = 1000, seed: int = 0,
             metric: str = "euclidean") -> Optional[Dict]:
    """N-way K-shot accuracy on classes with at least K + 1 examples.

    `ways` is lowered to the number of such classes (the result's
    ``ways`` says how many were used); None when fewer than 2 remain or
    ``ways < 2``.
    """
    if ways < 2:
        return None
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts >= shots + 1]
    if len(usable) < 2:
        return None
    keep = np.isin(labels, usable)
    result = evaluation.few_shot_accuracy(
        embeddings[keep], labels[keep], ways=min(ways, len(usable)),
        shots=shots, episodes=episodes, seed=seed, metric=metric)
    result["num_classes"] = int(len(usable))
    return result


def evaluate_encoder(encoder, x, y, *, metric: str = "euclidean",
                     seed: int = 0, batch_size: int = 256,
                     threshold: Optional[float] = None,
                     few_shot_options: Optional[dict] = None) -> dict:
    """Verification (over pairs) and retrieval metrics of one labelled set.

    Pair labels follow the package convention: 0 = similar pair. The
    verification ``threshold`` and ``accuracy`` are the best on these very
    pairs (optimistic); with `threshold` (chosen elsewhere, e.g. on
    validation pairs) the honest numbers at it are added under
    ``at_validation_threshold``.

    Args:
        encoder: a Keras model `[N, ...] -> [N, D]`.
        x: examples `[N, ...]`, raw (the encoder scales them).
        y: class labels `[N]`.
        metric: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        seed: seeds the pair sample of big sets.
        batch_size: batch size of `encoder.predict`.
        threshold: a distance threshold chosen on other pairs.
        few_shot_options: keyword arguments of `few_shot` (``ways``,
            ``shots``, ``episodes``); adds ``few_shot`` when possible.

    Returns:
        dict with ``metrics`` (JSON-ready), ``embeddings``, ``distances``
        and ``pair_labels``.
    """
    y = np.asarray(y)
    embeddings = np.asarray(encoder.predict(x, batch_size=batch_size,
                                            verbose=0))
    first, second = pair_indices(y, seed)
    pair_distances = keras.ops.convert_to_numpy(
        distances.get(metric)(embeddings[first], embeddings[second]))
    pair_labels = (y[first] != y[second]).astype("int64")
    report = evaluation.verification_metrics(pair_distances, pair_labels)
    if threshold is not None:
        fixed = evaluation.verification_metrics(
            pair_distances, pair_labels, threshold=float(threshold))
        report["at_validation_threshold"] = {
            key: fixed[key] for key in _AT_THRESHOLD}
    report.update(evaluation.retrieval_metrics(embeddings, y, metric=metric))
    report["num_examples"] = int(len(y))
    report["num_classes"] = int(len(np.unique(y)))
    if few_shot_options:
        result = few_shot(embeddings, y, seed=seed, metric=metric,
                          **few_shot_options)
        if result is not None:
            report["few_shot"] = result
    return {"metrics": report, "embeddings": embeddings,
            "distances": pair_distances, "pair_labels": pair_labels}


def write_report(out: str, parts: dict, encoder, *, metric: str, seed: int,
                 extra: dict, threshold: Optional[float] = None,
                 few_shot_options: Optional[dict] = None,
                 margin: Optional[float] = None, plots: bool = True) -> dict:
    """Evaluate each part, then write report.json and the two plots.

    Parts with fewer than 2 classes, or no class with 2 examples, are
    skipped (listed under ``skipped_parts``). The threshold chosen on
    ``heldout_examples`` (validation pairs of the training classes) is
    applied to the other parts (the one with the best balanced accuracy,
    `balanced_threshold`), unless `threshold` is given (then it is
    applied to every part). Few-shot accuracy is measured on
    ``unseen_classes`` (or ``all``).

    Returns:
        The report dict (also written to ``<out>/report.json``).
    """
    report = dict(extra)
    results = {}
    for name, (x, y) in parts.items():
        counts = np.unique(y, return_counts=True)[1]
        if len(counts) < 2 or counts.max() < 2:  # no similar or no
            report.setdefault("skipped_parts", []).append(name)  # other pair
            continue
        results[name] = evaluate_encoder(
            encoder, x, y, metric=metric, seed=seed, threshold=threshold,
            few_shot_options=(few_shot_options if name in
                              ("unseen_classes", "all") else None))
        report[name] = results[name]["metrics"]
        if name == "heldout_examples" and threshold is None:
            threshold = balanced_threshold(results[name]["distances"],
                                           results[name]["pair_labels"])
            report["validation_threshold"] = threshold
    if plots and results:
        from keras_contrastive import visualization

        name = next(k for k in ("unseen_classes", "heldout_examples", "all")
                    if k in results or k == "all")
        shown = results.get(name) or next(iter(results.values()))
        visualization.plot_distance_histogram(
            shown["distances"], shown["pair_labels"],
            threshold=threshold if threshold is not None
            else shown["metrics"]["threshold"],
            margin=margin, path=os.path.join(out, "distance_histogram.png"),
            title=f"Pair distances: {name.replace('_', ' ')}")
        labels = np.concatenate([np.asarray(parts[k][1]) for k in results])
        points = np.concatenate([results[k]["embeddings"] for k in results])
        visualization.plot_embeddings(
            points, labels, path=os.path.join(out, "embeddings.png"),
            seed=seed, title="Embeddings (PCA): " + ", ".join(
                k.replace("_", " ") for k in results))
        report["plotted_pairs"] = name
    save_report(out, report)
    return report


def save_report(out: str, report: dict) -> None:
    """Write `report` to ``<out>/report.json`` (numpy values converted)."""
    with open(os.path.join(out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
