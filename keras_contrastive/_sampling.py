"""Internals of `keras_contrastive.data`: index tables and sampling.

Examples are held once (one aligned copy, handed to TensorFlow without
another), labels become per-class index tables, and indices are drawn
in-graph with stateless random ops keyed by a seed stream.
"""

import numpy as np

from keras_contrastive._tf import tf

AUTOTUNE = tf.data.AUTOTUNE
INDEX_DTYPE = tf.int64


class Tables:
    """Examples plus per-class index tables, built once from the labels."""

    def __init__(self, x, y):
        examples, labels = materialize(x, y)
        classes, class_ids, counts = np.unique(
            labels, return_inverse=True, return_counts=True
        )
        if len(classes) < 2:
            raise ValueError(
                "Pairs and class-balanced batches need at least 2 classes. "
                f"Received labels with {len(classes)} class(es): "
                f"{classes[:5].tolist()}"
            )
        order = np.argsort(class_ids, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels)) - offsets[class_ids[order]]
        pool = np.flatnonzero(counts[class_ids] >= 2)
        self.size, self.num_classes = len(labels), len(classes)
        self.max_count, self.has_positives = int(counts.max()), pool.size > 0
        index = lambda a: tf.constant(a, INDEX_DTYPE)  # noqa: E731
        self.tensors = dict(
            examples=examples,
            labels=tf.constant(labels),
            class_ids=index(class_ids),
            order=index(order),
            offsets=index(offsets),
            counts=index(counts),
            float_counts=tf.constant(counts, tf.float64),
            rank=index(rank),
            pool=index(pool),
        )

    def pipeline(self, dataset, sample, name):
        """`dataset` mapped by `sample(*element, tensors)` in parallel."""
        tensors = self.tensors
        dataset = dataset.map(
            lambda *element: sample(*element, tensors),
            num_parallel_calls=AUTOTUNE,
            name=name,
        )
        # tf.data's static graph rewrites serialize the dataset graph, and
        # with it a copy of every captured tensor: the whole data set.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        # Parallel calls already use every core; one thread per op avoids
        # splitting each gather across threads.
        options.threading.max_intra_op_parallelism = 1
        # AUTOTUNE then means one call per core from the first batch: the
        # autotuner's ramp-up and bookkeeping cost 5-10% of short epochs
        # (MNIST-sized, where each epoch starts a new iterator). A user's
        # `with_options` can turn it back on.
        options.autotune.enabled = False
        return dataset.with_options(options)


def check_dtype(dtype):
    """`dtype` as a numeric `tf.DType`, or None; TypeError otherwise."""
    if dtype is None:
        return None
    try:
        resolved = tf.as_dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not (resolved.is_floating or resolved.is_integer):
        raise TypeError(
            "`dtype` must be a numeric dtype such as 'float32', or None to "
            f"keep the examples' own dtype. Received: dtype={dtype!r}"
        )
    return resolved


def cast_to(examples, dtype):
    """`examples` cast to `dtype` (None: unchanged), after the gather, so
    the held copy keeps its compact dtype (uint8 images: 4x smaller)."""
    if dtype is None or examples.dtype == dtype:
        return examples
    if not (examples.dtype.is_floating or examples.dtype.is_integer):
        raise TypeError(
            f"`dtype={dtype.name}` casts numeric examples; these are "
            f"{examples.dtype.name} (cast inside `load_fn` instead)"
        )
    return tf.cast(examples, dtype)


def class_member(t, classes, positions):
    """Example index of the `positions`-th example of each of `classes`."""
    return tf.gather(t["order"], tf.gather(t["offsets"], classes) + positions)


def to_tensor(array):
    """`array` as a tensor holding one 64-byte-aligned copy of it.

    `tf.convert_to_tensor` of a large numpy array holds two copies; a
    numpy copy handed over through DLPack is the only one.
    """
    array = np.asarray(array)
    if array.dtype.kind in "USO" or array.nbytes < 2**20:
        return tf.constant(array)
    buffer = np.empty(array.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    aligned = buffer[start : start + array.nbytes].view(array.dtype)
    aligned = aligned.reshape(array.shape)
    np.copyto(aligned, array)
    try:
        return tf.experimental.dlpack.from_dlpack(aligned.__dlpack__())
    except Exception:  # a dtype DLPack cannot carry
        return tf.convert_to_tensor(aligned)


def materialize(x, y):
    """(examples tensor [N, ...], labels numpy [N]) from arrays or datasets."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise TypeError(
                "Pass `y=None` when `x` is a tf.data.Dataset of (example, "
                f"label). Received: y of type {type(y).__name__}"
            )
        spec = x.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise TypeError(
                "A dataset `x` must yield (example, label) tuples. "
                f"Received: element_spec={spec}"
            )
        if x.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "`x` is an infinite dataset (did it end in `.repeat()`?); "
                "it must be finite so it can be held once. "
                "Received: cardinality=INFINITE"
            )
        # One pass in chunks; an UNKNOWN cardinality is counted by it.
        chunks = list(x.batch(4096).as_numpy_iterator())
        if not chunks:
            raise ValueError("`x` is an empty dataset. Received: 0 elements")
        x = np.concatenate([c[0] for c in chunks])
        y = np.concatenate([c[1] for c in chunks])
    elif y is None:
        raise TypeError(
            "`y` (labels [N]) is required when `x` is an array. "
            f"Received: x of type {type(x).__name__}, y=None"
        )
    labels = np.asarray(y.numpy() if tf.is_tensor(y) else y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`y` must be labels [N]. Received: y.shape={labels.shape}"
        )
    examples = x if tf.is_tensor(x) else to_tensor(x)
    if examples.shape.rank == 0 or examples.shape[0] != len(labels):
        raise ValueError(
            "`x` and `y` must hold the same number of examples. Received: "
            f"x.shape={tuple(examples.shape)}, y.shape={labels.shape}"
        )
    return examples, labels


def uniform_index(uniform, count):
    """floor(uniform * count): a uniform index in [0, count) for float64
    `uniform` in [0, 1) (stateless_uniform's float64 values are at most
    1 - 2**-52, so the product stays below any count under 2**51)."""
    if not isinstance(count, (int, float)):
        count = tf.cast(count, tf.float64)
    return tf.cast(uniform * count, INDEX_DTYPE)


def seed_stream(seed, input_context=None):
    """Endless stateless keys `[2]`, a new sequence on every pass (epoch),
    and a different one for each input pipeline (worker)."""
    if seed is not None and input_context is not None:
        seed = seed * 1_000_003 + input_context.input_pipeline_id
    stream = tf.data.Dataset.random(seed, rerandomize_each_iteration=True)
    return stream.map(lambda r: tf.stack([r, tf.constant(0, tf.int64)]))


def load_and_batch(dataset, load_fn, batch_size, drop_remainder):
    """Unbatch sampled rows, `load_fn` each example in parallel, re-batch."""
    dataset = dataset.unbatch().map(load_fn, num_parallel_calls=AUTOTUNE)
    if batch_size is None:
        return dataset
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def draw_pairs(t, tables, key, size, positive_fraction):
    """Anchor and partner indices [size] and a similar-mask, in-graph.

    Kept to few ops: each new iterator (each Keras epoch) instantiates
    this function again, at a cost that grows with its op count.
    """
    uniform = tf.random.stateless_uniform([6, size], key, dtype=tf.float64)
    u = tf.unstack(uniform)
    is_similar = u[0] < positive_fraction
    anchor = partner = None
    if positive_fraction > 0:
        # A positive anchor comes from a class with >= 2 examples. Its
        # partner is drawn from the other n - 1 members: draw j in [0, n-1)
        # and skip the anchor's own rank, so partner != anchor.
        pool = t["pool"]
        anchor = tf.gather(pool, uniform_index(u[1], int(pool.shape[0])))
        cls = tf.gather(t["class_ids"], anchor)
        j = uniform_index(u[2], tf.gather(t["float_counts"], cls) - 1.0)
        j += tf.cast(j >= tf.gather(t["rank"], anchor), INDEX_DTYPE)
        partner = class_member(t, cls, j)
    if positive_fraction < 1:
        # A negative partner's class is drawn uniformly from the other
        # C - 1 classes (the same skip trick), then a member of it.
        negative = uniform_index(u[3], tables.size)
        cls = tf.gather(t["class_ids"], negative)
        other = uniform_index(u[4], tables.num_classes - 1)
        other += tf.cast(other >= cls, INDEX_DTYPE)
        member = uniform_index(u[5], tf.gather(t["float_counts"], other))
        negative_partner = class_member(t, other, member)
        if anchor is None:
            return negative, negative_partner, is_similar
        anchor = tf.where(is_similar, anchor, negative)
        partner = tf.where(is_similar, partner, negative_partner)
    return anchor, partner, is_similar
