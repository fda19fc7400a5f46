"""What `keras-contrastive train` and `evaluate` do, as plain functions.

`run_training` loads data, holds out unseen classes and some examples of the
seen ones, trains an encoder with the chosen loss, and writes the model,
history, report and plots; `run_evaluation` reports on a saved model. The
metrics and the report live in `keras_contrastive.reporting`, the model,
loss and input pipeline of a run in `keras_contrastive.trainer_setup`. The CLI
(`keras_contrastive.cli`) is a thin argument parser over these, and
`benchmarks/quality.py` calls them directly.

`args` is the `argparse.Namespace` of the CLI (`cli.build_parser()`), so
every default is written once, in the CLI.
"""

import json
import os
import time
from typing import Optional

import keras
import numpy as np

from keras_contrastive import datasets
from keras_contrastive.distribute import get_strategy, train
from keras_contrastive.models import SiameseModel, build_encoder
from keras_contrastive.reporting import (
    evaluate_encoder,
    save_report,
    write_report,
)
from keras_contrastive.trainer_setup import (
    augmenter,
    compile_model,
    default_rescaling,
    steps_per_epoch,
    training_data,
)

LOSSES = ("pair", "batch", "ntxent")
__all__ = ["augmenter", "default_rescaling", "evaluate_encoder", "load_data",
           "load_encoder", "prepare_output", "run_evaluation", "run_training",
           "split"]


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
          heldout_fraction=0.2, seed=0) -> dict:
    """Training examples, held-out examples of them, and unseen classes.

    Whole classes (or whole groups, e.g. alphabets) are held out first:
    `holdout_classes` by id, or `holdout_fraction` of them chosen by
    `seed` (0 holds out none). Then `heldout_fraction` of every remaining
    class's examples is kept for testing (validation pairs).

    Returns:
        ``{"train": (x, y), "heldout_examples": (x, y),
        "unseen_classes": (x, y)}``.

    Raises:
        ValueError: when fewer than 2 training classes remain.
    """
    x, y = np.asarray(x), np.asarray(y)
    if holdout_classes:
        holdout_fraction = None
    if holdout_fraction == 0 and not holdout_classes:
        (x_seen, y_seen), (x_unseen, y_unseen) = (x, y), (x[:0], y[:0])
    else:
        (x_seen, y_seen), (x_unseen, y_unseen) = datasets.split_by_class(
            x, y, holdout_classes=holdout_classes,
            holdout_fraction=holdout_fraction, groups=groups, seed=seed)
    if len(np.unique(y_seen)) < 2:
        raise ValueError(
            "The held-out classes leave fewer than 2 training classes "
            f"({np.unique(y_seen).tolist()}). Received: holdout_classes="
            f"{holdout_classes!r}, holdout_fraction={holdout_fraction!r}")
    (x_train, y_train), (x_held, y_held) = datasets.split_examples(
        x_seen, y_seen, fraction=heldout_fraction, seed=seed)
    return {"train": (x_train, y_train), "heldout_examples": (x_held, y_held),
            "unseen_classes": (x_unseen, y_unseen)}


def prepare_output(out: str, overwrite: bool, *, create: bool = True):
    """Refuse a non-empty output folder unless `overwrite`; create it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"The output path {out!r} exists and is a file.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(
            f"The output folder {out!r} exists and is not empty; pass "
            "--overwrite to write into it anyway.")
    if create:
        os.makedirs(out, exist_ok=True)


def _few_shot_options(args) -> Optional[dict]:
    if not getattr(args, "few_shot_ways", 0):
        return None
    return {"ways": args.few_shot_ways, "shots": args.few_shot_shots,
            "episodes": args.few_shot_episodes}


def run_training(args, *, verbose: int = 1) -> dict:
    """Train, save and report, as `keras-contrastive train` does.

    Args:
        args: the parsed ``train`` options of `keras_contrastive.cli`.
        verbose: Keras progress output (0 silent, 1 bars, 2 lines).

    Returns:
        The report, also written to ``<args.out>/report.json``.

    Raises:
        ValueError: bad data, split or output folder.
    """
    started = time.time()
    prepare_output(args.out, args.overwrite, create=False)
    if args.tensorboard:
        _check_tensorboard()
    if args.deterministic:
        _enable_determinism()
    keras.utils.set_random_seed(args.seed)
    x, y, groups = load_data(args.data, x_key=args.x_key,
                             groups_key=args.groups_key)
    parts = split(x, y, groups, holdout_classes=args.holdout_classes,
                  holdout_fraction=args.holdout_fraction,
                  heldout_fraction=args.heldout_fraction, seed=args.seed)
    x_train, y_train = parts.pop("train")
    # Losses take class ids 0..C-1 (exact in float32, whatever y holds).
    class_ids, train_labels = np.unique(y_train, return_inverse=True)
    prepare_output(args.out, args.overwrite)
    strategy = get_strategy(args.strategy)
    with strategy.scope():
        encoder = build_encoder(
            x.shape[1:], embedding_dim=args.embedding_dim,
            architecture=args.encoder, normalize=args.normalize,
            rescaling=default_rescaling(x), base_filters=args.base_filters,
            pooling=args.pooling)
        model = compile_model(args, encoder, strategy,
                              args.epochs * steps_per_epoch(args, len(y_train)))
    dataset, steps = training_data(args, x_train, train_labels)
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
    SiameseModel(encoder, metric=args.metric).save(
        os.path.join(args.out, "model.keras"))
    encoder.save(os.path.join(args.out, "encoder.keras"))
    extra = {
        "data": {"name": args.data, "num_examples": int(len(y)),
                 "input_shape": list(x.shape[1:]), "dtype": str(x.dtype),
                 "num_train": int(len(y_train)),
                 "num_heldout_examples": int(len(parts["heldout_examples"][1])),
                 "num_unseen_examples": int(len(parts["unseen_classes"][1])),
                 "train_classes": class_ids.tolist(),
                 "unseen_classes": np.unique(parts["unseen_classes"][1])
                 .tolist()},
        "arguments": vars(args),
        "steps_per_epoch": steps,
        "final_loss": float(history.history["loss"][-1]),
        "train_time_s": round(train_time, 2),
    }
    if groups is not None:  # which groups (e.g. alphabets) were held out
        unseen = np.isin(y, parts["unseen_classes"][1])
        extra["data"]["unseen_groups"] = np.unique(
            np.asarray(groups)[unseen]).tolist()
    report = write_report(args.out, parts, encoder, metric=args.metric,
                          seed=args.seed, extra=extra, margin=args.margin,
                          few_shot_options=_few_shot_options(args))
    report["wall_time_s"] = round(time.time() - started, 2)
    save_report(args.out, report)
    return report


def _enable_determinism():
    # Without it, parallel tf.data maps draw the augmentation's stateful
    # random numbers in whichever order their threads run: two runs of
    # one seed can end 0.003 apart in ROC-AUC.
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _check_tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ImportError(
            "--tensorboard needs the tensorboard package (not part of "
            "tensorflow-cpu): pip install tensorboard") from None


def _multi_worker_type():
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy


def load_encoder(path: str):
    """`(encoder, metric)` of a saved `model.keras` (SiameseModel) or an
    encoder; ValueError naming the file when it cannot be read."""
    if not os.path.isfile(path):
        raise ValueError(f"No model file at {path!r}.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds here
        reason = str(error).strip().splitlines()
        raise ValueError(
            f"Could not read a Keras model from {path!r}: "
            f"{reason[0] if reason else type(error).__name__}") from None
    if not isinstance(model, keras.Model) or len(model.inputs) != (
            2 if isinstance(model, SiameseModel) else 1):
        raise ValueError(f"{path!r} is not a SiameseModel or an encoder.")
    metric = getattr(model, "metric", "euclidean")
    encoder = model.encoder if isinstance(model, SiameseModel) else model
    return encoder, metric


def run_evaluation(args) -> dict:
    """Report for a trained model, on the run's split when it is known.

    When the training run's ``report.json`` sits beside the model, its
    validation threshold is applied (``at_validation_threshold``), and if
    the data is the same its split is reused; other data is evaluated as
    one part, ``all``.
    """
    encoder, metric = load_encoder(args.model)
    x, y, groups = load_data(args.data, x_key=args.x_key,
                             groups_key=args.groups_key)
    expected = tuple(encoder.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"The data's examples have shape {tuple(x.shape[1:])} but the "
            f"model {args.model!r} expects {expected}.")
    prepare_output(args.out, args.overwrite)
    run_report = os.path.join(os.path.dirname(args.model), "report.json")
    parts: dict = {"all": (x, y)}
    trained: dict = {}
    if os.path.isfile(run_report):
        with open(run_report) as handle:
            trained = json.load(handle)
    arguments = trained.get("arguments") or {}
    same_data = (arguments.get("data") == args.data
                 and arguments.get("x_key", "x") == args.x_key)
    if same_data:
        parts = split(x, y, groups,
                      holdout_classes=arguments["holdout_classes"],
                      holdout_fraction=arguments["holdout_fraction"],
                      heldout_fraction=arguments["heldout_fraction"],
                      seed=arguments["seed"])
        parts.pop("train")
    extra = {"model": args.model, "data": args.data,
             "split_from": run_report if same_data else None}
    return write_report(
        args.out, parts, encoder, metric=metric, seed=args.seed, extra=extra,
        threshold=None if same_data else trained.get("validation_threshold"),
        margin=arguments.get("margin"),
        few_shot_options=_few_shot_options(args))
