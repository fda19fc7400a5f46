"""Keras layers: the distance between two embeddings, a projection head."""

from typing import Sequence

import keras
from keras import ops

from keras_contrastive import distances


@keras.saving.register_keras_serializable(package="keras_contrastive")
class PairDistance(keras.layers.Layer):
    """Distance between two batches of embeddings, one value per pair.

    Called on ``[a, b]`` with ``a, b`` of shape `[N, D]`, returns `[N, 1]`
    distances. The distance is computed in float32 even under a
    mixed-precision policy (squared distances overflow float16 quickly) and
    returned in the layer's compute dtype. Euclidean distance has a finite
    gradient at zero distance (identical pairs), also under XLA.

    This is the head of a Siamese network: its output goes straight into
    `keras_contrastive.losses.ContrastiveLoss`. Do not put a sigmoid after
    it; the loss's margin is measured in distance units.

    Args:
        metric: ``"euclidean"`` (default), ``"squared_euclidean"``,
            ``"cosine"`` or a paired-row callable ``f(a, b) -> [N]``.
        **kwargs: standard `keras.layers.Layer` arguments (`name`,
            `dtype`, ...).

    Example:
    >>> import keras
    >>> from keras_contrastive.layers import PairDistance
    >>> a = keras.Input((16,))
    >>> b = keras.Input((16,))
    >>> distance = PairDistance()([a, b])  # shape (None, 1)
    """

    def __init__(self, metric="euclidean", **kwargs):
        # Inputs are cast to float32 here, not to a float16 compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.metric = distances.serialize(metric)
        self._distance = distances.get(metric)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "`PairDistance` must be called on a list of two tensors "
                f"[a, b]. Received: {type(inputs).__name__} of length "
                f"{len(inputs) if isinstance(inputs, (list, tuple)) else 1}"
            )
        a, b = inputs
        distance = self._distance(a, b)
        return ops.cast(ops.expand_dims(distance, -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update({"metric": self.metric})
        config.pop("autocast", None)
        return config


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ProjectionHead(keras.layers.Layer):
    """The MLP that maps encoder features to the space the loss sees.

    ``Dense(h1) -> activation -> ... -> Dense(output_dim) [-> L2 normalise]``

    SimCLR (Chen et al. 2020) showed that a contrastive loss applied after a
    small non-linear head, rather than on the encoder's features, gives
    better features; the head is dropped after training. The final
    normalisation reuses `keras.layers.UnitNormalization`.

    Args:
        output_dim: size of the projected embedding.
        hidden_units: sizes of the hidden Dense layers (may be empty).
        activation: activation of the hidden layers.
        normalize: L2-normalise the output (what NT-Xent and cosine
            distances expect).
        **kwargs: standard layer arguments.

    Shapes:
        `[N, F] -> [N, output_dim]`.

    Example:
    >>> from keras_contrastive.layers import ProjectionHead
    >>> head = ProjectionHead(output_dim=64, hidden_units=(128,))
    """

    def __init__(
        self,
        output_dim: int = 128,
        hidden_units: Sequence[int] = (256,),
        activation="relu",
        normalize: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(
                "`output_dim` must be a positive integer. "
                f"Received: output_dim={output_dim!r}"
            )
        hidden_units = tuple(hidden_units)
        if any(not isinstance(u, int) or u < 1 for u in hidden_units):
            raise ValueError(
                "`hidden_units` must be positive integers. "
                f"Received: hidden_units={hidden_units!r}"
            )
        self.output_dim = output_dim
        self.hidden_units = hidden_units
        self.activation = keras.activations.serialize(
            keras.activations.get(activation)
        )
        self.normalize = bool(normalize)
        self.hidden_layers = [
            keras.layers.Dense(
                units,
                activation=activation,
                dtype=self.dtype_policy,
                name=f"hidden_{i}",
            )
            for i, units in enumerate(hidden_units)
        ]
        self.output_layer = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="output"
        )
        self.normalization = (
            keras.layers.UnitNormalization(dtype=self.dtype_policy)
            if normalize else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.output_layer.build(shape)

    def call(self, inputs):
        x = inputs
        for layer in self.hidden_layers:
            x = layer(x)
        x = self.output_layer(x)
        if self.normalization is not None:
            x = self.normalization(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_dim": self.output_dim,
                "hidden_units": list(self.hidden_units),
                "activation": self.activation,
                "normalize": self.normalize,
            }
        )
        return config


__all__ = ["PairDistance", "ProjectionHead"]
