"""Tests for keras_contrastive.evaluation against numpy loops and sklearn."""

import subprocess
import sys

import numpy as np
import pytest

from keras_contrastive.evaluation import (
    few_shot_accuracy,
    retrieval_metrics,
    verification_metrics,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _pairs(seed=0, n=300, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    distances = rng.normal(1.0 + labels, 0.7).clip(0)
    if ties:
        distances = np.round(distances, 1)
    return distances, labels


# ---------------------------------------------------------------- verification


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn(seed, ties):
    distances, labels = _pairs(seed, ties=ties)
    result = verification_metrics(distances, labels)
    expected = sklearn_metrics.roc_auc_score(labels == 0, -distances)
    np.testing.assert_allclose(result["roc_auc"], expected, rtol=1e-12)


def test_roc_auc_brute_force_pairs():
    distances, labels = _pairs(3, n=80, ties=True)
    similar, dissimilar = distances[labels == 0], distances[labels == 1]
    wins = sum(
        1.0 if d > s else 0.5 if d == s else 0.0
        for s in similar
        for d in dissimilar
    )
    result = verification_metrics(distances, labels)
    np.testing.assert_allclose(
        result["roc_auc"], wins / (len(similar) * len(dissimilar))
    )


def test_similar_label_one_flips_convention():
    distances, labels = _pairs(4)
    zero = verification_metrics(distances, labels)
    one = verification_metrics(distances, 1 - labels, similar_label=1)
    assert zero == one
    flipped = verification_metrics(distances, labels, similar_label=1)
    np.testing.assert_allclose(flipped["roc_auc"], 1 - zero["roc_auc"])


def test_best_threshold_and_accuracy_brute_force():
    distances, labels = _pairs(5, n=120, ties=True)
    result = verification_metrics(distances, labels)
    similar = labels == 0
    best = max(
        np.mean((distances <= t) == similar)
        for t in np.concatenate([[-1.0], distances])
    )
    np.testing.assert_allclose(result["accuracy"], best)
    at = np.mean((distances <= result["threshold"]) == similar)
    np.testing.assert_allclose(at, best)
    tpr = np.mean(distances[similar] <= result["threshold"])
    tnr = np.mean(distances[~similar] > result["threshold"])
    np.testing.assert_allclose(result["balanced_accuracy"], (tpr + tnr) / 2)
    assert result["num_pairs"] == 120
    assert result["num_similar"] == similar.sum()


def test_fixed_threshold():
    result = verification_metrics(
        [0.1, 0.4, 0.6, 0.9], [0, 1, 0, 1], threshold=0.5
    )
    assert result["threshold"] == 0.5
    assert result["accuracy"] == 0.5
    assert result["true_positive_rate"] == 0.5


def test_eer_against_sklearn_roc_curve():
    distances, labels = _pairs(6, n=2000)
    result = verification_metrics(distances, labels)
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels == 0, -distances)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert abs(result["eer"] - (fpr[i] + fnr[i]) / 2) < 2e-3
    at = result["eer_threshold"]
    far = np.mean(distances[labels == 1] <= at)
    frr = np.mean(distances[labels == 0] > at)
    assert abs(far - result["eer"]) < 2e-3 and abs(frr - result["eer"]) < 2e-3


def test_perfect_and_inverted_separation():
    perfect = verification_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert perfect["roc_auc"] == 1.0 and perfect["eer"] == 0.0
    assert perfect["accuracy"] == 1.0 and 0.2 < perfect["threshold"] < 0.8
    inverted = verification_metrics([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert inverted["roc_auc"] == 0.0 and inverted["eer"] == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distances=[0.1, 0.2], pair_labels=[0]), "same length"),
        (dict(distances=[0.1, 0.2], pair_labels=[0, 2]), "pair_labels"),
        (dict(distances=[0.1, np.nan], pair_labels=[0, 1]), "finite"),
        (dict(distances=[0.1, 0.2], pair_labels=[0, 0]), "both similar"),
        (dict(distances=np.zeros((2, 2)), pair_labels=[0, 1]), "distances"),
        (
            dict(distances=[0.1, 0.2], pair_labels=[0, 1], similar_label=2),
            "similar_label",
        ),
    ],
)
def test_verification_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        verification_metrics(**kwargs)


# ---------------------------------------------------------------- retrieval


def _brute_force_retrieval(queries, labels, ref, ref_labels, ks, metric,
                           same_source):
    results = {f"recall_at_{k}": [] for k in ks}
    results.update(precision_at_1=[], r_precision=[], map_at_r=[])
    for i, (q, label) in enumerate(zip(queries, labels)):
        dist = []
        for j, r in enumerate(ref):
            if same_source and j == i:
                continue
            if metric == "cosine":
                d = 1 - q @ r / np.linalg.norm(q) / np.linalg.norm(r)
            else:
                d = np.sum((q - r) ** 2)
                d = np.sqrt(d) if metric == "euclidean" else d
            dist.append((d, ref_labels[j]))
        ranked = [lab == label for _, lab in sorted(dist, key=lambda t: t[0])]
        big_r = sum(ranked)
        if big_r == 0:
            continue
        for k in ks:
            results[f"recall_at_{k}"].append(any(ranked[:k]))
        results["precision_at_1"].append(ranked[0])
        results["r_precision"].append(sum(ranked[:big_r]) / big_r)
        average = 0.0
        for i_rank in range(big_r):
            if ranked[i_rank]:
                average += sum(ranked[: i_rank + 1]) / (i_rank + 1)
        results["map_at_r"].append(average / big_r)
    return {name: float(np.mean(values)) for name, values in results.items()}


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean",
                                    "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_retrieval_matches_brute_force(metric, chunk_size):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 90)
    labels[0] = 99  # a lone query, left out
    embeddings = rng.normal(size=(90, 5)) + labels[:, None] % 6 * 0.4
    result = retrieval_metrics(embeddings, labels, k=(1, 3, 10),
                               metric=metric, chunk_size=chunk_size)
    expected = _brute_force_retrieval(embeddings, labels, embeddings, labels,
                                      (1, 3, 10), metric, True)
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value, err_msg=name)
    assert result["num_queries"] == 89 and result["num_lone_queries"] == 1


def test_retrieval_with_reference_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 40)
    ref_labels = rng.integers(0, 4, 70)  # class 4 has no reference: lone
    queries = rng.normal(size=(40, 3)) + labels[:, None]
    ref = rng.normal(size=(70, 3)) + ref_labels[:, None]
    result = retrieval_metrics(queries, labels, k=5,
                               reference=(ref, ref_labels), chunk_size=9)
    expected = _brute_force_retrieval(queries, labels, ref, ref_labels,
                                      (5,), "euclidean", False)
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value, err_msg=name)
    assert result["num_lone_queries"] == int(np.sum(labels == 4))


def test_retrieval_map_at_r_brute_force_small_example():
    # Query 0's neighbours by distance: 1 (same), 2 (other), 3 (same): R=2,
    # MAP@R = (1/2)(1/1 + 0) = 0.5, R-precision = 1/2.
    x = np.array([[0.0], [1.0], [1.5], [2.5]])
    y = np.array([0, 0, 1, 0])
    result = retrieval_metrics(x[:1], y[:1], k=(1, 2),
                               reference=(x[1:], y[1:]))
    assert result["map_at_r"] == 0.5
    assert result["r_precision"] == 0.5
    assert result["precision_at_1"] == 1.0


def test_retrieval_chunks_do_not_change_result():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 500)
    embeddings = rng.normal(size=(500, 8)) + labels[:, None] * 0.2
    whole = retrieval_metrics(embeddings, labels, chunk_size=500)
    for chunk in (1, 33):
        chunked = retrieval_metrics(embeddings, labels, chunk_size=chunk)
        for name, value in whole.items():
            np.testing.assert_allclose(chunked[name], value, err_msg=name)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embeddings=np.zeros(4), labels=[0, 1, 0, 1]), "embeddings"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0, 1]), "same length"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0] * 4, k=0), "`k`"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0] * 4, metric="l1"),
         "metric"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0] * 4,
              reference=np.zeros((4, 2))), "reference"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0] * 4,
              reference=(np.zeros((3, 5)), [0, 0, 0])), "size D"),
        (dict(embeddings=np.zeros((4, 2)), labels=[0] * 4, chunk_size=0),
         "chunk_size"),
    ],
)
def test_retrieval_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**kwargs)


# ---------------------------------------------------------------- few-shot


def test_few_shot_separable_and_random():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 4)
    separable = np.eye(30)[labels] * 10 + rng.normal(size=(120, 30)) * 0.1
    result = few_shot_accuracy(separable, labels, ways=20, episodes=50)
    assert result["accuracy"] == 1.0 and result["ci95"] == 0.0
    noise = rng.normal(size=(120, 30))
    chance = few_shot_accuracy(noise, labels, ways=5, episodes=400,
                               queries_per_class=2)
    assert abs(chance["accuracy"] - 0.2) < 3 * chance["ci95"] + 0.02


@pytest.mark.parametrize("classifier", ["nearest", "prototype"])
def test_few_shot_matches_episode_loop(classifier):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(12), 6)
    embeddings = rng.normal(size=(72, 4)) + labels[:, None] * 0.3
    result = few_shot_accuracy(embeddings, labels, ways=5, shots=2,
                               queries_per_class=3, episodes=30, seed=7,
                               classifier=classifier)
    # Replay the documented sampler with a plain loop.
    sampler = np.random.default_rng(7)
    members = [np.flatnonzero(labels == c) for c in range(12)]
    accuracies = []
    for _ in range(30):
        chosen = sampler.choice(12, size=5, replace=False)
        picks = [sampler.choice(members[c], size=5, replace=False)
                 for c in chosen]
        correct = 0
        for true_class, pick in enumerate(picks):
            for q in pick[2:]:
                best, best_class = np.inf, None
                for cls, other in enumerate(picks):
                    supports = embeddings[other[:2]]
                    if classifier == "prototype":
                        supports = supports.mean(0, keepdims=True)
                    d = np.min(np.linalg.norm(supports - embeddings[q],
                                              axis=1))
                    if d < best:
                        best, best_class = d, cls
                correct += best_class == true_class
        accuracies.append(correct / 15)
    np.testing.assert_allclose(result["accuracy"], np.mean(accuracies))
    np.testing.assert_allclose(
        result["ci95"], 1.96 * np.std(accuracies, ddof=1) / np.sqrt(30)
    )


def test_few_shot_is_reproducible():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(8), 3)
    embeddings = rng.normal(size=(24, 3))
    first = few_shot_accuracy(embeddings, labels, ways=4, episodes=20, seed=1)
    again = few_shot_accuracy(embeddings, labels, ways=4, episodes=20, seed=1)
    assert first == again


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ways=5), "ways"),
        (dict(ways=2, shots=3), "shots \\+ queries_per_class"),
        (dict(ways=1), "ways"),
        (dict(ways=2, episodes=0), "episodes"),
        (dict(ways=2, metric="manhattan"), "metric"),
        (dict(ways=2, classifier="knn"), "classifier"),
    ],
)
def test_few_shot_bad_input(kwargs, match):
    embeddings = np.zeros((8, 2))
    labels = np.repeat(np.arange(4), 2)
    with pytest.raises(ValueError, match=match):
        few_shot_accuracy(embeddings, labels, **kwargs)


def test_evaluation_adds_no_imports():
    # The package __init__ imports keras (and keras TensorFlow); importing
    # evaluation on top of it must not import anything else.
    code = (
        "import sys, keras_contrastive; "
        "before = {m.split('.')[0] for m in sys.modules}; "
        "import keras_contrastive.evaluation; "
        "after = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(after - before - {'keras_contrastive'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
