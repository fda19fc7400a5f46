"""Internals of `keras_contrastive.models.build_encoder`: the bodies
(CNN, MLP, backbone), how a feature map is pooled, and argument checks.
"""

import math
import numbers
from typing import Optional, Sequence, Union

import keras

ARCHITECTURES = ("cnn", "mlp")
# The CNN downsamples until the feature map is about this size, at most
# `_MAX_STAGES` times: 8x8 gets one stage, 28x28 two, 32x32 three, 105x105
# four, so every size from 8 to 105 (and beyond) ends in a small map.
_TARGET_SIDE = 4
_MAX_STAGES = 4
_MLP_UNITS = (256, 256)
POOLINGS = ("auto", "average", "flatten")
# `pooling="auto"` flattens feature maps of at most this many positions.
_FLATTEN_MAX_POSITIONS = 16

Rescaling = Union[None, float, Sequence[float], keras.layers.Layer]


def check_input_shape(input_shape) -> tuple:
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


def rescaling_layer(rescaling: Rescaling) -> Optional[keras.layers.Layer]:
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


def _pool(x, pooling: str):
    """A 4-D feature map to a vector: average-pooled or flattened.

    ``"auto"`` flattens a map of at most `_FLATTEN_MAX_POSITIONS` positions
    and averages a larger one. On a map that small (the 4x4 of 8x8 digits)
    average pooling throws away where each stroke is, most of what such an
    image holds; a larger map keeps flattening's parameter count in check.
    """
    positions = (x.shape[1] or 0) * (x.shape[2] or 0)
    if pooling == "flatten" or (
        pooling == "auto" and 0 < positions <= _FLATTEN_MAX_POSITIONS
    ):
        return keras.layers.Flatten(name="pool")(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def cnn_body(x, base_filters: int, pooling: str):
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
    return _pool(x, pooling)


def mlp_body(x):
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(_MLP_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    return x


def backbone_body(x, backbone: keras.layers.Layer, pooling: str):
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
    if len(x.shape) == 4:  # "auto": the usual average for backbones
        x = _pool(x, "average" if pooling == "auto" else pooling)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name="flatten")(x)
    return x
