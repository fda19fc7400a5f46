import keras
import numpy as np
import pytest
from conftest import (
    compile_xla,
    requires_tensorflow,
    two_replica_strategy,
    value_and_gradient,
)
from keras import ops

from keras_contrastive.layers import PairDistance
from keras_contrastive.losses import ContrastiveLoss, contrastive_loss

METRICS = ["euclidean", "squared_euclidean", "cosine"]


def numpy_contrastive(labels, dists, *, margin=1.0, positive_margin=0.0,
                      similar_label=0, squared=True):
    """The per-pair formula, written as a plain loop."""
    power = 2 if squared else 1
    losses = []
    for label, d in zip(np.ravel(labels), np.ravel(dists)):
        if label == similar_label:
            losses.append(max(0.0, d - positive_margin) ** power)
        else:
            losses.append(max(0.0, margin - d) ** power)
    return np.array(losses)


def numpy_distance(a, b, metric):
    if metric == "euclidean":
        return np.linalg.norm(a - b)
    if metric == "squared_euclidean":
        return np.sum((a - b) ** 2)
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    dists = rng.uniform(0.0, 2.0, size=8).astype("float32")
    return labels, dists


def to_numpy(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("similar_label", [0, 1])
@pytest.mark.parametrize("margin, positive_margin", [(1.0, 0.0), (1.5, 0.3)])
@pytest.mark.parametrize("squared", [True, False])
def test_matches_numpy_loop(pairs, similar_label, margin, positive_margin,
                            squared):
    labels, dists = pairs
    labels = labels if similar_label == 0 else 1 - labels
    kwargs = dict(margin=margin, positive_margin=positive_margin,
                  similar_label=similar_label, squared=squared)
    result = to_numpy(contrastive_loss(labels, dists, **kwargs))
    np.testing.assert_allclose(
        result, numpy_contrastive(labels, dists, **kwargs), rtol=1e-6
    )


def test_defaults_are_the_seed_formula(pairs):
    labels, dists = pairs
    expected = (1 - labels) * dists**2 + labels * np.maximum(0, 1 - dists) ** 2
    np.testing.assert_allclose(
        to_numpy(contrastive_loss(labels, dists)), expected, rtol=1e-6
    )


def test_known_values_of_the_docstring_example():
    np.testing.assert_allclose(
        to_numpy(contrastive_loss([0, 1], [0.5, 0.25])), [0.25, 0.5625]
    )


@pytest.mark.parametrize("metric", METRICS)
def test_stacked_embedding_pairs(metric):
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 2, 4)).astype("float32")
    labels = np.array([0, 1, 1, 0, 1, 0])
    dists = [numpy_distance(e[0], e[1], metric) for e in embeddings]
    expected = numpy_contrastive(labels, dists, margin=2.0)
    result = contrastive_loss(labels, embeddings, margin=2.0, metric=metric)
    np.testing.assert_allclose(to_numpy(result), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 1, 1]), np.array([[0], [1], [1]]),
     np.array([0.0, 1.0, 1.0]), np.array([False, True, True])],
    ids=["int", "column", "float", "bool"],
)
def test_label_shapes_and_dtypes_give_one_loss_per_pair(labels):
    dists = np.array([[0.5], [0.2], [3.0]], "float32")
    result = to_numpy(contrastive_loss(labels, dists))
    # [N, 1] against [N] must not broadcast to [N, N]
    assert result.shape == (3,)
    np.testing.assert_allclose(result, [0.25, 0.64, 0.0], rtol=1e-6)


def test_similar_label_one_flips_the_convention():
    dists = np.array([0.5, 0.2], "float32")
    np.testing.assert_allclose(
        to_numpy(contrastive_loss([1, 0], dists, similar_label=1)),
        to_numpy(contrastive_loss([0, 1], dists)),
    )


def test_nan_and_inf_distances_are_propagated_as_documented():
    labels = np.array([0, 1, 0, 1])
    dists = np.array([np.nan, np.nan, np.inf, np.inf], "float32")
    result = to_numpy(contrastive_loss(labels, dists))
    assert np.isnan(result[0]) and np.isnan(result[1])
    assert result[2] == np.inf
    assert result[3] == 0.0


class TestReduction:
    labels = np.array([0, 1, 0, 1])
    dists = np.array([0.5, 0.2, 1.0, 2.0], "float32")
    per_pair = np.array([0.25, 0.64, 1.0, 0.0])

    @pytest.mark.parametrize(
        "reduction, expected",
        [("sum_over_batch_size", 1.89 / 4), ("sum", 1.89), ("mean", 1.89 / 4),
         ("mean_with_sample_weight", 1.89 / 4), (None, per_pair)],
    )
    def test_reductions(self, reduction, expected):
        loss = ContrastiveLoss(reduction=reduction)
        np.testing.assert_allclose(
            to_numpy(loss(self.labels, self.dists)), expected, rtol=1e-6
        )

    @pytest.mark.parametrize(
        "sample_weight",
        [2.0, np.array([1.0, 0.0, 2.0, 1.0]),
         np.array([[1.0], [0.0], [2.0], [1.0]]), np.zeros(4)],
        ids=["scalar", "per-pair", "column", "zeros"],
    )
    def test_sample_weight(self, sample_weight):
        weights = np.broadcast_to(np.ravel(sample_weight), (4,))
        loss = ContrastiveLoss()
        result = to_numpy(loss(self.labels, self.dists, sample_weight))
        expected = np.sum(self.per_pair * weights) / 4
        np.testing.assert_allclose(result, expected, rtol=1e-6)
        if np.ndim(sample_weight) == 0:
            return  # Keras divides by the scalar itself, not per pair
        weighted_mean = ContrastiveLoss(reduction="mean_with_sample_weight")
        result = to_numpy(
            weighted_mean(self.labels, self.dists, sample_weight)
        )
        total = weights.sum()
        expected = (self.per_pair * weights).sum() / total if total else 0.0
        np.testing.assert_allclose(result, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(pairs, dtype):
    labels, dists = pairs
    low = ops.cast(dists, dtype)
    result = contrastive_loss(labels, low)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    expected = numpy_contrastive(labels, to_numpy(ops.cast(low, "float32")))
    np.testing.assert_allclose(to_numpy(result), expected, rtol=1e-6)
    embeddings = ops.cast(
        np.random.default_rng(0).normal(size=(8, 2, 4)) * 100.0, dtype
    )
    stacked = to_numpy(ContrastiveLoss()(labels, embeddings))
    assert np.isfinite(stacked)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_finite_gradient_with_identical_pairs(metric, compiled):
    embeddings = np.array(
        [[[1.0, 2.0], [1.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]],
         [[1.0, 0.0], [1.0, 0.0]]], "float32"
    )
    labels = np.array([0, 1, 0])
    loss = ContrastiveLoss(metric=metric)

    def step(embeddings):
        return value_and_gradient(lambda e: loss(labels, e), embeddings)

    if compiled:
        step = compile_xla(step)
    value, (grad,) = step(embeddings)
    assert np.isfinite(to_numpy(value))
    assert np.all(np.isfinite(to_numpy(grad)))


@pytest.mark.parametrize("metric", METRICS)
def test_xla_equals_eager(metric):
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(16, 2, 3)).astype("float32")
    labels = rng.integers(0, 2, size=16)
    loss = ContrastiveLoss(margin=2.0, positive_margin=0.1, metric=metric)
    eager = to_numpy(loss(labels, embeddings))
    compiled = to_numpy(compile_xla(loss)(labels, embeddings))
    np.testing.assert_allclose(eager, compiled, rtol=1e-5)


def test_config_round_trip_keeps_every_argument():
    loss = ContrastiveLoss(
        margin=2.5, positive_margin=0.5, similar_label=1, squared=False,
        metric="cosine", reduction="sum", name="my_loss", dtype="float64",
    )
    config = loss.get_config()
    for key, value in dict(margin=2.5, positive_margin=0.5, similar_label=1,
                           squared=False, metric="cosine", reduction="sum",
                           name="my_loss").items():
        assert config[key] == value
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(restored, ContrastiveLoss)
    assert restored.get_config() == config


def siamese_model(input_dim=64, embedding_dim=8):
    encoder = keras.Sequential(
        [keras.Input((input_dim,)), keras.layers.Dense(32, activation="relu"),
         keras.layers.Dense(embedding_dim)]
    )
    a, b = keras.Input((input_dim,)), keras.Input((input_dim,))
    return keras.Model([a, b], PairDistance()([encoder(a), encoder(b)]))


def test_saved_model_with_loss_loads_without_custom_objects(tmp_path):
    model = siamese_model()
    model.compile(optimizer="adam", loss=ContrastiveLoss(margin=2.0))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = [np.random.default_rng(0).normal(size=(4, 64)).astype("float32")] * 2
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert isinstance(restored.loss, ContrastiveLoss)
    assert restored.loss.margin == 2.0


def digits_pairs(count=1024, seed=0):
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), size=count)
    by_class = [np.flatnonzero(y == c) for c in range(10)]
    second = np.where(
        rng.random(count) < 0.5,
        [rng.choice(by_class[y[i]]) for i in first],
        rng.integers(0, len(x), size=count),
    )
    labels = (y[first] != y[second]).astype("float32")  # 0 = similar
    return [x[first], x[second]], labels


def test_fit_lowers_the_loss_on_digits():
    keras.utils.set_random_seed(0)
    pairs, labels = digits_pairs()
    model = siamese_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=ContrastiveLoss())
    history = model.fit(pairs, labels, batch_size=128, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0]


@requires_tensorflow
def test_mirrored_strategy_gives_the_single_device_loss():
    import tensorflow as tf

    pairs, labels = digits_pairs(count=256)

    def one_step(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = siamese_model()
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=ContrastiveLoss())
        history = model.fit(pairs, labels, batch_size=64, epochs=1,
                            shuffle=False, verbose=0)
        return history.history["loss"][0], model.get_weights()

    single_loss, single_weights = one_step(
        tf.distribute.OneDeviceStrategy("/cpu:0")
    )
    mirrored = two_replica_strategy()
    assert mirrored.num_replicas_in_sync == 2
    mirrored_loss, mirrored_weights = one_step(mirrored)
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)
    for got, expected in zip(mirrored_weights, single_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"margin": 0.0}, r"`margin` must be greater than 0"),
            ({"margin": -1.0}, r"margin=-1.0"),
            ({"positive_margin": -0.1}, r"`positive_margin` must be at least"),
            ({"margin": 1.0, "positive_margin": 1.0},
             r"`positive_margin` must be smaller than `margin`"),
            ({"similar_label": 2}, r"`similar_label` must be 0"),
            ({"margin": float("nan")}, r"`margin` must be finite"),
        ],
    )
    def test_bad_hyperparameters(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            ContrastiveLoss(**kwargs)
        with pytest.raises(ValueError, match=message):
            contrastive_loss([0], [0.5], **kwargs)

    def test_margin_must_be_a_number(self):
        with pytest.raises(TypeError, match="`margin` must be a number"):
            ContrastiveLoss(margin="1")

    def test_labels_outside_zero_one_raise_eagerly(self):
        with pytest.raises(ValueError, match=r"must be 0 or 1.*\[2\]"):
            contrastive_loss([0, 2], [0.5, 0.5])
        with pytest.raises(ValueError, match=r"must be 0 or 1"):
            ContrastiveLoss()([0.0, 0.5], [0.5, 0.5])

    @requires_tensorflow
    def test_labels_outside_zero_one_raise_in_a_graph(self):
        import tensorflow as tf

        graph = tf.function(lambda y, d: contrastive_loss(y, d))
        with pytest.raises(tf.errors.InvalidArgumentError, match="0 or 1"):
            graph(tf.constant([0, 3]), tf.constant([0.5, 0.5]))

    def test_labels_outside_zero_one_give_nan_under_xla(self):
        result = compile_xla(lambda y, d: contrastive_loss(y, d))(
            np.array([0, 3]), np.array([0.5, 0.5], "float32")
        )
        result = to_numpy(result)
        assert result[0] == 0.25 and np.isnan(result[1])

    def test_batch_sizes_must_agree(self):
        with pytest.raises(ValueError, match="3 labels and 2 pairs"):
            contrastive_loss([0, 1, 1], [0.5, 0.5])

    @pytest.mark.parametrize(
        "shape, message",
        [((4, 3, 2), r"middle dimension 2"), ((4, 3), r"\[N, 1\]"),
         ((2, 2, 2, 2), r"\[N, 2, D\]")],
    )
    def test_bad_prediction_shapes(self, shape, message):
        with pytest.raises(ValueError, match=message):
            contrastive_loss(np.zeros(shape[0]), np.zeros(shape, "float32"))

    def test_bad_label_shape(self):
        with pytest.raises(ValueError, match=r"`y_true` must be pair labels"):
            contrastive_loss(np.zeros((2, 2)), np.zeros(2, "float32"))

    def test_unknown_metric(self):
        with pytest.raises(ValueError, match=r"Unknown `metric`.*cosine"):
            ContrastiveLoss(metric="l3")
