"""Import TensorFlow for the modules whose job is TensorFlow's."""

try:
    import tensorflow as tf  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without TF
    raise ImportError(
        "This part of keras-contrastive (tf.data pipelines, dataset "
        "loaders, tf.distribute training) needs TensorFlow. Install it "
        "with the extra for your hardware: "
        'pip install "keras-contrastive[cpu]" (CPU only), '
        '"keras-contrastive[gpu]" (NVIDIA GPUs, CUDA build), '
        '"keras-contrastive[tensorflow]" or "keras-contrastive[tpu]".'
    ) from error

__all__ = ["tf"]
