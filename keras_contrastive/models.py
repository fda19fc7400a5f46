"""Encoders and the Siamese model that compares two inputs by distance.

`build_encoder` makes the network that maps one input to an embedding
(a small CNN, an MLP, or any Keras backbone plus a projection), with the
input scaling inside the model so a saved encoder accepts raw arrays.
`SiameseModel` runs one shared encoder on both inputs of a pair and outputs
their distance through `keras_contrastive.layers.PairDistance`.
"""

from typing import Sequence, Union

import keras
import numpy as np

from keras_contrastive import distances
from keras_contrastive._encoders import (
    ARCHITECTURES,
    POOLINGS,
    Rescaling,
    backbone_body,
    check_input_shape,
    cnn_body,
    mlp_body,
    rescaling_layer,
)
from keras_contrastive._validation import check_integer
from keras_contrastive.layers import PairDistance
from keras_contrastive.losses import ContrastiveLoss


def build_encoder(
    input_shape: Sequence[int],
    *,
    embedding_dim: int = 64,
    architecture: Union[str, keras.layers.Layer] = "cnn",
    normalize: bool = False,
    rescaling: Rescaling = None,
    base_filters: int = 32,
    pooling: str = "auto",
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
      conv block and `pooling`. Grey or colour, any size.
    * ``"mlp"``: flatten and two Dense(256, ReLU) layers (vectors or
      images).
    * a Keras model or layer (a backbone such as
      ``keras.applications.MobileNetV2(weights=None, include_top=False,
      input_shape=...)``): its feature map is pooled as `pooling` says
      (other outputs are flattened) and projected to `embedding_dim`. A
      grey input given to a backbone that expects 3 channels is repeated
      to 3 channels.

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
        pooling: how the last feature map becomes a vector:
            ``"average"`` (global average pooling), ``"flatten"``, or
            ``"auto"`` (default): for ``"cnn"``, flatten a map of at most
            16 positions (the 4x4 map of 8x8 digits, where averaging
            discards where the strokes are) and average a larger one (the
            7x7 of 28x28 images); for a backbone, average. On digits,
            flattening raised held-out and unseen-class ROC-AUC together
            (docs/cli.md).
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
    shape = check_input_shape(input_shape)
    embedding_dim = check_integer("embedding_dim", embedding_dim)
    base_filters = check_integer("base_filters", base_filters)
    is_backbone = isinstance(architecture, keras.layers.Layer)
    if not is_backbone:
        if not isinstance(architecture, str):
            raise TypeError(
                f"`architecture` must be one of {list(ARCHITECTURES)} or a "
                "Keras model. Received: architecture="
                f"{architecture!r} of type {type(architecture).__name__}"
            )
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"Unknown `architecture`: {architecture!r}. Valid names are "
                f"{list(ARCHITECTURES)}, or pass a Keras model as backbone."
            )
    if pooling not in POOLINGS:
        raise ValueError(
            f"Unknown `pooling`: {pooling!r}. Valid names are "
            f"{list(POOLINGS)}."
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
    scale = rescaling_layer(rescaling)
    if scale is not None:
        x = scale(x)
    if is_backbone:
        x = backbone_body(x, architecture, pooling)
    elif architecture == "cnn":
        x = cnn_body(x, int(base_filters), pooling)
    else:
        x = mlp_body(x)
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
