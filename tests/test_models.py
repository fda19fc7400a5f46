"""Tests for keras_contrastive.models: encoders and SiameseModel."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_contrastive.layers import PairDistance
from keras_contrastive.losses import ContrastiveLoss
from keras_contrastive.models import SiameseModel, build_encoder


@pytest.mark.parametrize(
    "shape, maximum",
    [((8, 8), 16), ((28, 28), 255), ((32, 32, 3), 255), ((105, 105), 255)],
)
def test_cnn_encoder_sizes_take_raw_arrays(shape, maximum):
    encoder = build_encoder(shape, embedding_dim=16, rescaling=1 / maximum)
    x = np.random.default_rng(0).integers(0, maximum + 1, (2,) + shape)
    out = encoder.predict(x.astype("uint8"), verbose=0)
    assert out.shape == (2, 16)
    assert np.all(np.isfinite(out))


def test_cnn_downsampling_adapts_to_size():
    def pools(shape):
        model = build_encoder(shape)
        return sum(isinstance(layer, keras.layers.MaxPooling2D)
                   for layer in model.layers)

    assert [pools((s, s)) for s in (8, 28, 32, 105)] == [1, 2, 3, 4]


def _pooled_features(model):
    layer = model.get_layer("pool")
    return type(layer).__name__, layer.output.shape[-1]


def test_pooling_auto_flattens_small_maps_and_averages_larger_ones():
    # 8x8 ends in a 4x4 map of 16 channels (8, doubled): flattened.
    small = build_encoder((8, 8), base_filters=8)
    assert _pooled_features(small) == ("Flatten", 4 * 4 * 16)
    # 28x28 ends in 7x7 (49 positions): averaged over them, 32 channels.
    large = build_encoder((28, 28), base_filters=8)
    assert _pooled_features(large) == ("GlobalAveragePooling2D", 32)
    forced = build_encoder((8, 8), base_filters=8, pooling="average")
    assert _pooled_features(forced) == ("GlobalAveragePooling2D", 16)
    flat = build_encoder((28, 28), base_filters=8, pooling="flatten")
    assert _pooled_features(flat) == ("Flatten", 7 * 7 * 32)


def test_pooling_auto_averages_a_backbone_map():
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, strides=4)],
        name="backbone",
    )
    encoder = build_encoder((8, 8, 3), architecture=backbone)
    assert _pooled_features(encoder) == ("GlobalAveragePooling2D", 4)
    flat = build_encoder((8, 8, 3), architecture=backbone, pooling="flatten")
    assert _pooled_features(flat) == ("Flatten", 2 * 2 * 4)


def test_mlp_encoder_and_normalize():
    encoder = build_encoder((64,), architecture="mlp", embedding_dim=8,
                            normalize=True)
    out = encoder.predict(np.random.rand(3, 64), verbose=0)
    assert out.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_rescaling_forms():
    x = np.full((1, 4), 10.0)
    scaled = build_encoder((4,), architecture="mlp", rescaling=(0.5, 1.0))
    assert scaled.get_layer("rescaling").scale == 0.5
    normalization = keras.layers.Normalization(axis=None)
    normalization.adapt(np.array([0.0, 20.0]))
    adapted = build_encoder((4,), architecture="mlp", rescaling=normalization)
    inner = keras.Model(adapted.input, adapted.layers[1].output)
    np.testing.assert_allclose(inner.predict(x, verbose=0), 0.0, atol=1e-6)


def test_backbone_with_projection():
    backbone = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, strides=2)],
        name="backbone",
    )
    encoder = build_encoder((16, 16), architecture=backbone, embedding_dim=5)
    assert encoder.get_layer("backbone") is backbone
    assert encoder.predict(np.zeros((2, 16, 16)), verbose=0).shape == (2, 5)


def test_backbone_shape_mismatch_is_clear():
    backbone = keras.Sequential([keras.Input((20, 20, 3)),
                                 keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="backbone"):
        build_encoder((16, 16, 3), architecture=backbone)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_shape=(0, 8)), ValueError, "input_shape"),
        (dict(input_shape="28x28"), ValueError, "input_shape"),
        (dict(input_shape=(8, 8), embedding_dim=0), ValueError,
         "embedding_dim"),
        (dict(input_shape=(8, 8), architecture="resnet"), ValueError,
         "architecture"),
        (dict(input_shape=(8, 8), architecture=3), TypeError, "architecture"),
        (dict(input_shape=(64,)), ValueError, "input_shape"),
        (dict(input_shape=(8, 8), rescaling="255"), TypeError, "rescaling"),
        (dict(input_shape=(8, 8), pooling="max"), ValueError, "pooling"),
    ],
)
def test_build_encoder_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_encoder(**kwargs)


def _tiny_model(metric="euclidean"):
    encoder = build_encoder((8, 8), embedding_dim=6, rescaling=1 / 16,
                            base_filters=4)
    return SiameseModel(encoder, metric=metric)


def test_siamese_outputs_distances_and_embeds():
    model = _tiny_model()
    x = np.random.default_rng(0).integers(0, 17, (5, 8, 8))
    distance = model.predict([x, x[::-1]], verbose=0)
    assert distance.shape == (5, 1)
    embeddings = model.embed(x, batch_size=2)
    assert isinstance(embeddings, np.ndarray) and embeddings.shape == (5, 6)
    expected = np.linalg.norm(embeddings - embeddings[::-1], axis=1)
    np.testing.assert_allclose(distance[:, 0], expected, rtol=1e-4,
                               atol=1e-5)
    assert isinstance(model.get_layer("distance"), PairDistance)
    assert model.encoder.output_shape == (None, 6)


def test_compile_auto_picks_contrastive_loss():
    model = _tiny_model()
    model.compile()
    assert isinstance(model.loss, ContrastiveLoss)


def _json(config):
    # Configs compare equal up to tuples becoming lists in JSON.
    return json.loads(json.dumps(config))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_save_load_round_trip(tmp_path, metric):
    model = _tiny_model(metric)
    model.compile(optimizer="adam")
    x = np.random.default_rng(1).integers(0, 17, (6, 8, 8))
    model.fit([x, x[::-1]], np.array([0, 1] * 3), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SiameseModel)
    assert loaded.metric == metric
    assert _json(loaded.get_config()) == _json(model.get_config())
    assert isinstance(loaded.loss, ContrastiveLoss)
    np.testing.assert_array_equal(
        loaded.predict([x, x[::-1]], verbose=0),
        model.predict([x, x[::-1]], verbose=0),
    )
    np.testing.assert_array_equal(loaded.embed(x), model.embed(x))


def test_from_config_round_trip():
    model = _tiny_model("cosine")
    clone = SiameseModel.from_config(model.get_config())
    assert isinstance(clone, SiameseModel) and clone.metric == "cosine"
    assert _json(clone.get_config()) == _json(model.get_config())


def test_loads_in_a_fresh_process_without_custom_objects(tmp_path):
    model = _tiny_model()
    x = np.random.default_rng(2).integers(0, 17, (3, 8, 8))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict([x, x[::-1]], verbose=0))
    code = (
        "import sys, numpy as np, keras, keras_contrastive.models as m; "
        f"d = {str(tmp_path)!r}; "
        "model = keras.saving.load_model(d + '/model.keras'); "
        "x = np.load(d + '/x.npy'); "
        "assert isinstance(model, m.SiameseModel), type(model); "
        "np.testing.assert_array_equal("
        "model.predict([x, x[::-1]], verbose=0), np.load(d + '/y.npy')); "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code],
                            capture_output=True, text=True)
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_siamese_bad_input():
    with pytest.raises(TypeError, match="encoder"):
        SiameseModel(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="metric"):
        SiameseModel(build_encoder((8, 8)), metric="manhattan")
    model = _tiny_model()
    with pytest.raises(ValueError, match="x.shape"):
        model.embed(np.zeros((2, 7, 7)))
    with pytest.raises(ValueError, match="batch_size"):
        model.embed(np.zeros((2, 8, 8)), batch_size=0)


def _digit_pairs(n_pairs, seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images.astype("float32"), digits.target
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(10)]
    first = rng.integers(0, len(x), n_pairs)
    similar = rng.random(n_pairs) < 0.5
    other_class = (y[first] + rng.integers(1, 10, n_pairs)) % 10
    partner_class = np.where(similar, y[first], other_class)
    second = np.array([rng.choice(by_class[c]) for c in partner_class])
    return x[first], x[second], (~similar).astype("float32")  # 0 = similar


def test_fit_on_digit_pairs_lowers_the_loss():
    pytest.importorskip("sklearn")
    keras.utils.set_random_seed(0)
    a, b, labels = _digit_pairs(1024, seed=0)
    model = SiameseModel(build_encoder((8, 8), embedding_dim=16,
                                       architecture="mlp", rescaling=1 / 16))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit([a, b], labels, batch_size=64, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
