import keras
import numpy as np
import pytest
from conftest import compile_xla, value_and_gradient
from keras import ops

from keras_contrastive import distances

METRICS = ["euclidean", "squared_euclidean", "cosine"]


def numpy_distance(a, b, metric):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "squared_euclidean":
        return np.sum((a - b) ** 2)
    if metric == "euclidean":
        return np.sqrt(np.sum((a - b) ** 2))
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(6, 5)).astype("float32"),
            rng.normal(size=(6, 5)).astype("float32"))


@pytest.mark.parametrize("metric", METRICS)
def test_paired_rows_match_numpy_loop(rows, metric):
    a, b = rows
    expected = [numpy_distance(a[i], b[i], metric) for i in range(len(a))]
    result = ops.convert_to_numpy(distances.get(metric)(a, b))
    assert result.shape == (6,)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_matches_numpy_loop(rows, metric):
    x, y = rows[0], rows[1][:4]
    expected = [[numpy_distance(x[i], y[j], metric) for j in range(4)]
                for i in range(6)]
    result = ops.convert_to_numpy(distances.pairwise_distances(x, y, metric))
    assert result.shape == (6, 4)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_self_has_exact_zero_diagonal(rows, metric):
    x = rows[0] * 100.0  # large norms make the expansion's rounding visible
    result = ops.convert_to_numpy(distances.pairwise_distances(x, None, metric))
    assert np.all(np.diag(result) == 0.0)
    expected = [[numpy_distance(x[i], x[j], metric) for j in range(6)]
                for i in range(6)]
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-3)
    assert np.all(result >= 0.0)


def test_pairwise_with_custom_callable_broadcasts(rows):
    def manhattan(a, b):
        return ops.sum(ops.abs(a - b), axis=-1)

    x, y = rows
    result = ops.convert_to_numpy(distances.pairwise_distances(x, y, manhattan))
    expected = np.abs(x[:, None, :] - y[None, :, :]).sum(-1)
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_identical_pair_is_exactly_zero():
    a = np.array([[0.3, -1.7, 12.5, 4.0]], "float32")
    assert float(ops.convert_to_numpy(distances.euclidean(a, a))[0]) < 1e-5
    assert float(ops.convert_to_numpy(distances.cosine(a, a))[0]) < 1e-5


def test_small_distances_are_not_biased():
    a = np.zeros((3, 2), "float32")
    b = np.array([[1e-6, 0.0], [1e-4, 0.0], [1e-10, 0.0]], "float32")
    result = ops.convert_to_numpy(distances.euclidean(a, b))
    np.testing.assert_allclose(result, [1e-6, 1e-4, 1e-10], rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_gradient_is_finite_for_identical_pairs(metric, compiled):
    a = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], "float32")
    b = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], "float32")
    function = distances.get(metric)

    def loss(a, b):
        return ops.sum(function(a, b))

    def step(a, b):
        return value_and_gradient(loss, a, b)

    if compiled:
        step = compile_xla(step)
    value, (grad_a, grad_b) = step(a, b)
    for grad in (grad_a, grad_b):
        assert np.all(np.isfinite(ops.convert_to_numpy(grad)))
    if metric != "cosine":
        # the identical row contributes a zero gradient
        np.testing.assert_allclose(ops.convert_to_numpy(grad_a)[0], 0.0)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_pairwise_gradient_finite_with_duplicates(metric, compiled):
    x = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], "float32")

    def loss(x):
        return ops.sum(distances.pairwise_distances(x, metric=metric))

    def step(x):
        return value_and_gradient(loss, x)

    if compiled:
        step = compile_xla(step)
    value, (grad,) = step(x)
    assert np.isfinite(float(ops.convert_to_numpy(value)))
    assert np.all(np.isfinite(ops.convert_to_numpy(grad)))


@pytest.mark.parametrize("metric", METRICS)
def test_xla_equals_eager(rows, metric):
    a, b = rows
    function = distances.get(metric)
    eager = ops.convert_to_numpy(function(a, b))
    compiled = ops.convert_to_numpy(compile_xla(function)(a, b))
    np.testing.assert_allclose(eager, compiled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("metric", METRICS)
def test_low_precision_inputs_compute_in_float32(rows, metric, dtype):
    a, b = (ops.cast(r * 30.0, dtype) for r in rows)
    result = distances.get(metric)(a, b)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(result)))
    # float16 squares of 100-ish numbers would overflow past 65504
    pairwise = distances.pairwise_distances(a, metric=metric)
    assert keras.backend.standardize_dtype(pairwise.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(pairwise)))


def test_float64_is_kept(rows):
    if not keras.backend.standardize_dtype(
        ops.convert_to_tensor(np.zeros(1, "float64")).dtype
    ) == "float64":
        pytest.skip("this backend runs without float64")
    a, b = (r.astype("float64") for r in rows)
    result = distances.euclidean(a, b)
    assert keras.backend.standardize_dtype(result.dtype) == "float64"


def test_get_accepts_names_and_callables():
    assert distances.get("cosine") is distances.cosine

    def custom(a, b):
        return ops.sum(a * b, axis=-1)

    assert distances.get(custom) is custom
    config = distances.serialize(distances.euclidean)
    assert config == "euclidean"
    assert distances.get(config) is distances.euclidean


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError, match="manhattan.*cosine.*euclidean"):
        distances.get("manhattan")
    with pytest.raises(TypeError, match="metric=3"):
        distances.get(3)


def test_shape_errors_name_the_arguments(rows):
    a, b = rows
    with pytest.raises(ValueError, match="same shape"):
        distances.euclidean(a, b[:, :3])
    with pytest.raises(ValueError, match="same embedding size"):
        distances.pairwise_distances(a, b[:, :3])
    with pytest.raises(ValueError, match="rank-2"):
        distances.pairwise_distances(a[0])
