"""Encoders and the Siamese model that compares two inputs by distance.

`build_encoder` makes the network that maps one input to an embedding
(a small CNN, an MLP, or any Keras backbone plus a projection), with the
input scaling inside the model so a saved encoder accepts raw arrays.
`SiameseModel` runs one shared encoder on both inputs of a pair and outputs
their distance through `keras_contrastive.layers.PairDistance`.
"""

import math
import numbers
from typing import Optional, Sequence, Union

import keras
import numpy as np

from keras_contrastive import distances
from keras_contrastive._validation import check_integer
from keras_contrastive.layers import PairDistance
from keras_contrastive.losses import ContrastiveLoss

_ARCHITECTURES = ("cnn", "mlp")
# The CNN downsamples until the feature map is about this size, at most
# `_MAX_STAGES` times: 8x8 gets one stage, 28x28 two, 32x32 three, 105x105
# four, so every size from 8 to 105 (and beyond) ends in a small map.
_TARGET_SIDE = 4
_MAX_STAGES = 4
_MLP_UNITS = (256, 256)

Rescaling = Union[None, float, Sequence[float], keras.layers.Layer]


def _check_input_shape(input_shape) -> tuple:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or not shape
        or any(
            isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
            for d in shape
        )
    ):
        raise ValueError(
            "`input_shape` must be a tuple of positive integers without the "
            "batch axis, such as (28, 28), (28, 28, 1) or (32, 32, 3). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def _rescaling_layer(rescaling: Rescaling) -> Optional[keras.layers.Layer]:
    if rescaling is None:
        return None
    if isinstance(rescaling, keras.layers.Layer):
        return rescaling
    if isinstance(rescaling, numbers.Real) and not isinstance(rescaling, bool):
        return keras.layers.Rescaling(float(rescaling), name="rescaling")
    if (
        isinstance(rescaling, (tuple, list))
        and len(rescaling) == 2
        and all(isinstance(v, numbers.Real) for v in rescaling)
    ):
        scale, offset = rescaling
        return keras.layers.Rescaling(
            float(scale), float(offset), name="rescaling"
        )
    raise TypeError(
        "`rescaling` must be None, a number (scale), a pair (scale, offset) "
        "or a Keras layer such as an adapted keras.layers.Normalization. "
        f"Received: rescaling={rescaling!r}"
    )


def _conv_block(x, filters: int, name: str):
    x = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _cnn(x, base_filters: int):
    height, width = x.shape[1], x.shape[2]
    side = min(height, width)
    stages = 0
    if side >= 2 * _TARGET_SIDE:
        stages = min(_MAX_STAGES, int(math.log2(side / _TARGET_SIDE)))
    filters = base_filters
    for stage in range(stages):
        x = _conv_block(x, filters, f"stage{stage + 1}")
        x = keras.layers.MaxPooling2D(2, name=f"stage{stage + 1}_pool")(x)
        filters = min(filters * 2, 4 * base_filters)
    x = _conv_block(x, filters, "top")
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def _mlp(x):
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(_MLP_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    return x


def _backbone(x, backbone: keras.layers.Layer):
    expected = getattr(backbone, "input_shape", None)
    if isinstance(expected, tuple) and len(expected) == len(x.shape):
        channels = expected[-1]
        if channels == 3 and x.shape[-1] == 1:
            # A colour backbone on grey images: repeat the channel.
            x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
        for want, got in zip(expected[1:], x.shape[1:]):
            if want is not None and want != got:
                raise ValueError(
                    "The backbone passed as `architecture` expects inputs of "
                    f"shape {expected[1:]}, but the encoder gives it "
                    f"{tuple(x.shape[1:])}. Build the backbone with "
                    "input_shape matching `input_shape`."
                )
    x = backbone(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name="flatten")(x)
    return x


def build_encoder(
    input_shape: Sequence[int],
    *,
    embedding_dim: int = 64,
    architecture: Union[str, keras.layers.Layer] = "cnn",
    normalize: bool = False,
    rescaling: Rescaling = None,
    base_filters: int = 32,
    name: str = "encoder",
) -> keras.Model:
    """Build a network that maps one input to one embedding.

    ``input -> [Reshape to (H, W, 1)] -> [rescaling] -> body
    -> Dense(embedding_dim) -> [UnitNormalization]``

    Bodies:

    * ``"cnn"``: blocks of ``Conv3x3 -> BatchNorm -> ReLU -> MaxPool2``
      (``base_filters`` channels, doubling, at most ``4 * base_filters``),
      as many as bring the smaller side down to about 4 pixels (8x8: one,
      28x28: two, 32x32: three, 105x105 and larger: four), then one more
      conv block and global average pooling. Grey or colour, any size.
    * ``"mlp"``: flatten and two Dense(256, ReLU) layers (vectors or
      images).
    * a Keras model or layer (a backbone such as
      ``keras.applications.MobileNetV2(weights=None, include_top=False,
      input_shape=...)``): its feature map is average-pooled (or flattened)
      and projected to `embedding_dim`. A grey input given to a backbone
      that expects 3 channels is repeated to 3 channels.

    The output is linear (no activation): the loss measures distances in
    this space. A 2-D `input_shape` ``(H, W)`` for ``"cnn"`` or a backbone
    gets a channel axis inside the model, so ``(N, H, W)`` arrays work.

    Args:
        input_shape: shape of one input without the batch axis: ``(H, W)``,
            ``(H, W, C)`` or ``(D,)`` (``"mlp"`` only).
        embedding_dim: size of the embedding.
        architecture: ``"cnn"``, ``"mlp"`` or a Keras model used as backbone.
        normalize: L2-normalise the embeddings
            (``keras.layers.UnitNormalization``), as cosine distance and
            NT-Xent expect.
        rescaling: input scaling inside the model, so the saved encoder
            takes the raw arrays the trainer was given. None (default):
            inputs are used as they are; a number ``s``: ``x * s`` (e.g.
            ``1 / 255`` for uint8 images, ``1 / 16`` for scikit-learn
            digits); a pair ``(s, o)``: ``x * s + o``; or any Keras layer,
            such as a ``keras.layers.Normalization(axis=None)`` adapted on
            the training data.
        base_filters: channels of the first CNN block.
        name: name of the model.

    Returns:
        A functional `keras.Model` from `[N, *input_shape]` to
        `[N, embedding_dim]`.

    Raises:
        ValueError: for a bad `input_shape`, `embedding_dim`, an unknown
            `architecture` name, or a rank that does not fit it.
        TypeError: for an `architecture` or `rescaling` of the wrong type.

    Example:
    >>> from keras_contrastive.models import build_encoder
    >>> encoder = build_encoder((28, 28), embedding_dim=32,
    ...                         rescaling=1 / 255)
    >>> encoder.output_shape
    (None, 32)

    Reference:
        Koch, Zemel, Salakhutdinov. Siamese Neural Networks for One-shot
        Image Recognition. ICML Deep Learning Workshop 2015.
    """
    shape = _check_input_shape(input_shape)
    embedding_dim = check_integer("embedding_dim", embedding_dim)
    base_filters = check_integer("base_filters", base_filters)
    is_backbone = isinstance(architecture, keras.layers.Layer)
    if not is_backbone:
        if not isinstance(architecture, str):
            raise TypeError(
                f"`architecture` must be one of {list(_ARCHITECTURES)} or a "
                "Keras model. Received: architecture="
                f"{architecture!r} of type {type(architecture).__name__}"
            )
        if architecture not in _ARCHITECTURES:
            raise ValueError(
                f"Unknown `architecture`: {architecture!r}. Valid names are "
                f"{list(_ARCHITECTURES)}, or pass a Keras model as backbone."
            )
    image_body = is_backbone or architecture == "cnn"
    if image_body and len(shape) not in (2, 3):
        raise ValueError(
            "A CNN or backbone encoder needs images: `input_shape` (H, W) "
            f"or (H, W, C). Received: input_shape={shape}"
        )
    inputs = keras.Input(shape, name="input")
    x = inputs
    if image_body and len(shape) == 2:
        x = keras.layers.Reshape(shape + (1,), name="add_channel")(x)
    scale = _rescaling_layer(rescaling)
    if scale is not None:
        x = scale(x)
    if is_backbone:
        x = _backbone(x, architecture)
    elif architecture == "cnn":
        x = _cnn(x, int(base_filters))
    else:
        x = _mlp(x)
    x = keras.layers.Dense(int(embedding_dim), name="embedding")(x)
    if normalize:
        x = keras.layers.UnitNormalization(name="unit_normalization")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SiameseModel(keras.Model):
    """A Siamese network: one shared encoder, the distance of a pair out.

    ``D(a, b) = metric(encoder(a), encoder(b))``, output shape `[N, 1]`.

    Built as a functional graph (inputs ``[a, b]`` with the encoder's input
    shape, output through `keras_contrastive.layers.PairDistance`), so
    `summary`, `fit`, `predict` and saving behave as for any functional
    model, while its config is its constructor arguments: a ``.keras`` file
    loads back as a `SiameseModel` with `keras.saving.load_model` and no
    `custom_objects` (once `keras_contrastive.models` is imported).

    There is no sigmoid head: the output is a distance, so the margin of
    `keras_contrastive.losses.ContrastiveLoss` is measured in the same
    units. Pair labels for training: ``0`` = similar pair unless the loss
    is built with ``similar_label=1``.

    Args:
        encoder: a `keras.Model` with one input, mapping `[N, ...]` to
            embeddings `[N, D]` (e.g. from `build_encoder`).
        metric: ``"euclidean"`` (default), ``"squared_euclidean"``,
            ``"cosine"`` or a registered callable ``f(a, b) -> [N]``.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Shapes:
        inputs: ``[a, b]``, each `[N, *encoder.input_shape[1:]]`;
        output: distances `[N, 1]`.

    Example:
    >>> from keras_contrastive.models import SiameseModel, build_encoder
    >>> model = SiameseModel(build_encoder((8, 8), rescaling=1 / 16))
    >>> model.compile(optimizer="adam")  # loss="auto": ContrastiveLoss()
    >>> # model.fit([x_a, x_b], pair_labels, epochs=5)
    >>> # embeddings = model.embed(x)

    Reference:
        Bromley et al. Signature Verification using a "Siamese" Time Delay
        Neural Network. NIPS 1993. Hadsell, Chopra, LeCun. Dimensionality
        Reduction by Learning an Invariant Mapping. CVPR 2006.
    """

    def __init__(self, encoder: keras.Model, metric="euclidean", **kwargs):
        if not isinstance(encoder, keras.Model):
            raise TypeError(
                "`encoder` must be a keras.Model (e.g. from build_encoder). "
                f"Received: encoder of type {type(encoder).__name__}"
            )
        try:
            encoder_inputs = encoder.inputs
        except (AttributeError, ValueError):
            encoder_inputs = None
        if not encoder_inputs or len(encoder_inputs) != 1:
            raise ValueError(
                "`encoder` must be a built model with exactly one input "
                "(a functional model, or a Sequential that starts with "
                f"keras.Input). Received: inputs={encoder_inputs!r}"
            )
        distances.get(metric)
        spec = encoder_inputs[0]
        shape = tuple(spec.shape[1:])
        a = keras.Input(shape, dtype=spec.dtype, name="a")
        b = keras.Input(shape, dtype=spec.dtype, name="b")
        distance = PairDistance(metric, name="distance")(
            [encoder(a), encoder(b)]
        )
        super().__init__(inputs=[a, b], outputs=distance, **kwargs)
        self.encoder = encoder
        self.metric = distances.serialize(metric)

    def embed(self, x, batch_size: int = 256) -> np.ndarray:
        """Embeddings of `x` as a numpy array `[N, D]`.

        Args:
            x: inputs `[N, *input_shape]` (raw arrays; the encoder does
                its own scaling) or a `tf.data.Dataset` of them.
            batch_size: batch size for arrays.

        Returns:
            numpy array `[N, D]`.
        """
        batch_size = check_integer("batch_size", batch_size)
        expected = tuple(self.encoder.inputs[0].shape[1:])
        shape = getattr(x, "shape", None)
        if shape is not None and tuple(shape[1:]) != expected:
            raise ValueError(
                f"`x` must have shape (N, {', '.join(map(str, expected))}) "
                f"to match the encoder's input. Received: x.shape="
                f"{tuple(shape)}"
            )
        return np.asarray(
            self.encoder.predict(x, batch_size=batch_size, verbose=0)
        )

    def compile(self, optimizer="adam", loss="auto", **kwargs):
        """Configure training; ``loss="auto"`` uses `ContrastiveLoss()`.

        Args:
            optimizer: a Keras optimizer or its name (default ``"adam"``).
            loss: ``"auto"`` (`keras_contrastive.losses.ContrastiveLoss`
                with margin 1.0 and pair labels ``0`` = similar), or any
                Keras loss on `[N, 1]` distances.
            **kwargs: other `keras.Model.compile` arguments.
        """
        if isinstance(loss, str) and loss == "auto":
            loss = ContrastiveLoss()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compiling on load when `compile` is overridden; ours
        # only resolves "auto", and the saved config holds the real loss.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "metric": self.metric,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        encoder = config.pop("encoder")
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(
                encoder, custom_objects=custom_objects
            )
        return cls(encoder=encoder, **config)


__all__ = ["SiameseModel", "build_encoder"]
