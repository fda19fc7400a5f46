"""What a `keras-contrastive train` run trains, and on what.

The model and loss of each ``--loss`` (with the optional instance term),
the tf.data pipeline that feeds it, the augmentation and the learning
rate, from the CLI's `argparse.Namespace`. `keras_contrastive.trainer`
runs them.
"""

import keras
import numpy as np

from keras_contrastive import data as pipelines
from keras_contrastive.layers import ProjectionHead
from keras_contrastive.losses import (
    BatchContrastiveLoss,
    ContrastiveLoss,
    NTXentLoss,
)
from keras_contrastive.losses import nt_xent_loss as _nt_xent_loss
from keras_contrastive.models import SiameseModel

__all__ = ["augmenter", "compile_model", "default_rescaling",
           "steps_per_epoch", "training_data"]


def default_rescaling(x):
    """Scale raw pixel values inside the model: uint8 -> [0, 1]."""
    if x.dtype == np.uint8:
        return 1.0 / 255.0
    return None


def augmenter(x_shape, seed, *, value_range=1.0, strength=1.0):
    """Random affine jitter and a little noise for image batches.

    Per image: rotation up to ``15 * strength`` degrees, zoom and shifts
    up to ``10% * strength`` of the side (borders repeat the edge pixels,
    so white-background images such as Omniglot stay white), then Gaussian
    noise of ``0.02 * value_range`` (pixels are augmented raw, before the
    model's own scaling). None for non-images (rank < 3 with the batch).
    """
    if len(x_shape) < 3 or strength <= 0:
        return None
    layers = keras.Sequential([
        keras.layers.RandomRotation(strength / 24, fill_mode="nearest",
                                    seed=seed),
        keras.layers.RandomZoom(0.1 * strength, fill_mode="nearest",
                                seed=seed + 1),
        keras.layers.RandomTranslation(0.1 * strength, 0.1 * strength,
                                       fill_mode="nearest", seed=seed + 2),
        keras.layers.Rescaling(1.0 / value_range),
        keras.layers.GaussianNoise(0.02, seed=seed + 3),
        keras.layers.Rescaling(value_range),
    ])

    def augment(batch):
        images = keras.ops.cast(batch, "float32")
        if len(images.shape) == 3:  # [N, H, W]: no channel axis
            return layers(images[..., None], training=True)[..., 0]
        return layers(images, training=True)
    return augment


def _augment_for(args, x):
    if not args.augment:
        return None
    value_range = 255.0 if x.dtype == np.uint8 else float(
        max(1.0, np.max(x[:1000]))) if x.size else 1.0
    return augmenter(x.shape, args.seed, value_range=value_range,
                     strength=args.augment_strength)


def steps_per_epoch(args, num_train: int) -> int:
    """``--steps-per-epoch``, by default one pass over the training set."""
    return args.steps_per_epoch or max(1, num_train // args.batch_size)


def training_data(args, x, y):
    """The tf.data pipeline and steps per epoch for `args.loss`."""
    import tensorflow as tf

    augment = _augment_for(args, x)
    steps = steps_per_epoch(args, len(x))
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
    views = 2 if args.instance_weight > 0 else 1
    num_classes = len(np.unique(y))
    batch = max(2, args.batch_size // views)
    per_class = min(args.examples_per_class, batch // 2)
    classes = min(num_classes, max(2, batch // per_class))
    # Few classes: more examples of each, so the batch keeps its size.
    per_class = max(per_class, batch // classes)
    dataset = pipelines.class_balanced_dataset(
        x, y, classes_per_batch=classes, examples_per_class=per_class,
        seed=args.seed)
    if views == 1:
        if augment is not None:
            dataset = dataset.map(
                lambda images, labels: (augment(images), labels),
                num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE), steps

    if augment is None:  # --no-augment: two identical views
        augment = lambda images: tf.cast(images, "float32")  # noqa: E731
    dataset = pipelines.augmented_views(dataset, augment, with_labels=True)
    return dataset, steps


class _WithInstanceLoss(keras.losses.Loss):
    """A class loss plus ``weight`` x NT-Xent between two views of each
    example: ``y_true`` is `[B, 2]`, (class label, sample id) per row, as
    `augmented_views(..., with_labels=True)` yields.

    The instance term keeps what tells single examples apart, which the
    class term alone would collapse; that is what transfers to classes
    never trained on. With `split`, ``y_pred[:, :split]`` is the embedding
    (class term) and ``y_pred[:, split:]`` an instance projection of it.
    """

    def __init__(self, class_loss, *, weight, temperature, cross_replica,
                 split=None, name="class_and_instance_loss"):
        super().__init__(name=name)
        self.class_loss = class_loss
        self.weight = weight
        self.temperature = temperature
        self.cross_replica = cross_replica
        self.split = split

    def call(self, y_true, y_pred):
        embedding, projection = y_pred, y_pred
        if self.split is not None:
            embedding = y_pred[:, :self.split]
            projection = y_pred[:, self.split:]
        class_term = self.class_loss.call(y_true[:, 0], embedding)
        instance_term = _nt_xent_loss(
            y_true[:, 1], projection, temperature=self.temperature,
            cross_replica=self.cross_replica)
        return class_term + self.weight * instance_term


def compile_model(args, encoder, strategy, total_steps):
    """The model that is trained, compiled with the loss of `args.loss`.

    In-batch losses train a wrapper around the encoder, so the saved
    encoder carries no training configuration.
    """
    cross_replica = strategy.num_replicas_in_sync > 1
    optimizer = keras.optimizers.Adam(_learning_rate(args, total_steps))
    if args.loss == "pair":
        model = SiameseModel(encoder, metric=args.metric)
        model.compile(optimizer=optimizer, loss=ContrastiveLoss(
            margin=args.margin, positive_margin=args.positive_margin))
        return model
    inputs = keras.Input(encoder.input_shape[1:],
                         dtype=encoder.inputs[0].dtype)
    outputs = encoder(inputs)
    if args.loss == "batch":
        loss = BatchContrastiveLoss(
            margin=args.margin, positive_margin=args.positive_margin,
            metric=args.metric, miner=args.miner, cross_replica=cross_replica)
    else:
        loss = NTXentLoss(temperature=args.temperature,
                          cross_replica=cross_replica)
        outputs = ProjectionHead(
            args.embedding_dim, hidden_units=(args.embedding_dim * 2,),
            name="projection_head")(outputs)
    if args.instance_weight > 0:
        split = None
        if args.instance_head:
            split = outputs.shape[-1]
            head = ProjectionHead(
                args.embedding_dim, hidden_units=(args.embedding_dim * 2,),
                name="instance_head")(outputs)
            outputs = keras.layers.Concatenate()([outputs, head])
        loss = _WithInstanceLoss(
            loss, weight=args.instance_weight,
            temperature=args.instance_temperature,
            cross_replica=cross_replica, split=split)
    model = keras.Model(inputs, outputs, name="training_model")
    model.compile(optimizer=optimizer, loss=loss)
    return model


def _learning_rate(args, total_steps):
    """Constant, or cosine decay to 0 over the run (``--lr-schedule``)."""
    if args.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=max(1, total_steps))
    return args.learning_rate
