"""Pieces shared by the losses: argument checks and the per-pair formula."""


import keras
from keras import ops

from keras_contrastive._validation import check_number  # noqa: F401


def resolve(identifier, registry: dict, *, argument: str, usage: str):
    """A registry entry by name, a callable as is, or a saved callable.

    Shared by `distances.get` and `mining.get`: `argument` names the
    argument in errors, `usage` describes the callable form.
    """
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str):
        if identifier not in registry:
            raise ValueError(
                f"Unknown `{argument}`: {identifier!r}. Valid names are "
                f"{sorted(registry)}, or pass a callable {usage}."
            )
        return registry[identifier]
    if callable(identifier):
        return identifier
    raise TypeError(
        f"`{argument}` must be a name from {sorted(registry)} or a callable "
        f"{usage}. Received: {argument}={identifier!r} of type "
        f"{type(identifier).__name__}"
    )


def registered_name(function, registry: dict):
    """The name under which `function` is in `registry`, or None."""
    for name, entry in registry.items():
        if function is entry:
            return name
    return None


def is_concrete(x) -> bool:
    """True when `x` holds values now (eager), False while tracing a graph."""
    if keras.backend.is_keras_tensor(x):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True


def check_margins(margin, positive_margin):
    """Validate the two margins of the contrastive loss."""
    margin = check_number("margin", margin, minimum=0.0, exclusive=True)
    positive_margin = check_number(
        "positive_margin", positive_margin, minimum=0.0
    )
    if positive_margin >= margin:
        raise ValueError(
            "`positive_margin` must be smaller than `margin`, or similar "
            "pairs would be pushed apart farther than dissimilar ones. "
            f"Received: positive_margin={positive_margin}, margin={margin}"
        )
    return margin, positive_margin


def check_similar_label(similar_label):
    if isinstance(similar_label, bool) or similar_label not in (0, 1):
        raise ValueError(
            "`similar_label` must be 0 (0 = similar pair, the default and "
            "the keras.io convention) or 1 (1 = similar pair, the "
            "TensorFlow Addons convention). "
            f"Received: similar_label={similar_label!r}"
        )
    return int(similar_label)


def margin_loss(distance, is_similar, *, margin, positive_margin, squared):
    """The per-pair contrastive formula on distances.

    ``[similar] * max(0, D - positive_margin)^p
    + [dissimilar] * max(0, margin - D)^p`` with ``p = 2 if squared else 1``.
    `is_similar` is a boolean tensor broadcastable to `distance`.
    """
    dtype = distance.dtype
    zero = ops.zeros((), dtype)
    positive = ops.maximum(distance - ops.cast(positive_margin, dtype), zero)
    negative = ops.maximum(ops.cast(margin, dtype) - distance, zero)
    if squared:
        positive, negative = ops.square(positive), ops.square(negative)
    return ops.where(is_similar, positive, negative)
