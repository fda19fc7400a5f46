"""Argument checks that need nothing but Python (evaluation imports no
Keras), shared by every module."""

import math
import numbers


def check_integer(name: str, value, *, minimum: int = 1) -> int:
    """Raise unless `value` is an integer (not a bool) of at least `minimum`.

    TypeError for a value that is not an integer, ValueError for one below
    `minimum`; both name the argument and show what was received.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_number(name: str, value, *, minimum=None, exclusive=False):
    """Raise unless `value` is a finite real number (above `minimum`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value}")
    if minimum is not None:
        if exclusive and value <= minimum:
            raise ValueError(
                f"`{name}` must be greater than {minimum}. "
                f"Received: {name}={value}"
            )
        if not exclusive and value < minimum:
            raise ValueError(
                f"`{name}` must be at least {minimum}. "
                f"Received: {name}={value}"
            )
    return float(value)
