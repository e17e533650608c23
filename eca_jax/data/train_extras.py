"""timm's per-example extras of the train transform: RandAugment and random erasing.

Order (timm's ``create_transform`` for training): the resized crop as whole grey levels, the
horizontal flip, RandAugment (:mod:`eca_jax.data.randaugment_ops`), then normalisation (or the
uint8 shipment) in ``transforms.finish``, then random erasing (:mod:`eca_jax.data.erasing`).
With ``augment="none"`` (small datasets such as digits, where crops and flips change the class)
the same extras follow the plain resize, without the flip.

Each extra draws from its own seed, folded into the example's seed (1: RandAugment, 2: erasing),
so a stream without extras is bit for bit what it was, and the stream stays a pure function of
the seed (resumable).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from eca_jax.data import erasing, randaugment_ops
from eca_jax.data._tf import tf
from eca_jax.data.randaugment import RandAugmentSpec, parse_randaugment


def check_extras(randaugment: Union[str, RandAugmentSpec, None],
                 random_erasing: float) -> Optional[RandAugmentSpec]:
    """The RandAugment spec (parsed; None: off) after checking the extras (both augment modes take
    them); ValueError if bad."""
    if not 0.0 <= float(random_erasing) <= 1.0:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing!r}")
    return parse_randaugment(randaugment) if isinstance(randaugment, str) else randaugment


def has_extras(randaugment: Union[str, RandAugmentSpec, None], random_erasing: float) -> bool:
    return randaugment is not None or bool(random_erasing)


def augment_grey_levels(resized: tf.Tensor, seed: tf.Tensor, flip_seed: Optional[tf.Tensor],
                        spec: Optional[RandAugmentSpec], interpolation: str,
                        mean: Sequence[float]) -> tf.Tensor:
    """float32 (H, W, 3) resized image -> whole grey levels, flipped (unless ``flip_seed`` is
    None), then RandAugment (unless ``spec`` is None); float32 0..255."""
    image = tf.round(tf.clip_by_value(resized, 0.0, 255.0))
    if flip_seed is not None:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if spec is not None:
        image = randaugment_ops.rand_augment(image, tf.random.experimental.stateless_fold_in(seed, 1), spec,
                                             interpolation=interpolation, fill=randaugment_ops.fill_for(mean))
    return image


def erase(shipped: tf.Tensor, seed: tf.Tensor, random_erasing: float, *, image_format: str,
          mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """timm's random erasing (pixel mode) of the shipped image (normalised float32 or uint8)."""
    return erasing.random_erasing(shipped, tf.random.experimental.stateless_fold_in(seed, 2), float(random_erasing),
                                  image_format=image_format, mean=mean, std=std)
