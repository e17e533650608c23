"""Random erasing (timm's ``RandomErasing``, mode "pixel", one box) as TensorFlow ops for one image.

timm applies it after normalisation: with probability ``p`` it tries up to 10 times to draw a box
of area ``uniform(0.02, 1/3) * H * W`` and aspect ratio (h / w) ``exp(uniform(log 0.3, log 1/0.3))``,
``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``; the first box with
``h < H`` and ``w < W`` is placed uniformly (top in 0..H-h, left in 0..W-w) and its pixels become
per-pixel, per-channel N(0, 1) noise (in normalised space). If no try fits, nothing is erased.

Shipped formats (``transforms.IMAGE_FORMATS``):

- ``"float32"`` (normalised): the box holds the N(0, 1) noise itself, as timm;
- ``"uint8"`` (grey levels, normalised later on the device): the box holds the grey levels whose
  normalisation is that noise, ``round(clip(255 * (mean + std * z), 0, 255))``. After normalisation
  they are the same N(0, 1) draws rounded to the grey-level grid (steps of ``1 / (255 std)``, about
  0.017 for ImageNet) and clipped to ``[-mean / std, (1 - mean) / std]`` (ImageNet: about
  [-2.1, 2.2], so about 3% of the draws land on the clip values); everything else is identical.

Randomness: stateless, from the seed alone (the train stream stays resumable).
"""

from __future__ import annotations

import math
from typing import Sequence

from eca_jax.data._tf import tf

MAX_ATTEMPTS = 10


def erasing_box(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, probability: float, *,
                area_range: tuple[float, float] = (0.02, 1 / 3), aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
                max_attempts: int = MAX_ATTEMPTS) -> tf.Tensor:
    """timm's box draw: int32 ``[top, left, h, w]``; ``h = w = 0`` when not erasing (not drawn, or no try fit).

    ``seed``: int (2,). ``aspect_range``: h / w, sampled log-uniformly.
    """
    gate, area_seed, aspect_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=4))
    h_img, w_img = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = tf.random.stateless_uniform([max_attempts], area_seed, *area_range) * h_img * w_img
    log_aspect = tf.random.stateless_uniform([max_attempts], aspect_seed, math.log(aspect_range[0]),
                                             math.log(aspect_range[1]))
    aspect = tf.exp(log_aspect)
    hs = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # round half to even, as Python's round
    ws = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (hs < height) & (ws < width)
    first = tf.argmax(tf.cast(fits, tf.int32))  # the first try that fits (0 when none does)
    erase = (tf.random.stateless_uniform((), gate) < probability) & tf.reduce_any(fits)
    h, w = tf.where(erase, hs[first], 0), tf.where(erase, ws[first], 0)
    spots = tf.random.stateless_uniform([2], place_seed)  # uniform integers in 0..H-h and 0..W-w
    top = tf.minimum(tf.cast(spots[0] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
    left = tf.minimum(tf.cast(spots[1] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
    return tf.stack([top, left, h, w])


def box_mask(height: tf.Tensor, width: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """bool (H, W, 1): True inside ``box`` = [top, left, h, w]."""
    rows = (tf.range(height) >= box[0]) & (tf.range(height) < box[0] + box[2])
    cols = (tf.range(width) >= box[1]) & (tf.range(width) < box[1] + box[3])
    return (rows[:, None] & cols[None, :])[..., None]


@tf.autograph.experimental.do_not_convert  # plain TF ops: nothing for AutoGraph to convert
def random_erasing(image: tf.Tensor, seed: tf.Tensor, probability: float, *, image_format: str = "float32",
                   mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225)) -> tf.Tensor:
    """timm's ``RandomErasing(probability, mode="pixel")`` on one shipped image (H, W, 3).

    ``image_format="float32"``: ``image`` is normalised and the box gets N(0, 1) noise;
    ``"uint8"``: ``image`` is uint8 grey levels and the box gets the grey levels of that noise for
    ``mean``/``std`` (see the module docstring). The same seed erases the same box with the same
    draws in both formats. ``seed``: int (2,).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"random_erasing probability must be in [0, 1], got {probability!r}")
    if probability == 0.0:
        return image
    box_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shape = tf.shape(image)
    if image_format not in ("float32", "uint8"):
        raise ValueError(f"Unknown image_format {image_format!r}; choose 'float32' or 'uint8'.")
    box = erasing_box(shape[0], shape[1], box_seed, probability)

    def erase():
        noise = tf.random.stateless_normal(shape, noise_seed)
        if image_format == "uint8":
            grey = 255.0 * (tf.constant(mean, tf.float32) + tf.constant(std, tf.float32) * noise)
            noise = tf.saturate_cast(tf.round(grey), tf.uint8)
        return tf.where(box_mask(shape[0], shape[1], box), noise, image)

    return tf.cond(box[2] > 0, erase, lambda: image)  # no noise drawn for images left alone
