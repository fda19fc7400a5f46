"""What `keras-contrastive train` and `evaluate` do, as plain functions.

`run_training` loads data, holds out unseen classes and some examples of the
seen ones, trains an encoder with the chosen loss, and writes the model,
history, report and plots; `evaluate_encoder` computes the report's
metrics. The CLI (`keras_contrastive.cli`) is a thin argument parser over
these, and `benchmarks/quality.py` calls them directly.
"""

import json
import os
import time
from typing import Optional

import keras
import numpy as np

from keras_contrastive import data as pipelines
from keras_contrastive import datasets, distances, evaluation
from keras_contrastive.distribute import get_strategy, train
from keras_contrastive.layers import ProjectionHead
from keras_contrastive.losses import (
    BatchContrastiveLoss,
    ContrastiveLoss,
    NTXentLoss,
)
from keras_contrastive.models import SiameseModel, build_encoder

LOSSES = ("pair", "batch", "ntxent")
# All pairs of an evaluation set up to this many, else a random sample.
_MAX_PAIRS = 400_000


def load_data(name: str, *, x_key="x", y_key="y", groups_key=None):
    """`(x, y, groups)` in memory; folder images are decoded here."""
    loaded = datasets.load(name, x_key=x_key, y_key=y_key,
                           groups_key=groups_key)
    x, y = np.asarray(loaded.x), np.asarray(loaded.y)
    if loaded.load_fn is not None:  # a folder: decode every image once
        import tensorflow as tf

        images = tf.data.Dataset.from_tensor_slices(x).map(
            loaded.load_fn, num_parallel_calls=tf.data.AUTOTUNE)
        x = np.concatenate(list(images.batch(256).as_numpy_iterator()))
    return x, y, loaded.groups


def split(x, y, groups, *, holdout_classes=None, holdout_fraction=0.3,
          heldout_fraction=0.2, seed=0):
    """Seen-class training and held-out examples, and unseen classes."""
    if holdout_classes:
        holdout_fraction = None
    (x_seen, y_seen), (x_unseen, y_unseen) = datasets.split_by_class(
        x, y, holdout_classes=holdout_classes,
        holdout_fraction=holdout_fraction, groups=groups, seed=seed)
    if len(np.unique(y_seen)) < 2:
        raise ValueError(
            "The held-out classes leave fewer than 2 training classes. "
            f"Received: holdout_classes={holdout_classes!r}, "
            f"holdout_fraction={holdout_fraction!r}")
    (x_train, y_train), (x_held, y_held) = datasets.split_examples(
        x_seen, y_seen, fraction=heldout_fraction, seed=seed)
    return {"train": (x_train, y_train), "heldout_examples": (x_held, y_held),
            "unseen_classes": (x_unseen, y_unseen)}


def default_rescaling(x):
    """Scale raw pixel values inside the model: uint8 -> [0, 1]."""
    if x.dtype == np.uint8:
        return 1.0 / 255.0
    return None


def augmenter(x_shape, seed):
    """Random shifts (10% of the side) and a little noise, for images."""
    if len(x_shape) < 3:
        return None
    layers = keras.Sequential([
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant",
                                       seed=seed),
        keras.layers.GaussianNoise(0.02, seed=seed),
    ])

    def augment(batch):
        images = keras.ops.cast(batch, "float32")
        if len(images.shape) == 3:  # [N, H, W]: no channel axis
            images = images[..., None]
            return layers(images, training=True)[..., 0]
        return layers(images, training=True)
    return augment


def _training_data(args, x, y, strategy):
    """The tf.data pipeline and steps per epoch for `args.loss`."""
    import tensorflow as tf

    augment = augmenter(x.shape, args.seed) if args.augment else None
    steps = args.steps_per_epoch or max(1, len(x) // args.batch_size)
    if args.loss == "pair":
        dataset = pipelines.make_pair_dataset(
            x, y, batch_size=args.batch_size, seed=args.seed,
            drop_remainder=True, pairs_per_epoch=steps * args.batch_size)
        if augment is not None:
            dataset = dataset.map(
                lambda pair, label: ((augment(pair[0]), augment(pair[1])),
                                     label),
                num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.repeat(), steps
    per_class = args.examples_per_class
    classes = min(len(np.unique(y)), max(2, args.batch_size // per_class))
    # Few classes: more examples of each, so the batch keeps its size.
    per_class = max(per_class, args.batch_size // classes)
    dataset = pipelines.class_balanced_dataset(
        x, y, classes_per_batch=classes, examples_per_class=per_class,
        seed=args.seed)
    if augment is not None:
        dataset = dataset.map(lambda images, labels: (augment(images), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def _compile(args, encoder, strategy):
    """The model that is trained, compiled with the loss of `args.loss`."""
    cross_replica = strategy.num_replicas_in_sync > 1
    optimizer = keras.optimizers.Adam(args.learning_rate)
    if args.loss == "pair":
        model = SiameseModel(encoder, metric=args.metric)
        model.compile(optimizer=optimizer, loss=ContrastiveLoss(
            margin=args.margin, positive_margin=args.positive_margin))
        return model
    if args.loss == "batch":
        loss = BatchContrastiveLoss(
            margin=args.margin, positive_margin=args.positive_margin,
            metric=args.metric, miner=args.miner, cross_replica=cross_replica)
        model = encoder
    else:
        loss = NTXentLoss(temperature=args.temperature,
                          cross_replica=cross_replica)
        model = keras.Sequential(
            [encoder, ProjectionHead(args.embedding_dim,
                                     hidden_units=(args.embedding_dim * 2,))])
    model.compile(optimizer=optimizer, loss=loss)
    return model


def _pair_indices(y, seed):
    """All pairs of a small set, or a balanced random sample of a big one."""
    n = len(y)
    if n * (n - 1) // 2 <= _MAX_PAIRS:
        first, second = np.triu_indices(n, k=1)
        return first, second
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n, size=_MAX_PAIRS)
    same_class = rng.random(_MAX_PAIRS) < 0.5
    order = np.argsort(y, kind="stable")
    starts = np.searchsorted(y[order], y[first], side="left")
    counts = np.searchsorted(y[order], y[first], side="right") - starts
    positive = order[starts + (rng.random(_MAX_PAIRS) * counts).astype(int)]
    second = np.where(same_class, positive, rng.integers(0, n, _MAX_PAIRS))
    keep = first != second
    return first[keep], second[keep]


def evaluate_encoder(encoder, x, y, *, metric="euclidean", seed=0,
                     batch_size=256) -> dict:
    """Verification (over pairs) and retrieval metrics of one labelled set.

    Pair labels follow the package convention: 0 = similar pair.
    """
    embeddings = np.asarray(encoder.predict(x, batch_size=batch_size,
                                            verbose=0))
    first, second = _pair_indices(np.asarray(y), seed)
    pair_distances = keras.ops.convert_to_numpy(
        distances.get(metric)(embeddings[first], embeddings[second]))
    pair_labels = (y[first] != y[second]).astype("int64")
    report = evaluation.verification_metrics(pair_distances, pair_labels)
    report.update(evaluation.retrieval_metrics(embeddings, y, metric=metric))
    report["num_examples"] = int(len(y))
    report["num_classes"] = int(len(np.unique(y)))
    return {"metrics": report, "embeddings": embeddings,
            "distances": pair_distances, "pair_labels": pair_labels}


def write_report(out, parts, encoder, metric, seed, extra, plots=True):
    """Evaluate each part, write report.json and the two plots."""
    report = dict(extra)
    results = {}
    for name, (x, y) in parts.items():
        if len(y) >= 2 and len(np.unique(y)) >= 2:
            results[name] = evaluate_encoder(encoder, x, y, metric=metric,
                                             seed=seed)
            report[name] = results[name]["metrics"]
    if plots and results:
        from keras_contrastive import visualization

        shown = results.get("unseen_classes") or next(iter(results.values()))
        name = "unseen_classes" if "unseen_classes" in results else "all"
        visualization.plot_distance_histogram(
            shown["distances"], shown["pair_labels"],
            threshold=shown["metrics"]["threshold"],
            margin=extra.get("arguments", {}).get("margin"),
            path=os.path.join(out, "distance_histogram.png"))
        labels = np.concatenate([parts[k][1] for k in results])
        points = np.concatenate([results[k]["embeddings"] for k in results])
        visualization.plot_embeddings(
            points, labels, path=os.path.join(out, "embeddings.png"))
        report["plotted_pairs"] = name
    with open(os.path.join(out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=_jsonable)
    return report


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def prepare_output(out: str, overwrite: bool):
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(
            f"The output folder {out!r} exists and is not empty; pass "
            "--overwrite to write into it anyway.")
    os.makedirs(out, exist_ok=True)


def run_training(args, *, verbose: int = 1) -> dict:
    """Train, save and report, as `keras-contrastive train` does."""
    started = time.time()
    prepare_output(args.out, args.overwrite)
    keras.utils.set_random_seed(args.seed)
    x, y, groups = load_data(args.data, x_key=args.x_key,
                             groups_key=args.groups_key)
    parts = split(x, y, groups, holdout_classes=args.holdout_classes,
                  holdout_fraction=args.holdout_fraction,
                  heldout_fraction=args.heldout_fraction, seed=args.seed)
    x_train, y_train = parts.pop("train")
    strategy = get_strategy(args.strategy)
    with strategy.scope():
        encoder = build_encoder(
            x.shape[1:], embedding_dim=args.embedding_dim,
            architecture=args.encoder, normalize=args.normalize,
            rescaling=default_rescaling(x))
        model = _compile(args, encoder, strategy)
    dataset, steps = _training_data(args, x_train, y_train, strategy)
    callbacks = [keras.callbacks.CSVLogger(
        os.path.join(args.out, "history.csv"))]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(args.out, "logs")))
    train_started = time.time()
    if isinstance(strategy, _multi_worker_type()):
        history = train(model, dataset, strategy=strategy, epochs=args.epochs,
                        steps_per_epoch=steps, callbacks=callbacks,
                        verbose=verbose)
    else:
        history = model.fit(dataset, epochs=args.epochs,
                            steps_per_epoch=steps, callbacks=callbacks,
                            verbose=verbose)
    train_time = time.time() - train_started
    siamese = SiameseModel(encoder, metric=args.metric)
    siamese.save(os.path.join(args.out, "model.keras"))
    encoder.save(os.path.join(args.out, "encoder.keras"))
    extra = {
        "data": {"name": args.data, "num_examples": int(len(y)),
                 "input_shape": list(x.shape[1:]),
                 "num_train": int(len(y_train)),
                 "train_classes": np.unique(y_train).tolist(),
                 "unseen_classes": np.unique(parts["unseen_classes"][1])
                 .tolist()},
        "arguments": vars(args),
        "final_loss": float(history.history["loss"][-1]),
        "train_time_s": round(train_time, 2),
    }
    report = write_report(args.out, parts, encoder, args.metric, args.seed,
                          extra)
    report["wall_time_s"] = round(time.time() - started, 2)
    with open(os.path.join(args.out, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=_jsonable)
    return report


def _multi_worker_type():
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy


def load_encoder(path: str):
    """The encoder of a saved `model.keras` (SiameseModel) or encoder."""
    if not os.path.isfile(path):
        raise ValueError(f"No model file at {path!r}.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise ValueError(
            f"Could not read a Keras model from {path!r}: {error}") from None
    metric = getattr(model, "metric", "euclidean")
    encoder = model.encoder if isinstance(model, SiameseModel) else model
    return encoder, metric


def run_evaluation(args) -> dict:
    """Report for a trained model, on the run's split when it is known."""
    encoder, metric = load_encoder(args.model)
    x, y, groups = load_data(args.data, x_key=args.x_key,
                             groups_key=args.groups_key)
    expected = tuple(encoder.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"The data's examples have shape {tuple(x.shape[1:])} but the "
            f"model expects {expected}.")
    prepare_output(args.out, args.overwrite)
    run_report = os.path.join(os.path.dirname(args.model), "report.json")
    parts: dict = {"all": (x, y)}
    trained: Optional[dict] = None
    if os.path.isfile(run_report):
        with open(run_report) as handle:
            trained = json.load(handle).get("arguments")
    if trained and trained.get("data") == args.data:
        parts = split(x, y, groups,
                      holdout_classes=trained["holdout_classes"],
                      holdout_fraction=trained["holdout_fraction"],
                      heldout_fraction=trained["heldout_fraction"],
                      seed=trained["seed"])
        parts.pop("train")
    return write_report(args.out, parts, encoder, metric, args.seed,
                        {"model": args.model, "data": args.data})
