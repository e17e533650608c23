"""RandAugment (timm's ``rand_augment_transform``) as TensorFlow ops, for one image inside a tf.data map.

Images are float32 ``(H, W, 3)`` whole grey levels 0..255 (RGB, HWC); every op returns whole grey
levels again, as PIL's uint8 images are between timm's ops. Each op is PIL's definition (timm calls
``PIL.ImageOps``, ``PIL.ImageEnhance`` and ``Image.transform``), written in TF ops:

- LUT ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd): PIL's lookup tables;
- enhance ops (Color, Contrast, Brightness, Sharpness): PIL's ``blend(degenerate, image, factor)``,
  truncated to uint8 as PIL's C code does, with PIL's degenerate images (ITU-R 601 luma in PIL's
  fixed point; its rounded mean; black; the 3x3 SMOOTH filter with the border kept);
- geometric ops (Rotate, ShearX/Y, TranslateX/YRel): PIL's affine map of pixel centres,
  ``ImageProjectiveTransformV3`` samples (edge pixels clamped, as PIL's filters), and output pixels
  whose source point falls outside the image get the fill colour (PIL's test, on the source point).
  TF's kernel has no bicubic: ``"bicubic"`` samples bilinearly (nearest and bilinear are PIL's).

Randomness (``rand_augment``): stateless, from the seed alone, so a tf.data stream stays a pure
function of its seeds. Per layer: the op (uniform, with replacement), whether it runs (prob), its
magnitude (``sample_magnitude``) and the sign of signed arguments (50%).

Why not a library: keras' ``RandAugment`` has another op set and magnitude convention (a factor in
[0, 1] drawn per op, no Invert/SolarizeAdd, no timm ``inc`` set) and draws from a stateful
``SeedGenerator``; tf-models-official's ``RandAugment`` needs the full ``tensorflow`` package (this
project uses tensorflow-cpu) and draws with stateful ``tf.random`` ops: neither stream could be resumed.
"""

from __future__ import annotations

import math
from typing import Sequence

from eca_jax.data._tf import tf
from eca_jax.data.randaugment import LEVEL_DENOM, RandAugmentSpec

TIMM_FILL = (124, 116, 104)  # timm's fill: the ImageNet mean in grey levels, round(255 * mean)
_AFFINE_INTERPOLATION = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BILINEAR"}


def fill_for(mean: Sequence[float]) -> tuple[int, ...]:
    """timm's fill colour for a normalization ``mean`` (fractions): ``min(255, round(255 * m))`` per channel."""
    return tuple(min(255, round(255 * float(m))) for m in mean)


# ------------------------------------------------------------------ lookup-table ops (PIL.ImageOps)

def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """float32 (H, W, 3) whole levels, lut (3, 256) -> lut[c][image[..., c]] as float32."""
    index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.float32)


def _histograms(image: tf.Tensor) -> tf.Tensor:
    """int32 (3, 256): per-channel counts of the grey levels."""
    values = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
    return tf.math.bincount(values, minlength=256, maxlength=256, axis=-1)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.autocontrast(image)``: per channel, [lo, hi] stretched to [0, 255] (float64 as PIL)."""
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)[:, None]
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)[:, None]
    scale = 255.0 / tf.where(hi > lo, hi - lo, 1.0)
    levels = tf.range(256, dtype=tf.float64)[None, :]
    stretched = tf.clip_by_value(tf.floor(levels * scale + (-lo * scale)), 0.0, 255.0)
    return _apply_lut(image, tf.where(hi > lo, stretched, levels))


def equalize(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.equalize(image)`` per channel: lut[i] = (step // 2 + count below i) // step with
    ``step = (pixels - count of the highest level present) // 255`` (identity where step is 0)."""
    hist = _histograms(image)
    present = tf.cast(hist > 0, tf.int32) * tf.range(256)[None, :]
    top_count = tf.gather(hist, tf.reduce_max(present, axis=1), batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
    below = tf.cumsum(hist, axis=1, exclusive=True)
    safe = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((safe // 2 + below) // safe, 255)
    return _apply_lut(image, tf.where(step[:, None] > 0, lut, tf.range(256)[None, :]))


def invert(image: tf.Tensor) -> tf.Tensor:
    """``ImageOps.invert``: 255 - x."""
    return 255.0 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """``ImageOps.posterize(image, bits)``: keep the ``bits`` (0..8) most significant bits."""
    unit = tf.pow(2.0, 8.0 - tf.cast(tf.clip_by_value(bits, 0, 8), tf.float32))
    return tf.floor(image / unit) * unit


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """``ImageOps.solarize(image, threshold)``: levels >= threshold are inverted."""
    return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image: tf.Tensor, addition: tf.Tensor, threshold: float = 128.0) -> tf.Tensor:
    """timm's ``solarize_add``: levels below ``threshold`` get ``+ addition`` (saturating at 255)."""
    return tf.where(image < threshold, tf.minimum(image + tf.cast(addition, tf.float32), 255.0), image)


# ------------------------------------------------------------------ enhance ops (PIL.ImageEnhance)

def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` in float32, clipped and truncated to whole levels."""
    mixed = degenerate + tf.cast(factor, tf.float32) * (image - degenerate)
    return tf.floor(tf.clip_by_value(mixed, 0.0, 255.0))


def _luma(image: tf.Tensor) -> tf.Tensor:
    """PIL's ``convert("L")``: (19595 R + 38470 G + 7471 B + 2**15) >> 16, int32 (H, W)."""
    rgb = tf.cast(image, tf.int32)
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) // 65536


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Color(image).enhance(factor)``: blend with the grey (luma) image."""
    return _blend(tf.cast(_luma(image), tf.float32)[..., None], image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Contrast``: blend with the flat grey ``int(mean luma + 0.5)``."""
    mean = tf.reduce_mean(tf.cast(_luma(image), tf.float64))
    return _blend(tf.cast(tf.floor(mean + 0.5), tf.float32), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (3x3 [1 1 1; 1 5 1; 1 1 1] / 13,
    rounded; the one-pixel border is the image's own, as PIL's filter leaves it)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)[:, :, None, None] / 13.0
    channels = tf.transpose(image, [2, 0, 1])[..., None]  # (3, H, W, 1): one conv per channel
    smooth = tf.transpose(tf.nn.conv2d(channels, kernel, 1, "VALID")[..., 0], [1, 2, 0])
    inner = tf.pad(tf.ones_like(smooth[..., :1]), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])
    return _blend(tf.where(inner > 0, smooth, image), image, factor)


# ------------------------------------------------------------------ geometric ops (Image.transform)

def affine(image: tf.Tensor, matrix: Sequence, *, interpolation: str = "bilinear",
           fill: Sequence[float] = TIMM_FILL) -> tf.Tensor:
    """``image.transform(size, Image.AFFINE, matrix, resample, fillcolor=fill)`` -> whole grey levels.

    ``matrix`` (a, b, c, d, e, f) maps an output point (x, y) (pixel centre x + 0.5, y + 0.5) to the
    source point (a x + b y + c, d x + e y + f), as PIL; a source point outside [0, W) x [0, H) gives
    ``fill``. Scalars may be tensors.
    """
    a, b, c, d, e, f = (tf.cast(v, tf.float64) for v in matrix)
    # PIL's pixel-edge coordinates -> TF's pixel-centre indices: x_tf = x_pil - 0.5 on both sides.
    transform = tf.cast(tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0]),
                        tf.float32)
    shape = tf.shape(image)
    sampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=shape[:2], fill_value=0.0,
        interpolation=_AFFINE_INTERPOLATION[interpolation], fill_mode="NEAREST")[0]
    ys, xs = tf.meshgrid(tf.range(tf.cast(shape[0], tf.float64)) + 0.5, tf.range(tf.cast(shape[1], tf.float64)) + 0.5,
                         indexing="ij")
    src_x, src_y = a * xs + b * ys + c, d * xs + e * ys + f
    inside = ((src_x >= 0) & (src_x < tf.cast(shape[1], tf.float64)) &
              (src_y >= 0) & (src_y < tf.cast(shape[0], tf.float64)))
    out = tf.where(inside[..., None], sampled, tf.constant(fill, tf.float32))
    return tf.floor(tf.clip_by_value(out, 0.0, 255.0))  # PIL's bilinear filter truncates to uint8


def rotate(image: tf.Tensor, degrees: tf.Tensor, **kw) -> tf.Tensor:
    """``image.rotate(degrees, resample, fillcolor=fill)``: counter-clockwise about the image centre."""
    angle = -tf.cast(degrees, tf.float64) * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    h, w = (tf.cast(s, tf.float64) for s in tf.unstack(tf.shape(image)[:2]))
    cx, cy = w / 2.0, h / 2.0
    return affine(image, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy), **kw)


def shear_x(image: tf.Tensor, factor: tf.Tensor, **kw) -> tf.Tensor:
    """timm's ``shear_x``: affine (1, factor, 0, 0, 1, 0)."""
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), **kw)


def shear_y(image: tf.Tensor, factor: tf.Tensor, **kw) -> tf.Tensor:
    """timm's ``shear_y``: affine (1, 0, 0, factor, 1, 0)."""
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), **kw)


def translate_x_rel(image: tf.Tensor, fraction: tf.Tensor, **kw) -> tf.Tensor:
    """timm's ``translate_x_rel``: the source is ``fraction * width`` pixels to the right."""
    pixels = tf.cast(fraction, tf.float64) * tf.cast(tf.shape(image)[1], tf.float64)
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), **kw)


def translate_y_rel(image: tf.Tensor, fraction: tf.Tensor, **kw) -> tf.Tensor:
    """timm's ``translate_y_rel``: the source is ``fraction * height`` pixels below."""
    pixels = tf.cast(fraction, tf.float64) * tf.cast(tf.shape(image)[0], tf.float64)
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), **kw)


# ------------------------------------------------------------------ timm's ops, magnitudes and sampling

_OPS = {"AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate,
        "Posterize": posterize, "Solarize": solarize, "SolarizeAdd": solarize_add, "Color": color,
        "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness, "ShearX": shear_x,
        "ShearY": shear_y, "TranslateXRel": translate_x_rel, "TranslateYRel": translate_y_rel}
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_SIGNED_SCALE = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateXRel": 0.45, "TranslateYRel": 0.45}


def level_argument(name: str, magnitude: tf.Tensor, negate: tf.Tensor):
    """timm's ``LEVEL_TO_ARG[name](magnitude)`` as a float64 scalar (None for ops without one).

    ``negate`` (bool): timm's ``_randomly_negate`` outcome, used by the signed ops (Rotate,
    ShearX/Y, TranslateX/YRel and the ``*Increasing`` enhance ops).
    """
    level = tf.cast(magnitude, tf.float64) / LEVEL_DENOM
    sign = tf.where(negate, tf.constant(-1.0, tf.float64), 1.0)
    if name in _SIGNED_SCALE:
        return sign * level * _SIGNED_SCALE[name]
    if name in ("Posterize", "PosterizeIncreasing"):
        bits = tf.floor(level * 4.0)
        return 4.0 - bits if name.endswith("Increasing") else bits
    if name in ("Solarize", "SolarizeIncreasing"):
        threshold = tf.minimum(tf.floor(level * 256.0), 256.0)
        return 256.0 - threshold if name.endswith("Increasing") else threshold
    if name == "SolarizeAdd":
        return tf.minimum(tf.floor(level * 110.0), 128.0)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name.endswith("Increasing"):  # the enhance ops: 1 +- 0.9 level, at least 0.1
        return tf.maximum(1.0 + sign * level * 0.9, 0.1)
    return None


def apply_op(name: str, image: tf.Tensor, magnitude: tf.Tensor, negate: tf.Tensor, *,
             interpolation: str = "bilinear", fill: Sequence[float] = TIMM_FILL) -> tf.Tensor:
    """timm's ``AugmentOp(name)`` at a given (already sampled) magnitude and sign: float32 (H, W, 3)."""
    op = _OPS[name.removesuffix("Increasing")]
    argument = level_argument(name, magnitude, negate)
    if name in _GEOMETRIC:
        return op(image, argument, interpolation=interpolation, fill=fill)
    return op(image) if argument is None else op(image, argument)


def sample_magnitude(spec: RandAugmentSpec, seed: tf.Tensor, shape: Sequence[int] = ()) -> tf.Tensor:
    """timm's per-call magnitude, float32 ``shape``: ``magnitude`` (mstd 0), ``N(magnitude, mstd)``,
    or uniform in [0, magnitude] (mstd inf), then clipped to [0, magnitude_max]."""
    if math.isinf(spec.magnitude_std):
        value = tf.random.stateless_uniform(shape, seed, 0.0, spec.magnitude)
    elif spec.magnitude_std > 0:
        value = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal(shape, seed)
    else:
        value = tf.fill(shape, tf.constant(spec.magnitude, tf.float32))
    return tf.clip_by_value(value, 0.0, spec.magnitude_max)


@tf.autograph.experimental.do_not_convert  # plain TF ops: nothing for AutoGraph to convert (and it is slow)
def rand_augment(image: tf.Tensor, seed: tf.Tensor, spec: RandAugmentSpec, *, interpolation: str = "bilinear",
                 fill: Sequence[float] = TIMM_FILL) -> tf.Tensor:
    """timm's ``RandAugment`` on float32 (H, W, 3) whole grey levels -> the same; ``seed``: int (2,).

    ``spec.num_layers`` times: an op uniformly from ``spec.ops``, applied with probability
    ``spec.prob`` at a magnitude from ``sample_magnitude`` (signed ops: random sign). The layers
    run in a ``tf.while_loop``: the op branches are traced once, whatever ``num_layers``.
    """
    if spec.num_layers == 0:
        return image
    layer_seeds = tf.random.experimental.stateless_split(seed, num=spec.num_layers)

    def layer(i, x):
        choice, gate, size, sign = tf.unstack(tf.random.experimental.stateless_split(layer_seeds[i], num=4))
        index = tf.random.stateless_uniform((), choice, 0, len(spec.ops), dtype=tf.int32)
        magnitude = sample_magnitude(spec, size)
        negate = tf.random.stateless_uniform((), sign) > 0.5
        branches = [lambda name=name: apply_op(name, x, magnitude, negate, interpolation=interpolation, fill=fill)
                    for name in spec.ops]
        applied = tf.random.stateless_uniform((), gate) < spec.prob  # timm: skipped when random() > prob
        out = tf.cond(applied, lambda: tf.switch_case(index, branches), lambda: x)
        return i + 1, tf.ensure_shape(out, x.shape)

    return tf.while_loop(lambda i, _: i < spec.num_layers, layer, [tf.constant(0), image])[1]
