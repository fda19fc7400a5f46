"""Labelled datasets for metric learning, and splits by class.

`load(name)` returns the examples and their labels as a `LabelledData`,
a tuple ``(x, y)`` that also carries `load_fn` (for folders of image
files), `class_names` and `groups` (e.g. Omniglot's alphabets):

* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits, bundled with
  scikit-learn, so it works offline (the default in examples and the CLI);
* ``"tfds:<name>[:<split>]"``: any TensorFlow Datasets image dataset that
  is already downloaded (``tfds:mnist``, ``tfds:omniglot:test``);
* a folder with one sub-folder of images per class (paths, decoded lazily);
* an ``.npz`` file with arrays ``x`` and ``y`` (other keys selectable).

Metric learning is evaluated on classes never seen in training:
`split_by_class` holds out whole classes (or groups of classes), and
`split_examples` splits each class's examples (e.g. gallery and queries).
"""

import os
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from keras_contrastive._tf import tf

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class LabelledData(tuple):
    """`(x, y)` plus what some sources add: `load_fn`, `class_names`,
    `groups`.

    Unpacks like a pair (``x, y = load("digits")``) and exposes the same
    values as attributes (`data.x`, `data.y`).
    """

    def __new__(cls, x, y, *, load_fn=None, class_names=None, groups=None):
        data = super().__new__(cls, (x, y))
        data.load_fn, data.class_names, data.groups = (
            load_fn,
            class_names,
            groups,
        )
        return data

    @property
    def x(self):
        return self[0]

    @property
    def y(self):
        return self[1]


def load(
    name: str = "digits",
    *,
    split: Optional[str] = None,
    data_dir: Optional[str] = None,
    x_key: str = "x",
    y_key: str = "y",
    groups_key: Optional[str] = None,
    image_size: Tuple[int, int] = (64, 64),
    channels: int = 3,
) -> LabelledData:
    """Load a labelled dataset by name, offline.

    Args:
        name: ``"digits"``; ``"tfds:<name>"`` or ``"tfds:<name>:<split>"``;
            the path of a folder with one sub-folder per class; or the path
            of an ``.npz`` file.
        split: the TFDS split (``"train"`` by default; overrides one given
            in `name`). Not used by the other sources.
        data_dir: where TFDS keeps prepared datasets (TFDS's default when
            `None`).
        x_key: the ``.npz`` array of examples, e.g. ``"x28"`` for the
            28x28 Omniglot images.
        y_key: the ``.npz`` array of labels.
        groups_key: an optional ``.npz`` array `[N]` returned as `groups`
            (e.g. ``"alphabet"``), for `split_by_class(groups=...)`.
        image_size: `(height, width)` that a folder's images are resized to.
        channels: colour channels of a folder's decoded images (1 or 3).

    Returns:
        A `LabelledData` ``(x, y)``:

        * digits: `x` float32 `[1797, 8, 8, 1]` scaled to [0, 1], `y` int64;
        * TFDS: `x` uint8 `[N, H, W, C]` and `y` int64, as stored;
        * folder: `x` the file paths `[N]` (str), `y` int64 class indices
          (sub-folders in sorted order, named in `class_names`), and
          `load_fn` mapping one path to a float32 `[*image_size, channels]`
          image in [0, 1]; pass it to `make_pair_dataset(..., load_fn=)`;
        * npz: the arrays as stored.

    Example:
    >>> from keras_contrastive import datasets
    >>> x, y = datasets.load("digits")
    >>> x.shape, y.shape
    ((1797, 8, 8, 1), (1797,))
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(
            "`name` must be a dataset name or path. "
            f"Received: name of type {type(name).__name__}"
        )
    name = os.fspath(name)
    if name == "digits":
        return _load_digits()
    if name.startswith("tfds:"):
        return _load_tfds(name[len("tfds:") :], split, data_dir)
    if name.endswith(".npz") and os.path.isfile(name):
        return _load_npz(name, x_key, y_key, groups_key)
    if os.path.isdir(name):
        return _load_folder(name, image_size, channels)
    raise ValueError(
        "Unknown dataset. Use 'digits', 'tfds:<name>[:<split>]', a folder "
        "with one sub-folder of images per class, or an existing .npz "
        f"file. Received: name={name!r}"
    )


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - needs no sklearn
        raise ImportError(
            'The "digits" dataset needs scikit-learn: '
            'pip install "keras-contrastive[datasets]"'
        ) from error
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return LabelledData(x, digits.target.astype("int64"))


def _load_tfds(spec, split, data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - needs no tfds
        raise ImportError(
            "TFDS datasets need tensorflow-datasets: pip install "
            '"keras-contrastive[datasets]"'
        ) from error
    dataset_name, _, name_split = spec.partition(":")
    if not dataset_name:
        raise ValueError(
            "A TFDS name looks like 'tfds:mnist' or 'tfds:mnist:test'. "
            f"Received: name='tfds:{spec}'"
        )
    split = split or name_split or "train"
    try:
        dataset = tfds.load(
            dataset_name,
            split=split,
            data_dir=data_dir,
            download=False,
            as_supervised=True,
        )
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"TFDS has no dataset named {dataset_name!r}. "
            f"Received: name='tfds:{spec}'"
        ) from error
    except AssertionError as error:  # TFDS's "could not find data"
        raise ValueError(
            f"The TFDS dataset {dataset_name!r} is not downloaded (this "
            "library never downloads). Download it once with: python -c "
            f'"import tensorflow_datasets as tfds; '
            f"tfds.builder('{dataset_name}'"
            + (f", data_dir='{data_dir}'" if data_dir else "")
            + ').download_and_prepare()" '
            f"Received: name='tfds:{spec}', split={split!r}"
        ) from error
    chunks = list(dataset.batch(4096).as_numpy_iterator())
    x = np.concatenate([c[0] for c in chunks])
    y = np.concatenate([c[1] for c in chunks]).astype("int64")
    return LabelledData(x, y)


def _load_npz(path, x_key, y_key, groups_key):
    with np.load(path) as archive:
        keys = [k for k in (x_key, y_key, groups_key) if k is not None]
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise ValueError(
                f"{path} has no array named {missing[0]!r}; it holds "
                f"{archive.files}. Pass `x_key`/`y_key`/`groups_key`. "
                f"Received: x_key={x_key!r}, y_key={y_key!r}, "
                f"groups_key={groups_key!r}"
            )
        x, y = archive[x_key], archive[y_key]
        groups = archive[groups_key] if groups_key else None
    if len(x) != len(y):
        raise ValueError(
            f"{path}: `{x_key}` and `{y_key}` must have the same length. "
            f"Received: {len(x)} examples and {len(y)} labels"
        )
    return LabelledData(x, y, groups=groups)


def image_loader(
    image_size: Tuple[int, int] = (64, 64), channels: int = 3
) -> Callable:
    """A `load_fn` that reads, decodes and resizes one image file.

    Args:
        image_size: `(height, width)` of the returned image.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        A function mapping a path (string tensor `[]`) to a float32 image
        `[height, width, channels]` in [0, 1], usable in `tf.data.map`.

    Example:
    >>> from keras_contrastive.datasets import image_loader
    >>> load_fn = image_loader((32, 32), channels=1)
    """
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: {channels}")
    height, width = (int(v) for v in image_size)

    def load_image(path):
        data = tf.io.read_file(path)
        image = tf.io.decode_image(
            data, channels=channels, expand_animations=False
        )
        image = tf.image.convert_image_dtype(image, tf.float32)
        image = tf.image.resize(image, (height, width))
        return tf.ensure_shape(image, (height, width, channels))

    return load_image


def _load_folder(folder, image_size, channels):
    class_names, paths, labels = [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        files = sorted(
            os.path.join(entry.path, f)
            for f in os.listdir(entry.path)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if files:
            labels += [len(class_names)] * len(files)
            class_names.append(entry.name)
            paths += files
    if len(class_names) < 2:
        raise ValueError(
            "A dataset folder needs at least 2 sub-folders (one per class) "
            f"holding images ({', '.join(IMAGE_EXTENSIONS)}). Received: "
            f"{folder!r} with {len(paths)} images in {len(class_names)} "
            "class folder(s)"
        )
    return LabelledData(
        np.array(paths),
        np.array(labels, dtype="int64"),
        load_fn=image_loader(image_size, channels),
        class_names=class_names,
    )


def _check_fraction(name, value, *, allow_bounds=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number. Received: {value!r}")
    ok = 0 <= value <= 1 if allow_bounds else 0 < value < 1
    if not ok:
        raise ValueError(
            f"`{name}` must be in {'[0, 1]' if allow_bounds else '(0, 1)'}."
            f" Received: {name}={value}"
        )
    return float(value)


def _check_lengths(x, y):
    if len(x) != len(y):
        raise ValueError(
            "`x` and `y` must hold the same number of examples. "
            f"Received: {len(x)} examples and {len(y)} labels"
        )


def split_by_class(
    x: Any,
    y: Any,
    *,
    holdout_classes: Optional[Sequence] = None,
    holdout_fraction: Optional[float] = None,
    groups: Any = None,
    seed: int = 0,
) -> Tuple[Tuple[Any, Any], Tuple[Any, Any]]:
    """Split into seen and unseen classes (train, then test on new ones).

    Whole classes go to one side, so the second part holds only classes
    the model never saw. With `groups` (one group id per example, e.g.
    Omniglot's alphabet), whole groups are held out instead.

    Args:
        x: examples `[N, ...]` (arrays or file paths).
        y: labels `[N]`.
        holdout_classes: the class (or group) ids to hold out.
        holdout_fraction: or the fraction of classes (or groups), in
            (0, 1), to hold out at random; give exactly one of the two.
        groups: optional `[N]` group ids that replace `y` for the choice.
        seed: seeds the random choice of `holdout_fraction`.

    Returns:
        `((x_seen, y_seen), (x_unseen, y_unseen))`, numpy arrays.

    Example:
    >>> from keras_contrastive import datasets
    >>> x, y = datasets.load("digits")
    >>> (x_train, y_train), (x_test, y_test) = datasets.split_by_class(
    ...     x, y, holdout_classes=[8, 9])
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_lengths(x, y)
    keys = y if groups is None else np.asarray(groups)
    _check_lengths(keys, y)
    unique = np.unique(keys)
    if (holdout_classes is None) == (holdout_fraction is None):
        raise ValueError(
            "Give exactly one of `holdout_classes` and `holdout_fraction`. "
            f"Received: holdout_classes={holdout_classes!r}, "
            f"holdout_fraction={holdout_fraction!r}"
        )
    if holdout_fraction is not None:
        fraction = _check_fraction("holdout_fraction", holdout_fraction)
        count = min(max(1, round(fraction * len(unique))), len(unique) - 1)
        rng = np.random.default_rng(seed)
        held = rng.choice(unique, size=count, replace=False)
    else:
        held = np.asarray(list(holdout_classes))
        unknown = np.setdiff1d(held, unique)
        if unknown.size or held.size == 0 or held.size >= unique.size:
            raise ValueError(
                "`holdout_classes` must name some, not all, of the classes "
                f"present ({unique[:10].tolist()}...). Received: "
                f"holdout_classes={list(holdout_classes)!r}"
            )
    unseen = np.isin(keys, held)
    return (x[~unseen], y[~unseen]), (x[unseen], y[unseen])


def split_examples(
    x: Any, y: Any, *, fraction: float, seed: int = 0
) -> Tuple[Tuple[Any, Any], Tuple[Any, Any]]:
    """Split each class's examples in two, e.g. into gallery and queries.

    Every class puts `fraction` of its examples (rounded, at least one
    when it has 2 or more) in the second part and keeps the rest, so both
    parts hold the same classes; a class with one example stays whole in
    the first part.

    Args:
        x: examples `[N, ...]`.
        y: labels `[N]`.
        fraction: share of each class for the second part, in (0, 1).
        seed: seeds which examples move.

    Returns:
        `((x_first, y_first), (x_second, y_second))`, numpy arrays.

    Example:
    >>> from keras_contrastive import datasets
    >>> x, y = datasets.load("digits")
    >>> (gallery, g_y), (queries, q_y) = datasets.split_examples(
    ...     x, y, fraction=0.2)
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_lengths(x, y)
    fraction = _check_fraction("fraction", fraction)
    rng = np.random.default_rng(seed)
    second = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        if len(members) >= 2:
            take = min(max(1, round(fraction * len(members))), len(members) - 1)
            second[members[:take]] = True
    return (x[~second], y[~second]), (x[second], y[second])
