"""Tests for keras_contrastive.visualization: figures and PNG files."""

import builtins
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from keras_contrastive.visualization import (  # noqa: E402
    plot_distance_histogram,
    plot_embeddings,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_distance_histogram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    distances = rng.normal(0.4 + labels, 0.2).clip(0)
    path = tmp_path / "distances.png"
    figure = plot_distance_histogram(distances, labels, threshold=0.9,
                                     margin=1.0, path=path)
    assert isinstance(figure, Figure)
    assert _is_png(path)
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert any("similar pairs" in t for t in legend)
    assert any("threshold" in t for t in legend)
    assert any("margin" in t for t in legend)


def test_distance_histogram_similar_label_one(tmp_path):
    figure = plot_distance_histogram([0.1, 0.2, 0.9, 1.0], [1, 1, 0, 0],
                                     similar_label=1)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["similar pairs (2)", "dissimilar pairs (2)"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(pair_labels=[0, 3]), ValueError, "pair_labels"),
        (dict(pair_labels=[0]), ValueError, "same length"),
        (dict(pair_labels=[0, 1], threshold="0.5"), TypeError, "threshold"),
        (dict(pair_labels=[0, 1], bins=0), ValueError, "bins"),
    ],
)
def test_distance_histogram_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_distance_histogram([0.1, 0.5], **kwargs)


def test_embeddings_pca_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    embeddings = rng.normal(size=(300, 16)) + labels[:, None] * 3
    path = tmp_path / "embeddings.png"
    figure = plot_embeddings(embeddings, labels, path=path)
    assert isinstance(figure, Figure) and _is_png(path)
    points = figure.axes[0].collections[0].get_offsets()
    assert points.shape == (300, 2)


def test_pca_matches_sklearn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    from keras_contrastive.visualization import _pca_2d

    x = np.random.default_rng(2).normal(size=(50, 6)) * np.arange(1, 7)
    ours = _pca_2d(x)
    theirs = decomposition.PCA(2).fit_transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)


def test_embeddings_many_classes_and_subset(tmp_path):
    embeddings = np.random.default_rng(3).normal(size=(400, 4))
    figure = plot_embeddings(embeddings, np.arange(400) % 40, max_points=100,
                             path=tmp_path / "many.png")
    assert figure.axes[0].collections[0].get_offsets().shape == (100, 2)
    assert _is_png(tmp_path / "many.png")


def test_embeddings_tsne(tmp_path):
    pytest.importorskip("sklearn")
    embeddings = np.random.default_rng(4).normal(size=(60, 5))
    figure = plot_embeddings(embeddings, np.arange(60) % 3, method="tsne",
                             path=tmp_path / "tsne.png")
    assert "t-SNE" in figure.axes[0].get_title()
    assert _is_png(tmp_path / "tsne.png")


def test_tsne_without_sklearn_is_a_clear_import_error(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="scikit-learn"):
        plot_embeddings(np.zeros((5, 3)), [0, 1, 0, 1, 0], method="tsne")


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.zeros(5), [0] * 5), {}, "embeddings"),
        ((np.zeros((5, 2)), [0] * 4), {}, "labels"),
        ((np.zeros((5, 2)), [0] * 5), dict(method="umap"), "method"),
        ((np.zeros((5, 2)), [0] * 5), dict(max_points=1), "max_points"),
    ],
)
def test_embeddings_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_embeddings(*args, **kwargs)


def test_headless_without_display(tmp_path):
    code = (
        "import numpy as np; "
        "from keras_contrastive.visualization import plot_embeddings; "
        "figure = plot_embeddings(np.random.rand(10, 3), np.arange(10) % 2, "
        f"path={str(tmp_path / 'headless.png')!r}); "
        "print(type(figure.canvas).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "FigureCanvasAgg"
    assert _is_png(tmp_path / "headless.png")
