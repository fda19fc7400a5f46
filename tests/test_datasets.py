"""Tests for keras_contrastive.datasets: loaders and class splits."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_contrastive import datasets  # noqa: E402
from keras_contrastive.data import make_pair_dataset  # noqa: E402


def test_digits_offline():
    pytest.importorskip("sklearn")
    x, y = datasets.load("digits")
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (1797,) and set(y) == set(range(10))


@pytest.mark.parametrize(
    "name, split, shape",
    [
        ("tfds:mnist", None, (28, 28, 1)),
        ("tfds:mnist:test", None, (28, 28, 1)),
        ("tfds:omniglot", "test", (105, 105, 3)),
    ],
)
def test_tfds_with_mock_data(name, split, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        x, y = datasets.load(name, split=split)
    assert x.shape == (10,) + shape and x.dtype == np.uint8
    assert y.shape == (10,) and y.dtype == np.int64


def test_tfds_not_downloaded_says_how_to_download(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="download_and_prepare"):
        datasets.load("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no dataset named"):
        datasets.load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown dataset"):
        datasets.load("mnist_please")
    with pytest.raises(TypeError, match="name"):
        datasets.load(3)


def write_image_folder(root, counts, size=(6, 5)):
    """One sub-folder per class, PNGs whose pixels hold the class index."""
    for label, count in enumerate(counts):
        folder = root / f"class_{label}"
        folder.mkdir()
        for i in range(count):
            pixels = np.full(size + (3,), 40 * label, np.uint8)
            png = tf.io.encode_png(pixels).numpy()
            (folder / f"{i}.png").write_bytes(png)
    (root / "notes.txt").write_text("ignored")


def test_folder_gives_paths_and_a_lazy_loader(tmp_path):
    write_image_folder(tmp_path, [3, 2, 4])
    data = datasets.load(str(tmp_path), image_size=(4, 4), channels=1)
    paths, labels = data
    assert paths.shape == (9,) and paths.dtype.kind == "U"
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert data.class_names == ["class_0", "class_1", "class_2"]
    image = data.load_fn(tf.constant(paths[5]))
    assert image.shape == (4, 4, 1) and image.dtype == tf.float32
    np.testing.assert_allclose(image.numpy(), 80 / 255, atol=1e-5)
    pairs = make_pair_dataset(
        paths, labels, batch_size=4, seed=0, load_fn=data.load_fn
    )
    for (a, b), pair_label in pairs:
        same = np.isclose(a.numpy()[:, 0, 0, 0], b.numpy()[:, 0, 0, 0])
        np.testing.assert_array_equal(pair_label.numpy() == 0, same)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="0 images"):
        datasets.load(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least 2 sub-folders"):
        datasets.load(str(tmp_path))
    single = tmp_path / "single"
    single.mkdir()
    write_image_folder(single, [2])
    with pytest.raises(ValueError, match="1 class folder"):
        datasets.load(str(single))


def test_npz_with_keys_and_groups(tmp_path):
    path = tmp_path / "chars.npz"
    np.savez(
        path,
        x=np.zeros((6, 3, 3)),
        x28=np.ones((6, 2, 2)),
        y=np.arange(6) % 3,
        alphabet=np.array([0, 0, 0, 1, 1, 1]),
    )
    x, y = datasets.load(str(path))
    assert x.shape == (6, 3, 3) and y.shape == (6,)
    data = datasets.load(str(path), x_key="x28", groups_key="alphabet")
    assert data.x.shape == (6, 2, 2)
    np.testing.assert_array_equal(data.groups, [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="x64"):
        datasets.load(str(path), x_key="x64")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        datasets.load(str(bad))


def test_split_by_class_holds_out_whole_classes():
    x, y = np.arange(40), np.arange(40) % 8
    (x_seen, y_seen), (x_new, y_new) = datasets.split_by_class(
        x, y, holdout_classes=[2, 5]
    )
    assert set(y_new) == {2, 5} and not set(y_seen) & {2, 5}
    assert len(x_seen) + len(x_new) == 40
    np.testing.assert_array_equal(x_new % 8, y_new)
    first = datasets.split_by_class(x, y, holdout_fraction=0.25, seed=1)
    again = datasets.split_by_class(x, y, holdout_fraction=0.25, seed=1)
    assert len(set(first[1][1])) == 2
    np.testing.assert_array_equal(first[1][0], again[1][0])


def test_split_by_class_with_groups():
    y = np.arange(12)  # 12 characters ...
    groups = np.arange(12) // 4  # ... in 3 alphabets
    _, (x_new, y_new) = datasets.split_by_class(
        y, y, holdout_classes=[1], groups=groups
    )
    np.testing.assert_array_equal(y_new, [4, 5, 6, 7])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one"),
        (dict(holdout_classes=[1], holdout_fraction=0.5), "exactly one"),
        (dict(holdout_classes=[9]), "holdout_classes"),
        (dict(holdout_classes=[0, 1, 2]), "holdout_classes"),
        (dict(holdout_fraction=1.0), "holdout_fraction"),
    ],
)
def test_split_by_class_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.split_by_class(np.arange(6), np.arange(6) % 3, **kwargs)
    with pytest.raises(ValueError, match="same number"):
        datasets.split_by_class(
            np.arange(5), np.arange(6) % 3, holdout_classes=[0]
        )


def test_split_examples_keeps_every_class_on_both_sides():
    y = np.array([0] * 10 + [1] * 5 + [2])
    x = np.arange(len(y))
    (x_a, y_a), (x_b, y_b) = datasets.split_examples(x, y, fraction=0.2)
    assert np.sum(y_b == 0) == 2 and np.sum(y_b == 1) == 1
    assert 2 in y_a and 2 not in y_b  # a single example stays in part one
    assert not set(x_a) & set(x_b) and len(x_a) + len(x_b) == len(x)
    with pytest.raises(ValueError, match="fraction"):
        datasets.split_examples(x, y, fraction=0)
