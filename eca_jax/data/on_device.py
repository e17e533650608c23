"""The input normalization inside the jitted step, for pipelines that ship uint8 images.

``make_train_iterator(..., image_format="uint8")`` (and the eval iterator) ship whole grey levels
as uint8 ``(B, H, W, 3)`` (HWC, RGB): a quarter of the bytes of float32 through tf.data, numpy
and the host-to-device copy. The model then needs ``(x / 255 - mean) / std`` on the device:
:func:`normalize_images` computes it with the same float32 operations as the host pipeline's
``transforms.normalize`` (``(x - 255 mean) / (255 std)``), so both give the same values.
:func:`with_input_normalization` wraps a model's ``apply`` so that train and eval steps accept
either format unchanged (the dtype is static under ``jax.jit``: one trace per format).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 grey levels (..., 3) -> float32 ``(x / 255 - mean) / std``; floating images are
    returned unchanged (already normalized by the host pipeline). ``mean``/``std``: 3 floats (RGB)."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    if images.dtype != jnp.uint8:
        raise TypeError(f"expected uint8 grey levels or normalized floating images, got dtype {images.dtype}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (R, G, B), got {mean!r} and {std!r}")
    mean255 = jnp.asarray(mean, jnp.float32) * 255.0
    std255 = jnp.asarray(std, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - mean255) / std255


def with_input_normalization(apply_fn: Callable, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """``apply_fn(variables, images, ...)`` that first normalizes uint8 ``images``
    (:func:`normalize_images`); give the same mean/std as the pipeline would have used."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def apply(variables: Any, images: jax.Array, *args: Any, **kwargs: Any) -> Any:
        return apply_fn(variables, normalize_images(images, mean, std), *args, **kwargs)

    return apply
