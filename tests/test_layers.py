import keras
import numpy as np
import pytest
from conftest import compile_xla
from keras import ops

from keras_contrastive import distances
from keras_contrastive.layers import PairDistance, ProjectionHead


@keras.saving.register_keras_serializable(package="tests")
def manhattan(a, b):
    return ops.sum(ops.abs(a - b), axis=-1)


@pytest.fixture
def pair():
    rng = np.random.default_rng(1)
    return (rng.normal(size=(5, 4)).astype("float32"),
            rng.normal(size=(5, 4)).astype("float32"))


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_pair_distance_returns_column_of_distances(pair, metric):
    a, b = pair
    result = ops.convert_to_numpy(PairDistance(metric)([a, b]))
    assert result.shape == (5, 1)
    expected = ops.convert_to_numpy(distances.get(metric)(a, b))
    np.testing.assert_allclose(result[:, 0], expected, rtol=1e-6)


def test_pair_distance_in_functional_model(pair):
    inputs = [keras.Input((4,)), keras.Input((4,))]
    encoder = keras.layers.Dense(3)
    output = PairDistance()([encoder(inputs[0]), encoder(inputs[1])])
    assert tuple(output.shape) == (None, 1)
    model = keras.Model(inputs, output)
    assert model.predict(list(pair), verbose=0).shape == (5, 1)


@pytest.mark.parametrize("metric", ["cosine", manhattan])
def test_pair_distance_config_round_trip(pair, metric):
    layer = PairDistance(metric, name="distance")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(restored, PairDistance)
    assert restored.get_config() == layer.get_config()
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(list(pair))),
        ops.convert_to_numpy(layer(list(pair))),
    )


def test_pair_distance_computes_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    layer = PairDistance()
    # |a - b|^2 = 4 * 200^2 = 160000 overflows float16 (max 65504); the
    # distance itself (400) does not.
    a = ops.cast(np.full((2, 4), 100.0), "float16")
    b = ops.cast(np.full((2, 4), -100.0), "float16")
    result = layer([a, b])
    assert keras.backend.standardize_dtype(result.dtype) == "float16"
    np.testing.assert_allclose(ops.convert_to_numpy(result), 400.0)


def test_pair_distance_under_xla(pair):
    layer = PairDistance()
    eager = ops.convert_to_numpy(layer(list(pair)))
    compiled = ops.convert_to_numpy(compile_xla(lambda a, b: layer([a, b]))(
        *pair))
    np.testing.assert_allclose(eager, compiled, rtol=1e-6)


def test_pair_distance_rejects_a_single_tensor(pair):
    with pytest.raises(ValueError, match=r"list of two tensors \[a, b\]"):
        PairDistance()(pair[0])


def test_pair_distance_rejects_unknown_metric():
    with pytest.raises(ValueError, match="Unknown `metric`"):
        PairDistance("hamming")


def test_saved_model_with_pair_distance_loads_without_custom_objects(
    tmp_path, pair
):
    inputs = [keras.Input((4,)), keras.Input((4,))]
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    output = PairDistance("cosine")([encoder(inputs[0]), encoder(inputs[1])])
    model = keras.Model(inputs, output)
    path = tmp_path / "siamese.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored.predict(list(pair), verbose=0),
        model.predict(list(pair), verbose=0),
        rtol=1e-6,
    )


def test_projection_head_shapes_and_normalisation():
    keras.utils.set_random_seed(0)
    # tanh, not relu: with unseeded relu units a row can come out all zero,
    # and a zero row has no unit norm.
    head = ProjectionHead(output_dim=6, hidden_units=(8, 7), activation="tanh")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    y = ops.convert_to_numpy(head(x))
    assert y.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    assert len(head.trainable_weights) == 6
    plain = ProjectionHead(output_dim=2, hidden_units=(), normalize=False)
    assert ops.convert_to_numpy(plain(x)).shape == (3, 2)


def test_projection_head_config_round_trip():
    head = ProjectionHead(
        output_dim=6, hidden_units=(8,), activation="gelu", normalize=False
    )
    restored = ProjectionHead.from_config(head.get_config())
    assert restored.get_config() == head.get_config()
    assert restored.hidden_units == (8,)
    assert restored.normalize is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_dim": 0}, "output_dim"),
        ({"hidden_units": (4, -1)}, "hidden_units"),
    ],
)
def test_projection_head_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProjectionHead(**kwargs)
