"""BatchContrastiveLoss and NTXentLoss: numpy loops, gradients, XLA, mixed
precision, saving, MirroredStrategy, training."""


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
from test_mining import _numpy_distances, _reference_weights

from keras_contrastive import mining
from keras_contrastive.losses import (
    BatchContrastiveLoss,
    NTXentLoss,
    batch_contrastive_loss,
    nt_xent_loss,
)

METRICS = ["euclidean", "squared_euclidean", "cosine"]
MINERS = sorted(mining.MINERS)
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
RNG = np.random.default_rng(0)
X = (RNG.normal(size=(len(LABELS), 4)) * 0.5).astype("float32")
UPSTREAM = RNG.uniform(0.5, 1.5, size=len(LABELS)).astype("float32")


def _options(miner, metric, **extra):
    options = dict(metric=metric, miner=miner, margin=1.5, **extra)
    if metric == "squared_euclidean":
        options.update(margin=3.0, pos_threshold=0.5, neg_threshold=2.0)
    if metric == "cosine":
        options.update(margin=0.8, pos_threshold=0.1, neg_threshold=0.6)
    return options


def _reference_weights_for(x, labels, options):
    d = _numpy_distances(x.astype("float64"), options["metric"])
    return d, _reference_weights(
        d, labels, options["miner"],
        pos_threshold=options.get("pos_threshold", 0.2),
        neg_threshold=options.get("neg_threshold", 0.8),
        margin=options["margin"],
    )


def _reference_loss(x, labels, options):
    """Per-anchor values by an explicit loop over all pairs."""
    d, w = _reference_weights_for(x, labels, options)
    power = 2 if options.get("squared", True) else 1
    positive_margin = options.get("positive_margin", 0.0)
    n = len(labels)
    sums, counts = np.zeros((2, n)), np.zeros(2)
    for i in range(n):
        for j in range(n):
            if not w[i, j]:
                continue
            if labels[i] == labels[j]:
                sums[0, i] += max(0.0, d[i, j] - positive_margin) ** power
                counts[0] += 1
            else:
                sums[1, i] += max(0.0, options["margin"] - d[i, j]) ** power
                counts[1] += 1
    terms = [s / c if c else 0 * s for s, c in zip(sums, counts)]
    return n * (terms[0] + terms[1])


def _plain_loss(x, labels, options):
    """The same loss in plain keras.ops (broadcast differences, autodiff),
    with the mined weights of the numpy loop on `X` as constants."""
    _, w = _reference_weights_for(X, labels, options)
    same = labels[:, None] == labels[None, :]
    count_positive = max((w * same).sum(), 1)
    count_negative = max((w * ~same).sum(), 1)
    scale = len(labels) * np.where(
        same, w / count_positive, w / count_negative
    ).astype("float32")
    metric = options["metric"]
    if metric == "cosine":
        unit = x / ops.sqrt(ops.sum(x * x, axis=1, keepdims=True))
        d = 1.0 - ops.matmul(unit, ops.transpose(unit))
    else:
        diff = ops.expand_dims(x, 1) - ops.expand_dims(x, 0)
        s = ops.sum(diff * diff, axis=-1)
        if metric == "euclidean":
            positive = s > 0
            d = ops.where(positive, ops.sqrt(ops.where(positive, s, 1.0)), 0)
        else:
            d = s
    power = 2 if options.get("squared", True) else 1
    pair = ops.where(
        same,
        ops.relu(d - options.get("positive_margin", 0.0)) ** power,
        ops.relu(options["margin"] - d) ** power,
    )
    return ops.sum(scale * pair, axis=1)


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("metric", METRICS)
def test_values_and_gradients_match_numpy_loop(miner, metric):
    options = _options(miner, metric)
    got = batch_contrastive_loss(LABELS, X, **options)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), _reference_loss(X, LABELS, options),
        rtol=2e-5, atol=2e-5,
    )

    def weighted(loss_function):
        return lambda x: ops.sum(loss_function(x) * UPSTREAM)

    _, (grad,) = value_and_gradient(
        weighted(lambda x: batch_contrastive_loss(LABELS, x, **options)), X
    )
    _, (expected,) = value_and_gradient(
        weighted(lambda x: _plain_loss(x, LABELS, options)), X
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(grad), ops.convert_to_numpy(expected),
        rtol=1e-4, atol=1e-5,
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("squared", [True, False])
def test_custom_gradient_of_all_pairs_equals_autodiff(metric, squared):
    # miner="all" with a built-in metric takes the hand-written gradient; a
    # callable miner selecting the same pairs takes plain autodiff.
    options = dict(metric=metric, squared=squared, margin=2.0,
                   positive_margin=0.0 if squared else 0.3)

    def as_callable(d, positive, negative):
        return mining.all_pairs(d, positive, negative)

    def weighted(miner):
        return lambda x: ops.sum(
            batch_contrastive_loss(LABELS, x, miner=miner, **options)
            * UPSTREAM
        )

    value, (grad,) = value_and_gradient(weighted("all"), X)
    expected_value, (expected,) = value_and_gradient(
        weighted(as_callable), X
    )
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(grad), ops.convert_to_numpy(expected),
        rtol=1e-4, atol=1e-5,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(batch_contrastive_loss(LABELS, X, **options)),
        _reference_loss(X, LABELS, dict(options, miner="all")),
        rtol=2e-5, atol=2e-5,
    )


def test_positive_margin_and_unsquared_hinge():
    for miner in MINERS:
        options = dict(miner=miner, margin=2.0, positive_margin=0.5,
                       squared=False)
        np.testing.assert_allclose(
            ops.convert_to_numpy(batch_contrastive_loss(LABELS, X, **options)),
            _reference_loss(X, LABELS, dict(options, metric="euclidean")),
            rtol=2e-5, atol=2e-5,
        )


def _duplicates():
    x = X.copy()
    x[1] = x[0]  # identical positive pair
    x[3] = x[0]  # identical negative pair
    x[11] = 0.0  # a zero vector
    return x


@pytest.mark.parametrize("miner", MINERS)
def test_finite_gradients_with_duplicate_embeddings(miner):
    def every_metric(x):
        return [
            value_and_gradient(
                lambda x: ops.mean(batch_contrastive_loss(
                    LABELS, x, metric=metric, miner=miner)),
                x,
            )
            for metric in METRICS
        ]

    x = _duplicates()
    for results in (every_metric(x), compile_xla(every_metric)(x)):
        for metric, (value, (grad,)) in zip(METRICS, results):
            assert np.isfinite(float(value)), metric
            assert np.all(np.isfinite(ops.convert_to_numpy(grad))), metric


def test_nt_xent_finite_gradients_with_duplicates_and_small_temperature():
    x = _duplicates()

    def loss(x):
        return ops.mean(nt_xent_loss(LABELS, x, temperature=0.01))

    for value, (grad,) in (
        value_and_gradient(loss, x),
        compile_xla(lambda x: value_and_gradient(loss, x))(x),
    ):
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(ops.convert_to_numpy(grad)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_give_finite_float32_losses(dtype):
    x = ops.cast(_duplicates() * 30.0, dtype)  # far beyond the margin
    for miner in MINERS:
        got = batch_contrastive_loss(LABELS, x, miner=miner)
        assert keras.backend.standardize_dtype(got.dtype) == "float32"
        assert np.all(np.isfinite(ops.convert_to_numpy(got)))
    got = nt_xent_loss(LABELS, x, temperature=0.05)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(got)))
    reference = nt_xent_loss(LABELS, ops.cast(x, "float32"), temperature=0.05)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(reference), rtol=1e-5
    )


@pytest.mark.parametrize("miner", MINERS + ["nt_xent"])
def test_xla_equals_eager(miner):
    def run(labels, x):
        if miner == "nt_xent":
            return nt_xent_loss(labels, x, temperature=0.2)
        return batch_contrastive_loss(labels, x, miner=miner)

    np.testing.assert_allclose(
        ops.convert_to_numpy(compile_xla(run)(LABELS, X)),
        ops.convert_to_numpy(run(LABELS, X)),
        rtol=1e-5, atol=1e-6,
    )


def test_anchors_without_pairs_and_batches_without_positives():
    labels = np.array([0, 0, 1])  # anchor 2 has no positive
    x = X[:3]
    got = ops.convert_to_numpy(
        batch_contrastive_loss(labels, x, miner="batch_hard")
    )
    assert got[2] == 0.0 and got[0] > 0.0
    distinct = np.arange(len(LABELS))
    for miner in ("batch_hard", "semi_hard"):
        value, (grad,) = value_and_gradient(
            lambda x: ops.sum(batch_contrastive_loss(distinct, x,
                                                     miner=miner)), X
        )
        assert float(value) == 0.0
        assert np.all(ops.convert_to_numpy(grad) == 0.0)
    # miner "all": only the negative term, finite, no NaN from 0 / 0.
    np.testing.assert_allclose(
        ops.convert_to_numpy(batch_contrastive_loss(distinct, X)),
        _reference_loss(X, distinct, dict(metric="euclidean", miner="all",
                                          margin=1.0)),
        rtol=2e-5,
    )
    assert np.all(ops.convert_to_numpy(nt_xent_loss(distinct, X)) == 0.0)


def _reference_nt_xent(labels, x, temperature):
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = z @ z.T / temperature
    out = np.zeros(len(labels))
    for i in range(len(labels)):
        others = [a for a in range(len(labels)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        log_denominator = np.log(np.sum(np.exp(s[i, others])))
        if positives:
            out[i] = -np.mean([s[i, p] - log_denominator for p in positives])
    return out


@pytest.mark.parametrize("labels", [
    np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]),  # SimCLR: 2 views each
    LABELS,  # SupCon: up to 3 per class, one singleton
])
def test_nt_xent_matches_numpy_loop_and_plain_gradient(labels):
    np.testing.assert_allclose(
        ops.convert_to_numpy(nt_xent_loss(labels, X, temperature=0.3)),
        _reference_nt_xent(labels, X.astype("float64"), 0.3),
        rtol=1e-5, atol=1e-6,
    )

    def plain(x):
        z = x / ops.sqrt(ops.sum(x * x, axis=1, keepdims=True))
        logits = ops.matmul(z, ops.transpose(z)) / 0.3
        eye = np.eye(len(labels), dtype=bool)
        log_probability = logits - ops.logsumexp(
            ops.where(eye, -np.inf, logits), axis=1, keepdims=True
        )
        positive = ((labels[:, None] == labels[None, :]) & ~eye)
        count = positive.sum(1)
        per_anchor = -ops.sum(
            ops.where(positive, log_probability, 0.0), axis=1
        ) / np.maximum(count, 1)
        return ops.sum(per_anchor * UPSTREAM)

    _, (grad,) = value_and_gradient(
        lambda x: ops.sum(nt_xent_loss(labels, x, temperature=0.3)
                          * UPSTREAM), X
    )
    _, (expected,) = value_and_gradient(plain, X)
    np.testing.assert_allclose(
        ops.convert_to_numpy(grad), ops.convert_to_numpy(expected),
        rtol=1e-4, atol=1e-5,
    )


def test_loss_classes_reduce_per_anchor_values():
    loss = BatchContrastiveLoss(miner="semi_hard", margin=1.2)
    per_anchor = batch_contrastive_loss(LABELS, X, miner="semi_hard",
                                        margin=1.2)
    np.testing.assert_allclose(
        float(loss(LABELS, X)), float(ops.mean(per_anchor)), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(loss(LABELS, X, sample_weight=UPSTREAM)),
        float(ops.mean(per_anchor * UPSTREAM)), rtol=1e-6,
    )
    np.testing.assert_allclose(
        float(NTXentLoss(temperature=0.5)(LABELS[:, None], X)),
        float(ops.mean(nt_xent_loss(LABELS, X, temperature=0.5))),
        rtol=1e-6,
    )


def test_configs_round_trip_every_argument():
    loss = BatchContrastiveLoss(
        margin=2.0, positive_margin=0.5, metric="cosine", miner="pair_margin",
        squared=False, cross_replica=True, pos_threshold=0.3,
        neg_threshold=0.7, reduction="sum", name="mined", dtype="float64",
    )
    config = loss.get_config()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is BatchContrastiveLoss
    assert restored.get_config() == config
    for key, value in dict(margin=2.0, positive_margin=0.5, metric="cosine",
                           miner="pair_margin", squared=False,
                           cross_replica=True, pos_threshold=0.3,
                           neg_threshold=0.7, reduction="sum",
                           name="mined").items():
        assert config[key] == value, key
    ntxent = NTXentLoss(temperature=0.2, cross_replica=True, name="simclr")
    restored = keras.losses.deserialize(keras.losses.serialize(ntxent))
    assert type(restored) is NTXentLoss
    assert restored.get_config() == ntxent.get_config()
    assert restored.temperature == 0.2 and restored.cross_replica


@keras.saving.register_keras_serializable(package="test_batch_losses")
def positives_only(distances, positive_mask, negative_mask):
    return ops.cast(positive_mask, distances.dtype)


def test_custom_miner_round_trips():
    loss = BatchContrastiveLoss(miner=positives_only)
    restored = BatchContrastiveLoss.from_config(loss.get_config())
    np.testing.assert_allclose(float(restored(LABELS, X)),
                               float(loss(LABELS, X)), rtol=1e-6)
    # Same pairs as pair_margin with thresholds 0: every positive (all at
    # D > 0 here), no negative.
    np.testing.assert_allclose(
        ops.convert_to_numpy(batch_contrastive_loss(LABELS, X,
                                                    miner=positives_only)),
        ops.convert_to_numpy(batch_contrastive_loss(
            LABELS, X, miner="pair_margin", pos_threshold=0.0,
            neg_threshold=0.0)),
        rtol=1e-6,
    )


def test_saved_model_keeps_the_loss(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd",
                  loss=BatchContrastiveLoss(miner="batch_hard", margin=0.7))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.loss, BatchContrastiveLoss)
    assert restored.loss.margin == 0.7 and restored.loss.miner == "batch_hard"


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="Unknown `miner`: 'hard'"):
        batch_contrastive_loss(LABELS, X, miner="hard")
    with pytest.raises(ValueError, match="Unknown `metric`: 'l1'"):
        BatchContrastiveLoss(metric="l1")
    with pytest.raises(ValueError, match=r"embeddings.shape=\(12,\)"):
        batch_contrastive_loss(LABELS, X[:, 0])
    with pytest.raises(ValueError, match=r"embeddings.shape=\(12, 2, 2\)"):
        nt_xent_loss(LABELS, X.reshape(12, 2, 2))
    with pytest.raises(ValueError, match="11 labels for 12 embeddings"):
        batch_contrastive_loss(LABELS[:11], X)
    with pytest.raises(ValueError, match="temperature=0"):
        NTXentLoss(temperature=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        nt_xent_loss(LABELS, X, temperature=-1.0)
    with pytest.raises(ValueError, match="pos_threshold=0.9"):
        BatchContrastiveLoss(miner="pair_margin", pos_threshold=0.9,
                             neg_threshold=0.1)
    with pytest.raises(ValueError, match="positive_margin"):
        batch_contrastive_loss(LABELS, X, margin=0.5, positive_margin=0.5)
    with pytest.raises(TypeError, match="miner=5"):
        BatchContrastiveLoss(miner=5)


def test_cross_replica_outside_a_strategy_changes_nothing():
    for miner in MINERS:
        np.testing.assert_array_equal(
            ops.convert_to_numpy(batch_contrastive_loss(
                LABELS, X, miner=miner, cross_replica=True)),
            ops.convert_to_numpy(batch_contrastive_loss(LABELS, X,
                                                        miner=miner)),
        )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(nt_xent_loss(LABELS, X, cross_replica=True)),
        ops.convert_to_numpy(nt_xent_loss(LABELS, X)),
    )


# TensorFlow only: MirroredStrategy over the 2 logical CPUs, model.fit.

GLOBAL_LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 5])
GLOBAL_X = RNG.normal(size=(16, 6)).astype("float32")
WEIGHTS = (RNG.normal(size=(6, 3)) * 0.6).astype("float32")
CASES = {
    **{miner: dict(miner=miner, margin=1.5) for miner in MINERS},
    "nt_xent": None,
}


def _loss(case, cross_replica):
    if CASES[case] is None:
        return NTXentLoss(temperature=0.3, cross_replica=cross_replica)
    return BatchContrastiveLoss(cross_replica=cross_replica, **CASES[case])


def _value_and_weight_gradient(loss, x, labels):
    import tensorflow as tf

    weights = tf.constant(WEIGHTS)
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = loss(labels, tf.matmul(x, weights))
    return value, tape.gradient(value, weights)


def _two_replicas():
    return two_replica_strategy()


def _on_two_replicas(loss):
    """Summed loss and weight gradient of a 2-replica MirroredStrategy step
    (Keras scales each replica's loss by 1/2; the strategy sums)."""
    import tensorflow as tf

    strategy = _two_replicas()

    def shard(values):
        return strategy.experimental_distribute_values_from_function(
            lambda context: values[8 * context.replica_id_in_sync_group:][:8]
        )

    @tf.function
    def step(x, labels):
        value, gradient = strategy.run(
            _value_and_weight_gradient, args=(loss, x, labels)
        )
        return (strategy.reduce("SUM", value, axis=None),
                strategy.reduce("SUM", gradient, axis=None))

    return step(shard(GLOBAL_X), shard(GLOBAL_LABELS))


@requires_tensorflow
@pytest.mark.parametrize("case", sorted(CASES))
def test_cross_replica_on_two_replicas_equals_one_device(case):
    value, gradient = _on_two_replicas(_loss(case, True))
    expected_value, expected_gradient = _value_and_weight_gradient(
        _loss(case, False), GLOBAL_X, GLOBAL_LABELS
    )
    np.testing.assert_allclose(float(value), float(expected_value),
                               rtol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(),
                               rtol=1e-4, atol=1e-5)


@requires_tensorflow
@pytest.mark.parametrize("case", ["all", "batch_hard", "nt_xent"])
def test_local_negatives_on_two_replicas_equal_per_replica_losses(case):
    value, gradient = _on_two_replicas(_loss(case, False))
    halves = [
        _value_and_weight_gradient(_loss(case, False), GLOBAL_X[s],
                                   GLOBAL_LABELS[s])
        for s in (slice(0, 8), slice(8, 16))
    ]
    np.testing.assert_allclose(
        float(value), np.mean([float(v) for v, _ in halves]), rtol=1e-5
    )
    np.testing.assert_allclose(
        gradient.numpy(), np.mean([g.numpy() for _, g in halves], axis=0),
        rtol=1e-4, atol=1e-5,
    )


@requires_tensorflow
def test_cross_replica_names_a_strategy_that_cannot_all_gather(monkeypatch):
    import tensorflow as tf

    strategy = _two_replicas()
    monkeypatch.setattr(
        type(strategy.extended), "_gather_to_implementation",
        tf.distribute.StrategyExtended._gather_to_implementation,
    )
    loss = BatchContrastiveLoss(cross_replica=True)
    with pytest.raises(ValueError, match="MirroredStrategy, which cannot"):
        strategy.run(tf.function(lambda x: loss(GLOBAL_LABELS[:8], x)),
                     args=(GLOBAL_X[:8],))


@requires_tensorflow
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    for loss in [BatchContrastiveLoss(miner=m) for m in MINERS] + [
            NTXentLoss()]:
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None, 4], tf.float32)])
        def run(labels, x):
            return loss(labels, x)

        np.testing.assert_allclose(
            float(run(LABELS.astype("float32"), X)), float(loss(LABELS, X)),
            rtol=1e-5,
        )


def _clusters(classes=8, per_class=24, dimension=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dimension)) * 2.0
    y = np.repeat(np.arange(classes), per_class)
    x = centers[y] + rng.normal(size=(len(y), dimension))
    return x.astype("float32"), y


@requires_tensorflow
@pytest.mark.parametrize("miner", ["all", "batch_hard"])
def test_fit_on_class_balanced_batches_lowers_the_loss(miner):
    from keras_contrastive.data import class_balanced_dataset

    keras.utils.set_random_seed(0)
    x, y = _clusters()
    dataset = class_balanced_dataset(x, y, classes_per_batch=4,
                                     examples_per_class=4, seed=0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16,
                              activation="relu"), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=BatchContrastiveLoss(miner=miner, margin=1.0))
    history = model.fit(dataset, epochs=4, steps_per_epoch=15, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses


@requires_tensorflow
def test_nt_xent_trains_on_two_noisy_views():
    import tensorflow as tf

    from keras_contrastive.data import augmented_views

    keras.utils.set_random_seed(0)
    x, _ = _clusters(classes=32, per_class=4)
    batches = tf.data.Dataset.from_tensor_slices(x).shuffle(128, seed=0)
    batches = batches.batch(16, drop_remainder=True).repeat()

    def augment(images, seed):
        return images + 0.3 * tf.random.stateless_normal(tf.shape(images),
                                                         seed)

    views = augmented_views(batches, augment, seed=0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32,
                              activation="relu"), keras.layers.Dense(8)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=NTXentLoss(temperature=0.2))
    history = model.fit(views, epochs=4, steps_per_epoch=15, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
