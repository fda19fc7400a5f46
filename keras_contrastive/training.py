"""A training loop that works under every `tf.distribute` strategy.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585: a `PerReplica` batch reaches `strategy.reduce`
while Keras builds the model symbolically). `train` runs the model's own
`train_step` inside `strategy.run`, so losses, metrics, loss scaling and
optimizers behave exactly as under `fit`, and adds what long multi-machine
jobs need: checkpoints every N steps and resumption after a crash.
"""

import os
import shutil
from typing import Callable, Optional, Sequence, Union

import keras
import numpy as np

from keras_contrastive._tf import tf
from keras_contrastive.strategies import per_replica_batch_size

_CHECKPOINT_PREFIX = "ckpt"


def worker_info(strategy) -> tuple:
    """`(task_type, task_id, is_chief)` of this process in `strategy`."""
    jobs = _cluster(strategy)
    if not jobs:
        return None, 0, True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    is_chief = task_type in (None, "chief") or (
        task_type == "worker" and task_id == 0 and "chief" not in jobs
    )
    return task_type, task_id, is_chief


def _cluster(strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.cluster_spec().as_dict() if resolver is not None else {}


def _input_context(strategy):
    """The `InputContext` of this worker, as tf.distribute would pass it."""
    jobs = _cluster(strategy)
    task_type, task_id, _ = worker_info(strategy)
    workers = len(jobs.get("chief", [])) + len(jobs.get("worker", []))
    pipeline = task_id + (1 if "chief" in jobs and task_type == "worker"
                          else 0)
    return tf.distribute.InputContext(
        num_input_pipelines=max(1, workers),
        input_pipeline_id=pipeline if task_type != "chief" else 0,
        num_replicas_in_sync=strategy.num_replicas_in_sync,
    )


def _stream(dataset, strategy, skip: int):
    """A distributed, endless stream of batches, skipping `skip` batches."""
    if callable(dataset) and not isinstance(dataset, tf.data.Dataset):

        def per_worker(context):
            local = dataset(context)
            _check_dataset(local, "dataset(input_context)")
            return local.repeat().skip(skip)

        return strategy.distribute_datasets_from_function(per_worker)
    _check_dataset(dataset, "dataset")
    batch_size = tf.nest.flatten(dataset.element_spec)[0].shape[0]
    if batch_size is not None:
        per_replica_batch_size(batch_size, strategy)
    return strategy.experimental_distribute_dataset(
        dataset.repeat().skip(skip)
    )


def _check_dataset(dataset, name):
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"`{name}` must be a tf.data.Dataset of batches (or a function "
            "of a tf.distribute.InputContext returning one). "
            f"Received: {type(dataset).__name__}"
        )


def _steps_per_epoch(dataset, strategy, steps_per_epoch):
    if steps_per_epoch is not None:
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(
                "`steps_per_epoch` must be a positive integer. "
                f"Received: steps_per_epoch={steps_per_epoch!r}"
            )
        return steps_per_epoch
    if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
        dataset = dataset(_input_context(strategy))
    _check_dataset(dataset, "dataset")
    cardinality = int(dataset.cardinality())
    if cardinality <= 0:
        raise ValueError(
            "`steps_per_epoch` is required when the dataset is endless or "
            f"of unknown length. Received a dataset of cardinality "
            f"{cardinality} and steps_per_epoch=None"
        )
    return cardinality


def _first_local_batch(dataset, strategy):
    if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
        dataset = dataset(_input_context(strategy))
    return next(iter(dataset))


def _build(model, batch):
    """Create every variable (model, loss, metrics, optimizer) eagerly."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    y_pred = model(x, training=False)
    if y is not None:
        model.compute_loss(x, y, y_pred, sample_weight, training=False)
        model.compute_metrics(x, y, y_pred, sample_weight)
    model.optimizer.build(model.trainable_variables)
    model.reset_metrics()


def _logs(model) -> dict:
    return {k: float(np.asarray(v)) for k, v in
            model.get_metrics_result().items()}


class _Checkpoints:
    """Model, optimizer and step, saved by every worker, kept by the chief.

    Under MultiWorkerMirroredStrategy every worker must take part in a save;
    the others write to a scratch folder that is deleted right away.
    """

    def __init__(self, directory, model, step, strategy, keep=3):
        _, task_id, self.is_chief = worker_info(strategy)
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, step=step
        )
        self.directory = directory
        self.write_directory = (
            directory if self.is_chief
            else os.path.join(directory, f".worker-{task_id}")
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_directory, max_to_keep=keep,
            checkpoint_name=_CHECKPOINT_PREFIX,
        )
        self.last_saved = None

    def restore(self) -> Optional[str]:
        latest = tf.train.latest_checkpoint(self.directory)
        if latest is not None:
            self.checkpoint.restore(latest).expect_partial()
            self.last_saved = int(self.checkpoint.step.numpy())
        return latest

    def save_every(self, step: int, every: int):
        """Save at `step` if it is a multiple of `every` and not saved yet."""
        if step % every or step == self.last_saved:
            return
        self.last_saved = step
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self.write_directory, ignore_errors=True)


def train(
    model: keras.Model,
    dataset: Union["tf.data.Dataset", Callable],
    *,
    strategy=None,
    epochs: int = 1,
    steps_per_epoch: Optional[int] = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: Optional[int] = None,
    callbacks: Optional[Sequence[keras.callbacks.Callback]] = None,
    validation_data=None,
    validation_steps: Optional[int] = None,
    jit_compile: bool = False,
    verbose: int = 1,
) -> keras.callbacks.History:
    """Train a compiled model with `strategy.run`, under any strategy.

    Works under the default strategy, `MirroredStrategy`,
    `MultiWorkerMirroredStrategy` (where Keras 3's `fit` fails,
    keras-team/keras#20585) and `TPUStrategy`. Each step runs the model's
    own `train_step` on every replica, so loss reduction, the
    ``1 / num_replicas`` loss scaling, metrics and `LossScaleOptimizer`
    behave as under `fit`.

    Data is an endless stream: the dataset is repeated, epoch `e` is steps
    ``e * steps_per_epoch ... (e + 1) * steps_per_epoch - 1`` of it. With
    `checkpoint_dir`, model, optimizer and step are saved every
    `checkpoint_every` steps and at each epoch end; calling `train` again
    with the same arguments resumes from the latest checkpoint, skipping the
    batches already trained on, so a seeded pipeline continues exactly where
    it stopped (at most `checkpoint_every` steps are lost). Only the chief
    keeps checkpoints and shows the progress bar.

    Args:
        model: a compiled `keras.Model` created under `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches (split across
            replicas by `experimental_distribute_dataset`), or a function
            `dataset_fn(input_context) -> tf.data.Dataset` of per-replica
            batches (`distribute_datasets_from_function`: shard and seed per
            worker with `input_context.input_pipeline_id`).
        strategy: a `tf.distribute.Strategy`; default: the current one.
        epochs: number of epochs.
        steps_per_epoch: steps per epoch; default: the dataset's length
            (required for endless datasets).
        checkpoint_dir: folder for checkpoints; resumes from it if it holds
            one.
        checkpoint_every: save every N steps (default: once per epoch).
        callbacks: Keras callbacks (run on every worker).
        validation_data: a dataset of global batches, evaluated at each
            epoch end; logs get a ``val_`` prefix.
        validation_steps: batches of `validation_data` per evaluation
            (default: all).
        jit_compile: compile the per-replica step with XLA (what TPUs do
            anyway).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (chief only).

    Returns:
        A `keras.callbacks.History`, as `model.fit` returns.

    Example:
    >>> strategy = keras_contrastive.distribute.get_strategy("multi_worker")
    >>> with strategy.scope():
    ...     model = build_model()
    ...     model.compile(optimizer="adam", loss=ContrastiveLoss())
    >>> keras_contrastive.distribute.train(
    ...     model, dataset, strategy=strategy, epochs=5,
    ...     checkpoint_dir="gs://bucket/run-1", checkpoint_every=500)
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"`epochs` must be a positive integer. Received: epochs={epochs!r}"
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "`train` needs a compiled model: call model.compile(optimizer=..."
            ", loss=...) under strategy.scope() first."
        )
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            "`checkpoint_every` must be a positive integer. "
            f"Received: checkpoint_every={checkpoint_every!r}"
        )
    if not callable(dataset) or isinstance(dataset, tf.data.Dataset):
        _check_dataset(dataset, "dataset")
    steps_per_epoch = _steps_per_epoch(dataset, strategy, steps_per_epoch)
    _, _, is_chief = worker_info(strategy)

    with strategy.scope():
        _build(model, _first_local_batch(dataset, strategy))
        step = tf.Variable(0, dtype="int64", trainable=False, name="step")
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = _Checkpoints(checkpoint_dir, model, step, strategy)
        restored = checkpoints.restore()
        if restored and is_chief and verbose:
            print(f"Resuming from {restored} at step {int(step.numpy())}")
    start = int(step.numpy())

    step_function = model.train_step
    if jit_compile:
        step_function = tf.function(step_function, jit_compile=True)

    @tf.function
    def train_step(batch):
        strategy.run(step_function, args=(batch,))
        step.assign_add(1)

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=bool(verbose) and is_chief,
        verbose=verbose if is_chief else 0,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    iterator = iter(_stream(dataset, strategy, start))
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    first_epoch, first_batch = divmod(start, steps_per_epoch)
    for epoch in range(first_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        first = first_batch if epoch == first_epoch else 0
        for batch_index in range(first, steps_per_epoch):
            callback_list.on_train_batch_begin(batch_index)
            train_step(next(iterator))
            logs = _logs(model)
            callback_list.on_train_batch_end(batch_index, logs)
            if checkpoints and checkpoint_every:
                checkpoints.save_every(int(step.numpy()), checkpoint_every)
            if model.stop_training:
                break
        if validation_data is not None:
            logs.update(_evaluate(model, validation_data, strategy,
                                  validation_steps))
        if checkpoints:
            checkpoints.save_every(int(step.numpy()), 1)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history


def _evaluate(model, dataset, strategy, steps):
    _check_dataset(dataset, "validation_data")
    if steps is not None:
        dataset = dataset.take(steps)

    @tf.function
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    model.reset_metrics()
    for batch in strategy.experimental_distribute_dataset(dataset):
        test_step(batch)
    return {f"val_{k}": v for k, v in _logs(model).items()}
