"""keras-contrastive: contrastive metric learning for Keras 3.

The `keras.ops` parts (`distances`, `layers`, `losses`, `mining`) import
under any Keras backend. The parts whose job is TensorFlow's (`data`,
`datasets`, `distribute`, and what builds on them) are imported on first
use and need TensorFlow: ``pip install "keras-contrastive[cpu]"`` (or
``[tensorflow]``, ``[gpu]``, ``[tpu]``).
"""

import importlib
import os

# TensorFlow's C++ start-up INFO lines (oneDNN, CPU features) are noise for
# users; warnings and errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see
# everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

try:
    import keras  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "keras-contrastive needs Keras with a working backend, and Keras's "
        "default backend is TensorFlow. Install TensorFlow with the extra "
        'for your hardware: pip install "keras-contrastive[cpu]" (CPU '
        'only), "keras-contrastive[gpu]" (NVIDIA GPUs) or '
        '"keras-contrastive[tensorflow]"; or select another installed '
        "backend with KERAS_BACKEND=jax (the losses, layers, distances and "
        f"miners work under any backend). Original error: {error}"
    ) from error

# The keras.ops modules are imported here, so every serializable class is
# registered and a saved model loads back after `import keras_contrastive`.
from keras_contrastive import distances, layers, losses, mining, models
from keras_contrastive.layers import PairDistance, ProjectionHead
from keras_contrastive.losses import (
    BatchContrastiveLoss,
    ContrastiveLoss,
    NTXentLoss,
    batch_contrastive_loss,
    contrastive_loss,
    nt_xent_loss,
)
from keras_contrastive.models import SiameseModel, build_encoder

__version__ = "0.1.0"

_LAZY_MODULES = (
    "data",
    "datasets",
    "evaluation",
    "distribute",
    "visualization",
    "cli",
)


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"keras_contrastive.{name}")
    raise AttributeError(
        f"module 'keras_contrastive' has no attribute '{name}'"
    )


__all__ = [
    "BatchContrastiveLoss",
    "ContrastiveLoss",
    "NTXentLoss",
    "PairDistance",
    "ProjectionHead",
    "SiameseModel",
    "batch_contrastive_loss",
    "build_encoder",
    "contrastive_loss",
    "distances",
    "layers",
    "losses",
    "mining",
    "models",
    "nt_xent_loss",
    "__version__",
]
