"""Tests for keras_contrastive.data: online pairs, balanced batches, views."""

import keras
import numpy as np
import pytest
from conftest import requires_tensorflow, two_replica_strategy

tf = pytest.importorskip("tensorflow")

from keras_contrastive.data import (  # noqa: E402
    augmented_views,
    class_balanced_dataset,
    make_pair_dataset,
)

pytestmark = requires_tensorflow


def indexed(labels):
    """Examples that are their own index, so pairs can be traced back."""
    labels = np.asarray(labels)
    return np.arange(len(labels), dtype="int64"), labels


def collect_pairs(dataset):
    """All (anchor, partner, label) of one pass, as numpy vectors."""
    anchors, partners, labels = [], [], []
    for (a, b), label in dataset:
        anchors.append(np.reshape(a, [-1]))
        partners.append(np.reshape(b, [-1]))
        labels.append(np.reshape(label, [-1]))
    return tuple(np.concatenate(v) for v in (anchors, partners, labels))


@pytest.mark.parametrize("similar_label", [0, 1])
def test_pair_labels_match_class_equality(similar_label):
    x, y = indexed(np.arange(200) % 7)
    dataset = make_pair_dataset(
        x, y, batch_size=32, seed=1, similar_label=similar_label
    )
    anchors, partners, labels = collect_pairs(dataset)
    same = y[anchors] == y[partners]
    np.testing.assert_array_equal(labels == similar_label, same)
    assert len(labels) == 200  # pairs_per_epoch defaults to N
    assert set(np.unique(labels)) == {0, 1}


def test_positive_fraction_within_one_percent_over_100k_pairs():
    x, y = indexed(np.arange(1000) % 10)
    dataset = make_pair_dataset(
        x,
        y,
        batch_size=4096,
        positive_fraction=0.3,
        pairs_per_epoch=100_000,
        seed=0,
    )
    _, _, labels = collect_pairs(dataset)
    assert len(labels) == 100_000
    assert abs(np.mean(labels == 0) - 0.3) < 0.01


def test_positive_partner_differs_and_singletons_are_negatives_only():
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 4])  # classes 2, 3, 4: singles
    x, y = indexed(labels)
    dataset = make_pair_dataset(
        x, y, batch_size=64, pairs_per_epoch=2000, seed=3
    )
    anchors, partners, pair_labels = collect_pairs(dataset)
    positive = pair_labels == 0
    assert np.all(anchors[positive] != partners[positive])
    singles = np.isin(anchors, [5, 6, 7]) | np.isin(partners, [5, 6, 7])
    assert not np.any(singles & positive)
    assert np.any(singles & ~positive)
    # Negative partners come from every other class.
    assert set(y[partners[~positive]]) == {0, 1, 2, 3, 4}


def test_same_seed_same_epochs_and_every_epoch_fresh():
    x, y = indexed(np.arange(100) % 5)
    first = make_pair_dataset(x, y, batch_size=10, seed=7)
    second = make_pair_dataset(x, y, batch_size=10, seed=7)
    epoch_1, epoch_2 = collect_pairs(first), collect_pairs(first)
    for a, b in zip(epoch_1, collect_pairs(second)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(epoch_2, collect_pairs(second)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(epoch_1[0], epoch_2[0])
    other = collect_pairs(make_pair_dataset(x, y, batch_size=10, seed=8))
    assert not np.array_equal(epoch_1[0], other[0])


def test_batching_shapes_and_cardinality():
    x = np.random.rand(50, 3, 2).astype("float32")
    y = np.arange(50) % 4
    ragged = make_pair_dataset(x, y, batch_size=16)
    assert ragged.cardinality() == 4
    sizes = [int(label.shape[0]) for _, label in ragged]
    assert sizes == [16, 16, 16, 2]
    fixed = make_pair_dataset(x, y, batch_size=16, drop_remainder=True)
    (x1, x2), label = fixed.element_spec
    assert x1.shape == (16, 3, 2) and label.shape == (16,)
    assert fixed.cardinality() == 3
    single = make_pair_dataset(x, y, pairs_per_epoch=30)
    (x1, _), label = single.element_spec
    assert x1.shape == (3, 2) and label.shape == ()
    assert single.cardinality() == 30 and len(list(single)) == 30


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_extreme_positive_fractions(fraction):
    labels = np.arange(20) if fraction == 0 else np.arange(20) % 4
    x, y = indexed(labels)
    dataset = make_pair_dataset(
        x, y, batch_size=8, positive_fraction=fraction, seed=0
    )
    anchors, partners, pair_labels = collect_pairs(dataset)
    assert np.all(pair_labels == (0 if fraction == 1 else 1))
    assert np.all((y[anchors] == y[partners]) == (fraction == 1))


def test_finite_dataset_input_with_unknown_cardinality():
    source = tf.data.Dataset.range(60).map(lambda i: (i, i % 3))
    source = source.filter(lambda i, label: i < 40)  # UNKNOWN cardinality
    dataset = make_pair_dataset(source, batch_size=8, seed=0)
    anchors, partners, labels = collect_pairs(dataset)
    assert len(labels) == 40 and anchors.max() < 40
    np.testing.assert_array_equal(labels == 0, anchors % 3 == partners % 3)


def test_lazy_file_paths_with_load_fn(tmp_path):
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"{i}.txt"))
    labels = np.arange(12) % 3

    def load_fn(path):
        return tf.strings.to_number(tf.io.read_file(path), tf.int32)

    dataset = make_pair_dataset(
        np.array(paths), labels, batch_size=4, seed=0, load_fn=load_fn
    )
    for i, path in enumerate(paths):  # written after the dataset is built
        with open(path, "w") as f:
            f.write(str(i))
    anchors, partners, pair_labels = collect_pairs(dataset)
    assert len(pair_labels) == 12
    np.testing.assert_array_equal(
        pair_labels == 0, labels[anchors] == labels[partners]
    )


def test_dtype_casts_each_batch_and_keeps_the_held_copy_compact():
    x = np.arange(20 * 3, dtype="uint8").reshape(20, 3)
    y = np.arange(20) % 4
    pairs = make_pair_dataset(x, y, batch_size=8, seed=0, dtype="float32")
    plain = make_pair_dataset(x, y, batch_size=8, seed=0)
    assert pairs.element_spec[0][0].dtype == tf.float32
    assert plain.element_spec[0][0].dtype == tf.uint8
    for ((a, b), label), ((a8, b8), label8) in zip(pairs, plain):
        # The same pairs, the same values, only the dtype differs.
        np.testing.assert_array_equal(a.numpy(), a8.numpy().astype("f4"))
        np.testing.assert_array_equal(b.numpy(), b8.numpy().astype("f4"))
        np.testing.assert_array_equal(label, label8)
    batches = class_balanced_dataset(
        x,
        y,
        classes_per_batch=2,
        examples_per_class=3,
        seed=0,
        dtype="float16",
    )
    examples, labels = next(iter(batches))
    assert examples.dtype == tf.float16 and examples.shape == (6, 3)
    np.testing.assert_array_equal(examples.numpy()[:, 0] // 3 % 4, labels)


def test_dtype_applies_after_load_fn_and_rejects_non_numeric():
    paths, labels = np.array([str(i) for i in range(8)]), np.arange(8) % 2

    def load_fn(path):
        return tf.strings.to_number(path, tf.int32)

    pairs = make_pair_dataset(
        paths, labels, batch_size=4, seed=0, load_fn=load_fn, dtype="float64"
    )
    (a, b), pair_label = next(iter(pairs))
    assert a.dtype == tf.float64 and b.dtype == tf.float64
    np.testing.assert_array_equal(pair_label == 0, a % 2 == b % 2)
    for bad in ("string", "bool", object()):
        with pytest.raises(TypeError, match="dtype"):
            make_pair_dataset(np.zeros(4), [0, 0, 1, 1], dtype=bad)
    with pytest.raises(TypeError, match="dtype"):
        class_balanced_dataset(
            np.zeros(4),
            [0, 0, 1, 1],
            classes_per_batch=2,
            examples_per_class=1,
            dtype="complex64",
        )
    # Strings cannot be cast: the error says to cast inside `load_fn`.
    with pytest.raises(TypeError, match="load_fn"):
        make_pair_dataset(paths, labels, batch_size=4, dtype="float32")


def test_model_fit_on_pairs():
    from keras_contrastive.layers import PairDistance
    from keras_contrastive.losses import ContrastiveLoss

    x = np.random.rand(64, 4).astype("float32")
    y = np.arange(64) % 4
    a, b = keras.Input((4,)), keras.Input((4,))
    encoder = keras.layers.Dense(3)
    model = keras.Model([a, b], PairDistance()([encoder(a), encoder(b)]))
    model.compile(optimizer="sgd", loss=ContrastiveLoss())
    history = model.fit(
        make_pair_dataset(x, y, batch_size=16, seed=0), epochs=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))


def mirrored():
    return two_replica_strategy()


def replica_values(strategy, value):
    return [t.numpy() for t in strategy.experimental_local_results(value)]


def test_experimental_distribute_dataset_splits_each_batch():
    strategy = mirrored()
    x, y = indexed(np.arange(64) % 4)
    dataset = make_pair_dataset(x, y, batch_size=8, seed=0, drop_remainder=True)
    for (a, _), label in strategy.experimental_distribute_dataset(dataset):
        parts = replica_values(strategy, a)
        assert [len(p) for p in parts] == [4, 4]
        assert len(replica_values(strategy, label)[1]) == 4


def test_distribute_datasets_from_function_gives_each_replica_its_share():
    strategy = mirrored()
    x, y = indexed(np.arange(64) % 4)

    def dataset_fn(context):
        return make_pair_dataset(
            x,
            y,
            batch_size=8,
            seed=0,
            input_context=context,
            drop_remainder=True,
        )

    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    steps = 0
    for (a, b), label in distributed:
        first, second = replica_values(strategy, a)
        assert len(first) == len(second) == 4  # per replica: 8 / 2
        assert not np.array_equal(first, second)
        steps += 1
    assert steps == 8  # 64 pairs, 4 per replica, 2 replicas per step


def test_class_balanced_batches_have_p_classes_of_k():
    labels = np.repeat(np.arange(6), [10, 10, 10, 10, 2, 1])
    x, y = indexed(labels)
    dataset = class_balanced_dataset(
        x, y, classes_per_batch=3, examples_per_class=4, seed=0
    )
    examples_spec, labels_spec = dataset.element_spec
    assert examples_spec.shape == (12,) and labels_spec.shape == (12,)
    for examples, batch_labels in dataset.take(30):
        examples, batch_labels = examples.numpy(), batch_labels.numpy()
        np.testing.assert_array_equal(y[examples], batch_labels)
        groups = batch_labels.reshape(3, 4)
        assert np.all(groups == groups[:, :1])  # grouped by class
        assert len(set(groups[:, 0])) == 3
        for group, members in zip(groups[:, 0], examples.reshape(3, 4)):
            size = np.sum(y == group)
            distinct = len(set(members))
            assert distinct == min(size, 4)  # repeats only if size < K


def test_class_balanced_is_reproducible_and_validates():
    x, y = indexed(np.arange(30) % 5)
    draw = lambda: [  # noqa: E731
        e.numpy()
        for e, _ in class_balanced_dataset(
            x, y, classes_per_batch=2, examples_per_class=3, seed=4
        ).take(3)
    ]
    np.testing.assert_array_equal(draw(), draw())
    with pytest.raises(ValueError, match="classes_per_batch"):
        class_balanced_dataset(x, y, classes_per_batch=6, examples_per_class=2)
    with pytest.raises(ValueError, match="examples_per_class"):
        class_balanced_dataset(x, y, classes_per_batch=2, examples_per_class=0)


def test_class_balanced_per_replica_batches():
    strategy = mirrored()
    x, y = indexed(np.arange(40) % 8)

    def dataset_fn(context):
        return class_balanced_dataset(
            x,
            y,
            classes_per_batch=2,
            examples_per_class=2,
            seed=0,
            input_context=context,
        )

    distributed = iter(strategy.distribute_datasets_from_function(dataset_fn))
    examples, labels = next(distributed)
    for part in replica_values(strategy, labels):
        assert part.shape == (4,) and len(set(part)) == 2


def test_augmented_views_share_ids_and_differ():
    images = np.random.rand(12, 4, 4, 1).astype("float32")
    source = tf.data.Dataset.from_tensor_slices((images, np.arange(12)))
    source = source.batch(4, drop_remainder=True)

    def jitter(x, seed):
        return x + tf.random.stateless_normal(tf.shape(x), seed)

    dataset = augmented_views(source, jitter, views=3, seed=0)
    batches = list(dataset)
    assert len(batches) == 3
    views, ids = batches[0]
    assert views.shape == (12, 4, 4, 1) and ids.shape == (12,)
    ids = ids.numpy()
    np.testing.assert_array_equal(ids, np.repeat(ids[::3], 3))
    assert len(set(ids)) == 4
    assert not np.allclose(views[0], views[1])  # independent copies
    np.testing.assert_allclose(
        views.numpy().reshape(4, 3, 4, 4, 1).mean(1), images[:4], atol=3
    )
    again = next(iter(augmented_views(source, jitter, views=3, seed=0)))
    np.testing.assert_array_equal(again[0], views)


def test_augmented_views_with_labels_keeps_class_and_sample_id():
    x = np.random.rand(24, 3).astype("float32")
    y = np.arange(24) % 6
    batches = class_balanced_dataset(
        x, y, classes_per_batch=3, examples_per_class=2, seed=0
    )
    dataset = augmented_views(
        batches, lambda b: b * 2.0, views=2, with_labels=True
    )
    seen = set()
    for views, targets in dataset.take(3):
        targets = targets.numpy()
        assert views.shape == (12, 3) and targets.shape == (12, 2)
        assert targets.dtype == np.int32
        labels, ids = targets[:, 0], targets[:, 1]
        np.testing.assert_array_equal(ids, np.repeat(ids[::2], 2))
        # Each row's label is the class of the example it is a view of.
        rows = [int(np.flatnonzero(np.all(x * 2.0 == v, 1))[0])
                for v in views.numpy()]
        np.testing.assert_array_equal(labels, y[rows])
        assert not seen & set(ids)  # ids unique across steps too
        seen |= set(ids)
    with pytest.raises(TypeError, match="with_labels"):
        augmented_views(tf.data.Dataset.from_tensor_slices(x).batch(4),
                        lambda b: b, with_labels=True)
    strings = tf.data.Dataset.from_tensor_slices((x, y.astype(str)))
    with pytest.raises(TypeError, match="integer labels"):
        augmented_views(strings.batch(4), lambda b: b, with_labels=True)


def test_augmented_views_with_keras_layer_fit_and_replicas():
    images = np.random.rand(16, 4, 4, 1).astype("float32")
    source = tf.data.Dataset.from_tensor_slices(images).batch(8)
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    dataset = augmented_views(source, flip)
    strategy = mirrored()
    for views, ids in strategy.experimental_distribute_dataset(dataset):
        first, second = replica_values(strategy, ids)
        assert len(first) == len(second) == 8
        assert not set(first) & set(second)  # ids unique across replicas

    def same_id_distance(ids, embeddings):  # a stand-in in-batch loss
        same = keras.ops.equal(ids[:, None], ids[None, :])
        gaps = keras.ops.sum(
            keras.ops.square(embeddings[:, None] - embeddings[None]), -1
        )
        return keras.ops.sum(keras.ops.where(same, gaps, 0.0), axis=1)

    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile(optimizer="sgd", loss=same_id_distance)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=np.zeros(5), y=np.zeros(4)), ValueError, "same number"),
        (dict(x=np.zeros(5), y=np.zeros(5)), ValueError, "at least 2 classes"),
        (dict(x=np.zeros(3), y=[0, 1, 2]), ValueError, "positive_fraction=0"),
        (
            dict(x=np.zeros(4), y=[0, 0, 1, 1], positive_fraction=1.5),
            ValueError,
            "positive_fraction",
        ),
        (
            dict(x=np.zeros(4), y=[0, 0, 1, 1], positive_fraction=-0.1),
            ValueError,
            "positive_fraction",
        ),
        (dict(x=np.zeros(4), y=None), TypeError, "`y`"),
        (
            dict(x=np.zeros(4), y=[0, 0, 1, 1], similar_label=2),
            ValueError,
            "similar_label",
        ),
        (
            dict(x=np.zeros(4), y=[0, 0, 1, 1], batch_size=0),
            ValueError,
            "batch_size",
        ),
    ],
)
def test_make_pair_dataset_errors(kwargs, error, match):
    x, y = kwargs.pop("x"), kwargs.pop("y")
    with pytest.raises(error, match=match):
        make_pair_dataset(x, y, **kwargs)


def test_infinite_dataset_and_bad_views_are_rejected():
    endless = tf.data.Dataset.from_tensors((0.0, 0)).repeat()
    with pytest.raises(ValueError, match="infinite"):
        make_pair_dataset(endless)
    with pytest.raises(ValueError, match="views"):
        augmented_views(tf.data.Dataset.range(3), lambda x: x, views=1)
    with pytest.raises(TypeError, match="dataset"):
        augmented_views(np.zeros(3), lambda x: x)
