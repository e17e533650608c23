"""TensorFlow, imported for tf.data only: it must never take an accelerator.

JAX owns the GPUs/TPUs. A full (non ``-cpu``) TensorFlow build would otherwise
reserve all GPU memory on first use, so every module of ``eca_jax.data`` imports
``tf`` from here, which hides the GPUs from TensorFlow before anything runs, and silences
TensorFlow's start-up INFO lines.
"""

import os

# TensorFlow's C++ INFO lines (the CPU-feature and oneDNN notices, printed on every start) are
# noise here: keep its warnings and errors. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF was initialised before this import and may already hold a GPU.
    if tf.config.get_visible_devices("GPU"):
        raise RuntimeError(
            "TensorFlow was initialised with a visible GPU before eca_jax.data was imported; "
            "import eca_jax.data first (or call tf.config.set_visible_devices([], 'GPU')) so "
            "that TensorFlow leaves the accelerators to JAX.") from None

__all__ = ["tf"]
