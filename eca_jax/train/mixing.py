"""Mixup and CutMix on the device: timm's ``Mixup`` in its "batch" mode, as pure JAX functions.

One draw per batch: with probability ``prob`` the batch is mixed, else left as is (lam = 1);
with both alphas > 0 CutMix is chosen with probability ``switch_prob``, else mixup. Example i is
paired with example B-1-i (the batch flipped, timm's ``x.flip(0)``):

- mixup: ``lam ~ Beta(mixup_alpha, mixup_alpha)``, images ``lam * x + (1 - lam) * flip(x)``;
- CutMix: ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``; a box of ``sqrt(1 - lam)`` times the
  image's height and width around a uniform centre, clipped to the image (timm's ``rand_bbox``),
  or, with ``cutmix_minmax = (lo, hi)``, a box whose height/width are uniform integers in
  ``[int(lo H), int(hi H))`` placed uniformly inside the image (``rand_bbox_minmax``); inside the
  box the pixels are flip(x)'s. With ``correct_lam`` (always with ``cutmix_minmax``) the label
  weight becomes ``1 - box area / (H W)``;
- targets (both): ``lam * t + (1 - lam) * flip(t)`` of the smoothed one-hot labels
  (``off = s / K``, ``on = 1 - s + off``; timm's ``mixup_target``).

:func:`mix_batch` composes :func:`smooth_one_hot`, :func:`sample_mix` and :func:`apply_mix`;
:func:`mix_batch_with_params` also returns the draw (for logging).

Everything has static shapes and no Python branch on traced values (the box is a mask built from
iota comparisons), so :func:`mix_batch` runs inside a jitted train step on a batch sharded over a
mesh (Auto or Explicit axes): the flip pairs examples held by different devices, which XLA
handles with a collective permute. Own code rather than timm's: timm is PyTorch and draws with
NumPy on the host; here the draws stay on the device, inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixConfig:
    """timm ``Mixup`` settings ("batch" mode). Hashable: usable as a static argument of jit.

    ``cutmix_minmax``: as in timm it turns CutMix on (``cutmix_alpha`` is then ignored; timm
    forces it to 1) and the box size is drawn from the range instead of from lam.
    ``label_smoothing`` is applied to the one-hot targets before mixing.
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: Optional[tuple[float, float]] = None
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    correct_lam: bool = True

    def __post_init__(self):
        if isinstance(self.cutmix_minmax, list):  # keep the config hashable
            object.__setattr__(self, "cutmix_minmax", tuple(self.cutmix_minmax))

    @property
    def use_mixup(self) -> bool:
        return self.mixup_alpha > 0.0

    @property
    def use_cutmix(self) -> bool:
        return self.cutmix_alpha > 0.0 or self.cutmix_minmax is not None

    @property
    def enabled(self) -> bool:
        """Whether any batch can be mixed (an alpha > 0 or ``cutmix_minmax``, and prob > 0)."""
        return (self.use_mixup or self.use_cutmix) and self.prob > 0.0

    def validate(self) -> "MixConfig":
        """Raise ValueError naming the first bad field; return self."""
        def bad(field: str, why: str):
            raise ValueError(f"MixConfig.{field} {why}, got {getattr(self, field)!r}")

        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral) \
                or self.num_classes < 1:
            bad("num_classes", "must be an int >= 1")
        for field in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                bad(field, "must be a finite number >= 0 (0: off)")
        for field in ("prob", "switch_prob"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                bad(field, "must be a probability in [0, 1]")
        if not isinstance(self.label_smoothing, numbers.Real) or not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", "must be in [0, 1)")
        if not isinstance(self.correct_lam, bool):
            bad("correct_lam", "must be a bool")
        if self.cutmix_minmax is not None:
            minmax = self.cutmix_minmax
            if not isinstance(minmax, tuple) or len(minmax) != 2 \
                    or not all(isinstance(v, numbers.Real) for v in minmax) \
                    or not 0.0 < minmax[0] < minmax[1] <= 1.0:
                bad("cutmix_minmax", "must be None or a pair (lo, hi) with 0 < lo < hi <= 1")
        return self


class MixParams(NamedTuple):
    """One batch's draw. lam: float32 () label weight of the example itself (1: not mixed);
    use_cutmix: bool (); box: int32 (4,) ``(y0, y1, x0, x1)``, rows y0..y1-1 and columns
    x0..x1-1 (all zero unless CutMix)."""

    lam: jax.Array
    use_cutmix: jax.Array
    box: jax.Array


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Integer labels (B,) -> float32 (B, K) targets: ``1 - s + s/K`` at the label, ``s/K``
    elsewhere (timm's ``one_hot`` with ``on_value``/``off_value``). A label outside [0, K) gives
    a row of ``s/K`` (it cannot be checked on traced values)."""
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"smooth_one_hot: labels must be integers of shape (B,), got "
                         f"{labels.dtype} {labels.shape}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smooth_one_hot: smoothing must be in [0, 1), got {smoothing}")
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    hot = labels[:, None] == jnp.arange(num_classes, dtype=labels.dtype)
    return jnp.where(hot, jnp.float32(on), jnp.float32(off))


def box_from_lam(lam: jax.Array, center: jax.Array, image_hw: Sequence[int]) -> jax.Array:
    """timm's ``rand_bbox`` (margin 0) for a given centre. lam float32 (), center int32 (2,)
    ``(cy, cx)`` -> int32 (4,) ``(y0, y1, x0, x1)``: cut = int(size * sqrt(1 - lam)),
    ``clip(c -/+ cut // 2, 0, size)`` per axis."""
    size = jnp.asarray(tuple(image_hw), jnp.int32)
    cut = jnp.floor(size.astype(jnp.float32) * jnp.sqrt(1.0 - lam)).astype(jnp.int32)
    lo = jnp.clip(center - cut // 2, 0, size)
    hi = jnp.clip(center + cut // 2, 0, size)
    return jnp.stack([lo[0], hi[0], lo[1], hi[1]])


def _box_minmax(key: jax.Array, minmax: tuple[float, float], image_hw: tuple[int, int]) -> jax.Array:
    """timm's ``rand_bbox_minmax``: height/width uniform in [int(lo size), int(hi size)), the
    top-left corner uniform in [0, size - cut). -> int32 (4,) (y0, y1, x0, x1)."""
    key_size, key_corner = jax.random.split(key)
    low = [int(s * minmax[0]) for s in image_hw]
    high = [int(s * minmax[1]) for s in image_hw]
    for axis, (lo, hi) in enumerate(zip(low, high)):
        if lo >= hi:
            raise ValueError(f"MixConfig.cutmix_minmax {minmax} gives no box size for an image of "
                             f"{image_hw[axis]} pixels (int(lo * size) = {lo} >= int(hi * size) = {hi})")
    cut = jax.random.randint(key_size, (2,), jnp.asarray(low), jnp.asarray(high), jnp.int32)
    corner = jax.random.randint(key_corner, (2,), 0, jnp.asarray(image_hw) - cut, jnp.int32)
    return jnp.stack([corner[0], corner[0] + cut[0], corner[1], corner[1] + cut[1]])


def _cutmix_lam_and_box(key: jax.Array, lam: jax.Array, cfg: MixConfig, image_hw: tuple[int, int]
                        ) -> tuple[jax.Array, jax.Array]:
    """timm's ``cutmix_bbox_and_lam`` for a drawn lam float32 (): (label weight float32 (), box
    int32 (4,))."""
    if cfg.cutmix_minmax is not None:
        box = _box_minmax(key, cfg.cutmix_minmax, image_hw)
    else:
        center = jax.random.randint(key, (2,), 0, jnp.asarray(image_hw), jnp.int32)
        box = box_from_lam(lam, center, image_hw)
    if cfg.correct_lam or cfg.cutmix_minmax is not None:
        area = (box[1] - box[0]) * (box[3] - box[2])
        lam = 1.0 - area.astype(jnp.float32) / float(image_hw[0] * image_hw[1])
    return lam, box


def _draw_lam(key: jax.Array, use_cutmix: jax.Array, cfg: MixConfig) -> jax.Array:
    """float32 () ~ Beta(alpha, alpha) with the chosen method's alpha: one Beta draw whatever the
    method (``jax.random.beta`` takes a traced alpha; one sampler compiles, not two). With
    ``cutmix_minmax`` CutMix needs no lam (its box sets it): 1, and no draw if mixup is off."""
    if cfg.cutmix_minmax is not None:
        if not cfg.use_mixup:
            return jnp.ones((), jnp.float32)
        return jax.random.beta(key, cfg.mixup_alpha, cfg.mixup_alpha, dtype=jnp.float32)
    if cfg.use_mixup and cfg.use_cutmix:
        alpha = jnp.where(use_cutmix, jnp.float32(cfg.cutmix_alpha), jnp.float32(cfg.mixup_alpha))
    else:
        alpha = cfg.cutmix_alpha if cfg.use_cutmix else cfg.mixup_alpha
    return jax.random.beta(key, alpha, alpha, dtype=jnp.float32)


def sample_mix(key: jax.Array, cfg: MixConfig, image_hw: Sequence[int]) -> MixParams:
    """Draw one batch's mixing (timm ``Mixup._params_per_batch`` + ``cutmix_bbox_and_lam``).

    key: a PRNG key; image_hw: the static (H, W). Not mixed (probability 1 - prob, or cfg not
    enabled): lam = 1, use_cutmix False, box zeros.
    """
    cfg.validate()
    image_hw = tuple(int(s) for s in image_hw)
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"sample_mix: image_hw must be (H, W) >= 1, got {image_hw}")
    no_mix = MixParams(jnp.ones((), jnp.float32), jnp.zeros((), jnp.bool_), jnp.zeros((4,), jnp.int32))
    if not cfg.enabled:
        return no_mix
    key_apply, key_switch, key_lam, key_box = jax.random.split(key, 4)
    if cfg.use_mixup and cfg.use_cutmix:
        use_cutmix = jax.random.uniform(key_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.use_cutmix)
    lam = _draw_lam(key_lam, use_cutmix, cfg)
    lam_cutmix, box = _cutmix_lam_and_box(key_box, lam, cfg, image_hw)
    apply = jax.random.uniform(key_apply) < cfg.prob
    use_cutmix = use_cutmix & apply
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam), no_mix.lam)
    return MixParams(lam, use_cutmix, jnp.where(use_cutmix, box, no_mix.box))


def box_mask(box: jax.Array, image_hw: Sequence[int]) -> jax.Array:
    """bool (1, H, W, 1): True inside ``box`` (y0, y1, x0, x1), from iota comparisons (static shape)."""
    h, w = (int(s) for s in image_hw)
    rows = jax.lax.broadcasted_iota(jnp.int32, (1, h, w, 1), 1)
    cols = jax.lax.broadcasted_iota(jnp.int32, (1, h, w, 1), 2)
    return (rows >= box[0]) & (rows < box[1]) & (cols >= box[2]) & (cols < box[3])


def apply_mix(images: jax.Array, targets: jax.Array, params: MixParams) -> tuple[jax.Array, jax.Array]:
    """Mix a batch with its flip. images: floating (B, H, W, C) NHWC, already normalised;
    targets: (B, K) soft. Returns images (same dtype) and float32 targets (B, K).

    One elementwise pass: ``x * a + flip(x) * b`` with (a, b) = (lam, 1 - lam) for mixup and
    (outside, inside the box) for CutMix, so CutMix copies pixels exactly and lam = 1 returns x
    (for finite inputs).
    """
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"apply_mix: images must be floating (B, H, W, C) (mix after normalisation), "
                         f"got {images.dtype} {images.shape}")
    if targets.ndim != 2 or targets.shape[0] != images.shape[0]:
        raise ValueError(f"apply_mix: targets must be (B, K) with B = {images.shape[0]}, got {targets.shape}")
    lam = jnp.asarray(params.lam, jnp.float32)
    inside = box_mask(params.box, images.shape[1:3])
    weight_self = jnp.where(params.use_cutmix, (~inside).astype(jnp.float32), lam)
    weight_flip = jnp.where(params.use_cutmix, inside.astype(jnp.float32), 1.0 - lam)
    mixed = (images * weight_self.astype(images.dtype)
             + jnp.flip(images, 0) * weight_flip.astype(images.dtype))
    targets = targets.astype(jnp.float32)
    return mixed, targets * lam + jnp.flip(targets, 0) * (1.0 - lam)


def mix_batch(key: jax.Array, images: jax.Array, labels: jax.Array, cfg: MixConfig
              ) -> tuple[jax.Array, jax.Array]:
    """timm ``Mixup.__call__`` ("batch" mode): images floating (B, H, W, C), labels int (B,) ->
    (mixed images, soft targets float32 (B, num_classes)). B must be even (as in timm). With
    cfg not enabled the images are returned as they are with the smoothed one-hot targets."""
    images, targets, _ = mix_batch_with_params(key, images, labels, cfg)
    return images, targets


def mix_batch_with_params(key: jax.Array, images: jax.Array, labels: jax.Array, cfg: MixConfig
                          ) -> tuple[jax.Array, jax.Array, MixParams]:
    """:func:`mix_batch` that also returns its draw (e.g. to log lam and use_cutmix)."""
    cfg.validate()
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"mix_batch: images (B, H, W, C) and labels (B,), got {images.shape} "
                         f"and {labels.shape}")
    if images.shape[0] % 2:
        raise ValueError(f"mix_batch: the batch size must be even (pairs with its flip), got {images.shape[0]}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"mix_batch: images must be floating (mix after normalisation), got {images.dtype}")
    targets = smooth_one_hot(labels, cfg.num_classes, cfg.label_smoothing)
    params = sample_mix(key, cfg, images.shape[1:3])
    if not cfg.enabled:
        return images, targets, params
    return (*apply_mix(images, targets, params), params)
