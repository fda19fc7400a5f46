"""Online tf.data pipelines: pairs, class-balanced batches, augmented views.

The examples (or their file paths) are held once. Batches are sampled
in-graph from per-class index tables with stateless random ops and
gathered with one `tf.gather`: no Python loop per pair, memory O(dataset),
fresh pairs every epoch. Pair labels: ``0`` = similar pair, ``1`` =
dissimilar, unless ``similar_label=1``.
"""

import inspect
from typing import Any, Callable, Optional

from keras_contrastive._common import check_number, check_similar_label
from keras_contrastive._sampling import (
    INDEX_DTYPE,
    Tables,
    cast_to,
    check_dtype,
    class_member,
    draw_pairs,
    load_and_batch,
    seed_stream,
    uniform_index,
)
from keras_contrastive._tf import tf
from keras_contrastive._validation import check_integer

AUTOTUNE = tf.data.AUTOTUNE
_CHUNK = 1024  # pairs per gather when `batch_size=None` (then unbatched)
_PAIRS_PER_DRAW = 8192  # pairs whose indices one sampling call draws
# Batches of pairs prefetched. The parallel gather (AUTOTUNE) already
# works ahead; an AUTOTUNE prefetch grows on a busy machine (+30-50 MiB of
# MNIST batches) for no speed.
_PREFETCH = 4
_MAX_ID = 2**24  # view ids stay exact in float32, Keras's `y_true` dtype


def make_pair_dataset(
    x: Any,
    y: Any = None,
    *,
    batch_size: Optional[int] = None,
    positive_fraction: float = 0.5,
    pairs_per_epoch: Optional[int] = None,
    similar_label: int = 0,
    seed: Optional[int] = None,
    load_fn: Optional[Callable] = None,
    drop_remainder: bool = False,
    dtype: Any = None,
    input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """Pairs of examples sampled online, fresh every epoch.

    Each pair is an anchor and a partner: with probability
    `positive_fraction` another example of the anchor's class (such anchors
    come from classes with 2 or more examples, so one-example classes only
    appear in dissimilar pairs), otherwise an example of another class
    drawn uniformly. Each pass (each `model.fit` epoch) draws new pairs;
    the same `seed` replays the same epochs.

    Pair labels: ``0`` = similar pair, ``1`` = dissimilar, unless
    ``similar_label=1`` (then ``1`` = similar), as in
    `keras_contrastive.losses.ContrastiveLoss`.

    Args:
        x: examples `[N, ...]` (array or tensor) with labels `y`; or file
            paths `[N]` (strings) with a `load_fn`; or a finite
            `tf.data.Dataset` of `(example, label)` (read once and held).
        y: labels `[N]`, any integer or string class ids; `None` when `x`
            is a dataset.
        batch_size: pairs per batch; `None` yields single pairs. With
            `input_context` it is the global batch size.
        positive_fraction: probability that a pair is similar, in [0, 1].
        pairs_per_epoch: pairs per pass over the dataset; defaults to `N`.
        similar_label: the label of similar pairs, 0 (default) or 1.
        seed: makes the sequence of epochs reproducible; `None` is random.
        load_fn: maps one element of `x` (e.g. a file path) to an example,
            after sampling, in a parallel `map`: only the paths are held.
        drop_remainder: drop the last, smaller batch of each epoch (static
            batch shapes for TPU and XLA).
        dtype: the dtype of the yielded examples, e.g. ``"float32"``;
            `None` keeps their own. The held copy keeps its dtype and each
            batch is cast after the gather: uint8 images stay 4x smaller
            than float32 ones, and move 4x fewer bytes per pair.
        input_context: the `tf.distribute.InputContext` given to a
            `strategy.distribute_datasets_from_function` dataset function:
            each input pipeline then yields per-replica batches and draws
            its own pairs, its share of `pairs_per_epoch`.

    Returns:
        A `tf.data.Dataset` of `((x1, x2), pair_label)`: `x1`, `x2` are
        `[batch, ...]` (of `dtype`) and `pair_label` is int32 `[batch]`
        (no batch dimension when `batch_size=None`), prefetched.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.data import make_pair_dataset
    >>> x = np.random.rand(100, 8).astype("float32")
    >>> y = np.arange(100) % 5
    >>> pairs = make_pair_dataset(x, y, batch_size=32, seed=0)
    >>> (x1, x2), labels = next(iter(pairs))  # labels: 0 = similar pair
    """
    similar_label = check_similar_label(similar_label)
    dtype = check_dtype(dtype)
    positive_fraction = check_number(
        "positive_fraction", positive_fraction, minimum=0.0
    )
    if positive_fraction > 1:
        raise ValueError(
            "`positive_fraction` must be in [0, 1]. "
            f"Received: positive_fraction={positive_fraction}"
        )
    if batch_size is not None:
        batch_size = check_integer("batch_size", batch_size)
    tables = Tables(x, y)
    if positive_fraction > 0 and not tables.has_positives:
        raise ValueError(
            "No class has 2 or more examples, so no similar pair exists; "
            "pass positive_fraction=0 for negatives only. "
            f"Received: positive_fraction={positive_fraction}"
        )
    pairs = tables.size
    if pairs_per_epoch is not None:
        pairs = check_integer("pairs_per_epoch", pairs_per_epoch)
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pairs = -(-pairs // pipelines)
        if batch_size is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)

    size = batch_size or _CHUNK
    steps, remainder = divmod(pairs, size)
    if remainder and not (drop_remainder and batch_size):
        steps += 1
    static = remainder == 0 or (drop_remainder and batch_size is not None)
    dissimilar_label = 1 - similar_label
    group = max(1, _PAIRS_PER_DRAW // size)

    def draw(first_step, key, t):
        # Indices for `group` batches per call: sampling is many small ops,
        # so drawing thousands of pairs at once makes its cost negligible.
        anchor, partner, is_similar = draw_pairs(
            t, tables, key, group * size, positive_fraction
        )
        index = tf.reshape(tf.stack([anchor, partner]), [2, group, size])
        index = tf.transpose(index, [1, 0, 2])  # [group, 2, size]
        label = tf.where(is_similar, similar_label, dissimilar_label)
        step = first_step * group + tf.range(group, dtype=tf.int64)
        return step, index, tf.reshape(label, [group, size])

    def gather(step, index, label, t):
        if not static:  # only the last batch of an epoch is short
            n = tf.minimum(pairs - step * size, size)
            index, label = index[:, :n], label[:n]
        # One gather per batch, [2, n, ...]; unstacking shares its buffer.
        both = tf.gather(t["examples"], index)
        if load_fn is None:
            both = cast_to(both, dtype)
        return tuple(tf.unstack(both)), label

    dataset = tf.data.Dataset.zip(
        tf.data.Dataset.range(-(-steps // group)),
        seed_stream(seed, input_context),
    )
    dataset = tables.pipeline(dataset, draw, "draw_pairs").unbatch()
    dataset = tables.pipeline(dataset.take(steps), gather, "gather_pairs")
    if load_fn is not None:

        def pair_fn(xs, label):
            loaded = [cast_to(load_fn(xs[i]), dtype) for i in (0, 1)]
            return tuple(loaded), label

        dataset = load_and_batch(dataset, pair_fn, batch_size, drop_remainder)
    elif batch_size is None:
        dataset = dataset.unbatch()
    # Unbatching hides the length; restore it for Keras progress bars.
    length = steps if batch_size else pairs
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(length))
    return dataset.prefetch(_PREFETCH)


def class_balanced_dataset(
    x: Any,
    y: Any = None,
    *,
    classes_per_batch: int,
    examples_per_class: int,
    seed: Optional[int] = None,
    load_fn: Optional[Callable] = None,
    dtype: Any = None,
    input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """Endless batches of P classes x K examples, for in-batch losses.

    Every batch holds `classes_per_batch` (P) distinct classes drawn
    uniformly, each with `examples_per_class` (K) examples, grouped by
    class: exactly P*K, a static shape for XLA and TPU. A class with K or
    more examples gives K different ones; a smaller class gives all of its
    examples and repeats some (the only sampling with replacement). Cost per
    batch is O(P x the largest class). Give `model.fit` `steps_per_epoch`.
    `strategy.experimental_distribute_dataset` splits a batch in order
    (whole classes per replica when P divides evenly); with `input_context`
    each replica gets its own P x K batch.

    Args:
        x: examples `[N, ...]`, file paths `[N]` with `load_fn`, or a
            finite `tf.data.Dataset` of `(example, label)`.
        y: labels `[N]`; `None` when `x` is a dataset.
        classes_per_batch: P, at most the number of classes.
        examples_per_class: K, at least 1.
        seed: makes the batch sequence reproducible; `None` is random.
        load_fn: maps one element of `x` (e.g. a path) to an example.
        dtype: the dtype of the yielded examples; `None` keeps their own
            (as in `make_pair_dataset`, the cast follows the gather).
        input_context: a `tf.distribute.InputContext`, as above.

    Returns:
        An endless `tf.data.Dataset` of `(examples [P*K, ...],
        labels [P*K])`, with the labels as given in `y`.

    Example:
    >>> import numpy as np
    >>> from keras_contrastive.data import class_balanced_dataset
    >>> x, y = np.random.rand(60, 4), np.arange(60) % 6
    >>> batches = class_balanced_dataset(
    ...     x, y, classes_per_batch=3, examples_per_class=4, seed=0)
    >>> examples, labels = next(iter(batches))  # 12 examples, 3 classes
    """
    classes_per_batch = check_integer("classes_per_batch", classes_per_batch)
    dtype = check_dtype(dtype)
    per_class = check_integer("examples_per_class", examples_per_class)
    tables = Tables(x, y)
    if classes_per_batch > tables.num_classes:
        raise ValueError(
            "`classes_per_batch` must be at most the number of classes "
            f"({tables.num_classes}). "
            f"Received: classes_per_batch={classes_per_batch}"
        )
    batch = classes_per_batch * per_class
    distinct = min(per_class, tables.max_count)

    def sample(key, t):
        keys = tf.random.experimental.stateless_split(key, 3)
        scores = tf.random.stateless_uniform([tables.num_classes], keys[0])
        classes = tf.math.top_k(scores, classes_per_batch).indices
        classes = tf.cast(classes, INDEX_DTYPE)
        counts = tf.gather(t["counts"], classes)[:, None]
        # Random keys on each class's valid positions, -1 elsewhere: the
        # top K positions are K distinct members (all n when n < K).
        columns = tf.range(tables.max_count, dtype=INDEX_DTYPE)
        scores = tf.random.stateless_uniform(
            [classes_per_batch, tables.max_count], keys[1]
        )
        scores = tf.where(columns < counts, scores, -1.0)
        ranks = tf.cast(tf.math.top_k(scores, distinct).indices, INDEX_DTYPE)
        ranks = tf.pad(ranks, [[0, 0], [0, per_class - distinct]])
        again = tf.random.stateless_uniform(
            [classes_per_batch, per_class], keys[2], dtype=tf.float64
        )
        positions = tf.range(per_class, dtype=INDEX_DTYPE)
        redrawn = uniform_index(again, counts)
        ranks = tf.where(positions < counts, ranks, redrawn)
        rows = tf.broadcast_to(classes[:, None], ranks.shape)
        index = tf.reshape(class_member(t, rows, ranks), [batch])
        examples = tf.gather(t["examples"], index)
        if load_fn is None:
            examples = cast_to(examples, dtype)
        return examples, tf.gather(t["labels"], index)

    dataset = seed_stream(seed, input_context)
    dataset = tables.pipeline(dataset, sample, "balanced")
    if load_fn is not None:
        dataset = load_and_batch(
            dataset,
            lambda e, label: (cast_to(load_fn(e), dtype), label),
            batch,
            True,
        )
    return dataset.prefetch(AUTOTUNE)


def augmented_views(
    dataset: tf.data.Dataset,
    augment: Callable,
    *,
    views: int = 2,
    seed: Optional[int] = None,
    with_labels: bool = False,
    input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """Each example becomes `views` augmented copies sharing a sample id.

    For self-supervised training (SimCLR): `augment` is applied `views`
    times to every batch, independently; copies of one example sit next to
    each other (``[a1, a2, b1, b2, ...]``) and share an id, the sample-id
    convention of `keras_contrastive.losses.NTXentLoss` and the in-batch
    losses. So `model.fit(augmented_views(...))` trains an encoder
    `[views*B, ...] -> [views*B, D]` with `NTXentLoss()`. Ids are unique
    across the replicas of a step and below 2**24 (exact in float32).

    Args:
        dataset: a `tf.data.Dataset` of batches `x` `[B, ...]` or tuples
            starting with `x` (the rest is dropped unless `with_labels`);
            batch it with `drop_remainder=True` for static shapes.
        augment: a function or Keras preprocessing layer `[B, ...] ->
            [B, ...]`, random per example. If it takes a `seed` argument,
            it gets a stateless seed (int64 `[2]`, for
            `tf.image.stateless_random_*`) from `seed`, step and view, so
            runs replay; Keras layers use their own `seed`.
        views: copies per example, at least 2.
        seed: seeds the stateless `augment` seeds; `None` passes none.
        with_labels: keep the class labels of `(x, labels)` batches (e.g.
            from `class_balanced_dataset`), for a class loss plus an
            instance term: the targets are then `[views*B, 2]` rows
            ``(label, sample id)``; labels must be integers (cast to int32).
        input_context: the `tf.distribute.InputContext` of
            `strategy.distribute_datasets_from_function`: ids stay unique
            across input pipelines.

    Returns:
        A `tf.data.Dataset` of `(views_x [views*B, ...], ids [views*B])`,
        ids int32; with `with_labels`, `(views_x, targets [views*B, 2])`
        int32.

    Example:
    >>> import numpy as np, tensorflow as tf
    >>> from keras_contrastive.data import augmented_views
    >>> images = tf.data.Dataset.from_tensor_slices(
    ...     np.random.rand(32, 8, 8, 1).astype("float32")).batch(8)
    >>> noisy = lambda x: x + tf.random.normal(tf.shape(x), stddev=0.1)
    >>> x, ids = next(iter(augmented_views(images, noisy)))  # [16, 8, 8, 1]
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "`dataset` must be a tf.data.Dataset of batches. "
            f"Received: dataset of type {type(dataset).__name__}"
        )
    if not callable(augment):
        raise TypeError(f"`augment` must be callable. Received: {augment!r}")
    views = check_integer("views", views, minimum=2)
    try:
        takes_seed = "seed" in inspect.signature(augment).parameters
    except (TypeError, ValueError):
        takes_seed = False
    seeded = seed is not None and takes_seed
    pipelines, pipeline = 1, 0
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pipeline = input_context.input_pipeline_id
    spec = dataset.element_spec
    if with_labels:
        labelled = isinstance(spec, tuple) and len(spec) >= 2
        if not labelled or not spec[1].dtype.is_integer:
            raise TypeError(
                "`with_labels=True` needs a dataset of (x, labels) batches "
                f"with integer labels. Received: element_spec={spec}"
            )
    if isinstance(spec, tuple):
        spec = spec[0]
    stride = spec.shape[0] if spec.shape.rank and spec.shape[0] else 4096
    cycle = max(1, _MAX_ID // stride)

    def make_views(step, key, element):
        x = element[0] if isinstance(element, tuple) else element
        copies = []
        for view in range(views):
            if seeded:
                view_key = tf.stack([key[0], tf.cast(view, tf.int64)])
                copies.append(augment(x, seed=view_key))
            else:
                copies.append(augment(x))
        stacked = tf.stack(copies, axis=1)  # [B, views, ...]
        shape = tf.shape(stacked)
        flat = tf.reshape(stacked, tf.concat([[-1], shape[2:]], 0))
        base = ((step * pipelines + pipeline) % cycle) * stride
        ids = tf.cast(base + tf.range(shape[0], dtype=tf.int64), tf.int32)
        ids = tf.repeat(ids, views)
        if not with_labels:
            return flat, ids
        labels = tf.repeat(tf.cast(element[1], tf.int32), views)
        return flat, tf.stack([labels, ids], axis=1)

    indexed = tf.data.Dataset.zip(
        tf.data.Dataset.range(2**62),
        seed_stream(seed, input_context),
        dataset,
    )
    indexed = indexed.map(make_views, num_parallel_calls=AUTOTUNE, name="views")
    return indexed.prefetch(AUTOTUNE)
