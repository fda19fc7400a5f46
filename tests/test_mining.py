"""Pair masks and miners against explicit numpy loops over all pairs."""

import keras
import numpy as np
import pytest
from conftest import compile_xla
from keras import ops

from keras_contrastive import distances, mining

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])


def _numpy_distances(x, metric):
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            diff = x[i] - x[j]
            if metric == "euclidean":
                out[i, j] = np.sqrt(diff @ diff)
            elif metric == "squared_euclidean":
                out[i, j] = diff @ diff
            else:
                cos = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
                out[i, j] = 1.0 - cos
    return out


def _reference_weights(d, labels, miner, *, pos_threshold=0.2,
                       neg_threshold=0.8, margin=1.0):
    n = len(labels)
    w = np.zeros((n, n))
    for a in range(n):
        positives = [j for j in range(n) if j != a and labels[j] == labels[a]]
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        if miner == "all":
            for j in positives + negatives:
                w[a, j] = 1
        elif miner == "pair_margin":
            for j in positives:
                w[a, j] = d[a, j] > pos_threshold
            for j in negatives:
                w[a, j] = d[a, j] < neg_threshold
        elif miner == "batch_hard":
            if positives and negatives:
                w[a, max(positives, key=lambda j: d[a, j])] = 1
                w[a, min(negatives, key=lambda j: d[a, j])] = 1
        elif miner == "semi_hard":
            for p in positives:
                w[a, p] = 1
                for n_ in negatives:
                    if d[a, p] < d[a, n_] < d[a, p] + margin:
                        w[a, n_] = 1
    return w


def _mine(miner, d, labels, **params):
    positive, negative = mining.pair_masks(labels)
    return ops.convert_to_numpy(
        mining.get(miner)(ops.convert_to_tensor(d, "float32"), positive,
                          negative, **params)
    )


def test_pair_masks_small_fixture():
    positive, negative = mining.pair_masks(np.array([[0], [0], [1]]))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(positive),
        [[False, True, False], [True, False, False], [False, False, False]],
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(negative),
        [[False, False, True], [False, False, True], [True, True, False]],
    )


def test_pair_masks_with_reference_labels_keep_the_diagonal():
    positive, negative = mining.pair_masks([0, 1], [0, 1, 1.0])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(positive), [[1, 0, 0], [0, 1, 1]]
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(negative), [[0, 1, 1], [1, 0, 0]]
    )


def test_pair_masks_reject_a_matrix():
    with pytest.raises(ValueError, match=r"labels.shape=\(2, 2\)"):
        mining.pair_masks(np.zeros((2, 2)))


@pytest.mark.parametrize("miner", sorted(mining.MINERS))
@pytest.mark.parametrize("metric",
                         ["euclidean", "squared_euclidean", "cosine"])
def test_miner_selects_the_pairs_of_a_numpy_loop(miner, metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(len(LABELS), 3))
    d = _numpy_distances(x, metric)
    params = {
        "pair_margin": dict(pos_threshold=0.5, neg_threshold=1.5),
        "semi_hard": dict(margin=0.5),
    }.get(miner, {})
    if metric == "squared_euclidean" and miner == "pair_margin":
        params = dict(pos_threshold=1.0, neg_threshold=4.0)
    expected = _reference_weights(d, LABELS, miner, **params)
    np.testing.assert_array_equal(_mine(miner, d, LABELS, **params), expected)
    # The same through the package's own pairwise distances.
    computed = distances.pairwise_distances(x.astype("float32"), None, metric)
    got = ops.convert_to_numpy(
        mining.get(miner)(computed, *mining.pair_masks(LABELS), **params)
    )
    np.testing.assert_array_equal(got, expected)


def test_semi_hard_band_on_a_line():
    # Anchor 0 at 0; positive at 1; negatives at 0.5 (hard), 1.5 (semi-hard),
    # 2.5 (easy, beyond the margin 1).
    x = np.array([0.0, 1.0, 0.5, 1.5, 2.5])
    d = np.abs(x[:, None] - x[None, :])
    w = _mine("semi_hard", d, [0, 0, 1, 2, 3], margin=1.0)
    np.testing.assert_array_equal(w[0], [0, 1, 0, 1, 0])


def test_batch_hard_without_positive_or_negative_mines_nothing():
    d = np.ones((3, 3)) - np.eye(3)
    np.testing.assert_array_equal(_mine("batch_hard", d, [0, 1, 2]), 0)
    np.testing.assert_array_equal(_mine("batch_hard", d, [5, 5, 5]), 0)
    np.testing.assert_array_equal(_mine("semi_hard", d, [0, 1, 2]), 0)


def test_miners_on_float16_distances_do_not_overflow():
    d = _numpy_distances(np.random.default_rng(0).normal(size=(10, 3)),
                         "euclidean")
    positive, negative = mining.pair_masks(LABELS)
    for name in ("batch_hard", "semi_hard"):
        got = mining.get(name)(ops.convert_to_tensor(d, "float16"), positive,
                               negative)
        assert keras.backend.standardize_dtype(got.dtype) == "float16"
        np.testing.assert_array_equal(
            ops.convert_to_numpy(got), _reference_weights(d, LABELS, name)
        )


@pytest.mark.parametrize("miner", sorted(mining.MINERS))
def test_miners_under_xla_equal_eager(miner):
    d = _numpy_distances(np.random.default_rng(2).normal(size=(10, 3)),
                         "euclidean").astype("float32")

    def run(d, labels):
        return mining.get(miner)(d, *mining.pair_masks(labels))

    np.testing.assert_array_equal(
        ops.convert_to_numpy(compile_xla(run)(d, LABELS)),
        ops.convert_to_numpy(run(d, LABELS)),
    )


def test_class_sizes():
    np.testing.assert_array_equal(
        ops.convert_to_numpy(mining.class_sizes([3.0, 1.0, 3.0, 7.0, 3.0])),
        [3, 1, 3, 1, 3],
    )


def test_get_lists_the_valid_names():
    with pytest.raises(ValueError, match="'hardest'.*batch_hard"):
        mining.get("hardest")
    with pytest.raises(TypeError, match="miner=3"):
        mining.get(3)

    def custom(d, p, n):
        return ops.cast(p, d.dtype)

    assert mining.get(custom) is custom
    assert mining.name_of("semi_hard") == "semi_hard"
    assert mining.name_of(custom) is None


def test_thresholds_out_of_order():
    with pytest.raises(ValueError, match="pos_threshold=0.9, neg_threshold"):
        mining.check_thresholds(0.9, 0.5)
    with pytest.raises(ValueError, match="pos_threshold"):
        _mine("pair_margin", np.zeros((2, 2)), [0, 1], pos_threshold=-1.0)
