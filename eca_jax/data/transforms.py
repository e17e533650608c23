"""Image transforms in TensorFlow ops (run inside tf.data), plus ``preprocess_for_eval`` for single images.

Layouts: images are HWC. Decoded images are uint8 RGB ``(H, W, 3)``; the transforms return float32
``(image_size, image_size, 3)`` normalized as ``(x / 255 - mean) / std`` (ImageNet mean/std by
default). An encoded image is a scalar ``tf.string`` (JPEG, PNG, GIF, BMP or WebP bytes).

- ``train_transform``, ``augment="inception_crop_flip"``: Inception-style random resized crop
  (area 8%..100% of the image, aspect ratio 3/4..4/3; whole image if 10 tries fail), resized to
  ``image_size``, random horizontal flip. For a JPEG only the crop window is decoded
  (``tf.image.decode_and_crop_jpeg``). Randomness comes from stateless ops and an explicit
  ``seed`` (shape (2,)), so the result depends only on the seed, never on thread scheduling.
  ``randaugment`` (e.g. ``"rand-m9-mstd0.5-inc1"``) and ``random_erasing`` (a probability) add timm's
  RandAugment (after the flip) and random erasing (after normalisation): module train_extras.
- ``train_transform``, ``augment="none"``: resize the whole image to ``image_size`` (small
  datasets such as digits, where crops and flips would change the class).
- ``eval_transform``: torchvision's ``Resize(resize_size) + CenterCrop(image_size)``: the shorter
  side becomes ``resize_size`` (longer side ``int(resize_size * long / short)``), antialiased
  resize, center crop with ``round((H - image_size) / 2)`` offsets (round half to even, as
  Python's ``round``), values rounded to whole grey levels as PIL's uint8 output is.
- ``resolve_eval_settings``: the eval size, resize size, interpolation and mean/std from explicit
  values, the dataset's own crop and the model's ``ModelCfg`` (its docstring has the precedence);
  ``resolve_normalization``: mean/std alone (explicit > the model's > ImageNet's), for train and eval.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from eca_jax.constants import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS
from eca_jax.data._tf import tf
from eca_jax.data.randaugment import RandAugmentSpec
from eca_jax.data.train_extras import augment_grey_levels, check_extras, erase, has_extras

AUGMENTS = ("inception_crop_flip", "none")
# What the pipelines ship: "float32" normalized images, or "uint8" whole grey levels that the
# consumer normalizes on the device (eca_jax.data.on_device.normalize_images; 4x fewer bytes).
IMAGE_FORMATS = ("float32", "uint8")

_MAGIC_PREFIXES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP


def resize_size_for(image_size: int, resize_size: Optional[int] = None, crop_pct: Optional[float] = None) -> int:
    """The eval resize size: ``resize_size`` if given, else ``floor(image_size / crop_pct)`` (timm's rule).

    ``crop_pct`` defaults to 0.875 (224 -> 256). Raises ValueError when the crop would not fit.
    """
    if resize_size is not None and crop_pct is not None:
        raise ValueError("Give resize_size or crop_pct, not both.")
    if resize_size is None:
        crop_pct = DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct)
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        resize_size = int(np.floor(image_size / crop_pct))
    if int(resize_size) < int(image_size):
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}): "
                         "the center crop is taken from the resized image.")
    return int(resize_size)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How eval images are prepared: resize the shorter side to ``resize_size`` (``interpolation``,
    antialiased), center crop ``image_size`` x ``image_size``, normalize ``(x / 255 - mean) / std``
    (``mean``/``std``: 3 floats, RGB)."""

    image_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _model_eval_crop_pct(model_cfg: Any, image_size: int) -> float:
    """The model's crop fraction for ``image_size``: ``test_crop_pct`` at its ``test_input_size``
    (when it has one), else ``crop_pct`` (timm's rule)."""
    test_crop = getattr(model_cfg, "test_crop_pct", None)
    if test_crop is not None and image_size == getattr(model_cfg, "test_input_size", None):
        return float(test_crop)
    return float(model_cfg.crop_pct)


def _channels(value: Sequence[float], what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{what} must have 3 values (R, G, B), got {value!r}")
    if what == "std" and min(out) <= 0:
        raise ValueError(f"std must be positive, got {value!r}")
    return out


def resolve_normalization(mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                          model_cfg: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the normalization ``(x / 255 - mean) / std``, each 3 floats (RGB): the
    given ones, else the model's (``model_cfg.mean``/``std``; ``model_cfg`` may be None), else
    ImageNet's. The one place train, eval and the trainer resolve them. Raises ValueError naming
    ``mean`` or ``std`` when it is not 3 numbers (or ``std`` not positive)."""
    mean = mean if mean is not None else getattr(model_cfg, "mean", None) or IMAGENET_MEAN
    std = std if std is not None else getattr(model_cfg, "std", None) or IMAGENET_STD
    return _channels(mean, "mean"), _channels(std, "std")


def resolve_eval_settings(image_size: Optional[int] = None, *, resize_size: Optional[int] = None,
                          crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                          mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                          dataset_crop_pct: Optional[float] = None, model_cfg: Any = None) -> EvalSettings:
    """The eval settings from explicit values, the dataset and the model's config.

    Precedence, per setting (the first that is not None wins):

    - crop: explicit ``resize_size`` or ``crop_pct`` > ``dataset_crop_pct`` (datasets that define
      their own eval crop: digits, 1.0) > the model's (``test_crop_pct`` at its
      ``test_input_size``, else ``crop_pct``) > 0.875;
    - ``interpolation``, ``mean``, ``std``: explicit > the model's > bilinear / ImageNet's;
    - ``image_size``: explicit > the model's ``test_input_size`` > its ``input_size``.

    ``model_cfg``: anything with ModelCfg's fields (``eca_jax.models.get_model_cfg(name)``), or
    None. Raises ValueError for bad values or when no image size is known.
    """
    if image_size is None and model_cfg is not None:
        image_size = getattr(model_cfg, "test_input_size", None) or model_cfg.input_size
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if resize_size is None and crop_pct is None:
        if dataset_crop_pct is not None:
            crop_pct = dataset_crop_pct
        elif model_cfg is not None:
            crop_pct = _model_eval_crop_pct(model_cfg, image_size)
    resize = resize_size_for(image_size, resize_size, crop_pct)
    if interpolation is None:
        interpolation = getattr(model_cfg, "interpolation", None) or DEFAULT_INTERPOLATION
    mean, std = resolve_normalization(mean, std, model_cfg)
    return EvalSettings(image_size=image_size, resize_size=resize, interpolation=check_interpolation(interpolation),
                        mean=mean, std=std)


def short_tf_message(error: Exception) -> str:
    """The first line of a TensorFlow error message without its ``{{function_node ...}}`` and ``[Op:...]`` noise."""
    text = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]", "", text).strip()


def check_interpolation(interpolation: str) -> str:
    """``interpolation`` if it is one of INTERPOLATIONS, else ValueError."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {interpolation!r}; choose one of {INTERPOLATIONS}.")
    return interpolation


def is_known_format(data: tf.Tensor) -> tf.Tensor:
    """True when the bytes start like an image format ``tf.io.decode_image`` reads (or are WebP)."""
    checks = [tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _MAGIC_PREFIXES]
    checks.append(tf.logical_and(tf.equal(tf.strings.substr(data, 0, 4), b"RIFF"),
                                 tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")))
    return tf.reduce_any(tf.stack(checks))


def checked_bytes(data: tf.Tensor, name: Union[tf.Tensor, str] = "") -> tf.Tensor:
    """Returns ``data`` guarded by an assertion that it is encoded image data.

    When it is not, running the op raises ``InvalidArgumentError`` whose message contains
    ``cannot decode image`` and ``name`` (e.g. the file name of the example).
    """
    ok = is_known_format(data)
    assertion = tf.debugging.Assert(
        ok, ["eca_jax.data: cannot decode image (not JPEG/PNG/GIF/BMP/WebP data):", name], summarize=1)
    with tf.control_dependencies([assertion]):
        return tf.identity(data)


def decode_rgb(data: tf.Tensor, name: Union[tf.Tensor, str] = "", accurate: bool = True) -> tf.Tensor:
    """Encoded image (scalar tf.string) -> uint8 (H, W, 3). Grey images become RGB, alpha is dropped.

    ``accurate`` uses libjpeg's accurate integer DCT (what PIL uses) for JPEGs.
    """
    data = checked_bytes(data, name)
    dct = "INTEGER_ACCURATE" if accurate else ""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=dct),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8))
    image.set_shape([None, None, 3])
    return image


def _as_rgb(image: tf.Tensor) -> tf.Tensor:
    """Decoded uint8 image(s) (..., H, W, 1|3) of rank 3 or 4 -> (..., H, W, 3)."""
    if image.shape.rank not in (3, 4):
        raise ValueError(f"expected decoded image(s) of shape (H, W, C) or (N, H, W, C), got shape {image.shape}")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {image.shape}")
    return image


def _sample_crop_window(shape: tf.Tensor, seed: tf.Tensor, area_range, ratio_range) -> tf.Tensor:
    """A random crop window ``[y, x, h, w]`` (int32) inside an image of ``shape`` (H, W, C)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size=shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def inception_crop(image: tf.Tensor, seed: tf.Tensor, *, area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3),
                   name: Union[tf.Tensor, str] = "") -> tf.Tensor:
    """Random crop (uint8 (h, w, 3)) of an encoded or decoded image; JPEGs decode only the window."""
    if image.dtype == tf.string:
        data = image

        def jpeg():  # JPEG magic bytes: a known format, nothing to assert (saves ops on every image)
            window = _sample_crop_window(tf.image.extract_jpeg_shape(data), seed, area_range, ratio_range)
            return tf.image.decode_and_crop_jpeg(data, window, channels=3)

        def other():
            decoded = tf.io.decode_image(checked_bytes(data, name), channels=3, expand_animations=False,
                                         dtype=tf.uint8)
            decoded.set_shape([None, None, 3])
            w = _sample_crop_window(tf.shape(decoded), seed, area_range, ratio_range)
            return decoded[w[0]:w[0] + w[2], w[1]:w[1] + w[3]]

        crop = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    else:
        image = _as_rgb(image)
        w = _sample_crop_window(tf.shape(image), seed, area_range, ratio_range)
        crop = image[w[0]:w[0] + w[2], w[1]:w[1] + w[3]]
    crop.set_shape([None, None, 3])
    return crop


def check_image_format(image_format: str) -> str:
    """``image_format`` if it is one of IMAGE_FORMATS, else ValueError."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"Unknown image_format {image_format!r}; choose one of {IMAGE_FORMATS}.")
    return image_format


def finish(image: tf.Tensor, image_format: str, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """float32 grey levels -> the shipped image, clipped to 0..255 (bicubic overshoots): normalized
    float32 (``image_format="float32"``) or rounded to whole grey levels as uint8 (``"uint8"``)."""
    if check_image_format(image_format) == "uint8":
        return tf.saturate_cast(tf.round(image), tf.uint8)  # = cast(round(clip(x, 0, 255)))
    return normalize(tf.clip_by_value(image, 0.0, 255.0), mean, std)


def normalize(image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> tf.Tensor:
    """float32 image in grey levels 0..255 -> ``(x / 255 - mean) / std`` per channel."""
    mean = tf.constant(mean, tf.float32) * 255.0
    std = tf.constant(std, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def train_transform(image: tf.Tensor, seed: tf.Tensor, *, image_size: int, augment: str = "inception_crop_flip",
                    interpolation: str = "bilinear", antialias: bool = False,
                    area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3),
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    name: Union[tf.Tensor, str] = "", image_format: str = "float32",
                    randaugment: Union[str, RandAugmentSpec, None] = None,
                    random_erasing: float = 0.0) -> tf.Tensor:
    """Training transform of one image (encoded tf.string or uint8 HWC) -> float32 (image_size, image_size, 3).

    ``seed``: int32/int64 (2,), the only source of randomness (stateless ops; unused by "none").
    With ``augment="none"`` a uint8 batch (N, H, W, 3) may be given as well.
    ``image_format="uint8"``: the resized grey levels rounded to uint8 instead, not normalized
    (as PIL's uint8 resize in the torchvision recipe; at most 0.5 grey level from the float32 path).
    ``randaugment`` / ``random_erasing``: timm's RandAugment (string or spec) and random erasing
    (probability), after the crop and flip (or the plain resize of "none", one image at a time); with
    either, float32 images are whole grey levels normalised (as timm's PIL), see ``train_extras``.
    """
    check_interpolation(interpolation)
    spec = check_extras(randaugment, random_erasing)
    if augment == "inception_crop_flip":
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        crop = inception_crop(image, crop_seed, area_range=area_range, ratio_range=ratio_range, name=name)
        out = tf.image.resize(crop, [image_size, image_size], method=interpolation, antialias=antialias)
        if has_extras(spec, random_erasing):
            image = augment_grey_levels(out, seed, flip_seed, spec, interpolation, mean)
            return erase(finish(image, image_format, mean, std), seed, random_erasing,
                         image_format=image_format, mean=mean, std=std)
        # Flipped last, on the shipped (smallest) tensor: clip, round and normalize commute with it.
        return tf.image.stateless_random_flip_left_right(finish(out, image_format, mean, std), flip_seed)
    if augment == "none":
        decoded = decode_rgb(image, name, accurate=False) if image.dtype == tf.string else _as_rgb(image)
        out = tf.image.resize(decoded, [image_size, image_size], method=interpolation, antialias=True)
        if has_extras(spec, random_erasing):  # one image at a time (the pipeline maps per example)
            image = augment_grey_levels(out, seed, None, spec, interpolation, mean)
            return erase(finish(image, image_format, mean, std), seed, random_erasing,
                         image_format=image_format, mean=mean, std=std)
        return finish(out, image_format, mean, std)
    raise ValueError(f"Unknown augment {augment!r}; choose one of {AUGMENTS}.")


def resize_shorter_center_crop(image: tf.Tensor, *, image_size: int, resize_size: int,
                               interpolation: str = "bilinear") -> tf.Tensor:
    """uint8 (H, W, 3) (or a batch (N, H, W, 3) of one shape) -> float32 (..., image_size, image_size, 3).

    torchvision ``Resize(resize_size)`` (antialiased, as PIL) then ``CenterCrop(image_size)``;
    values are whole grey levels 0..255.
    """
    check_interpolation(interpolation)
    shape = tf.shape(image)
    h, w = tf.cast(shape[-3], tf.float64), tf.cast(shape[-2], tf.float64)
    size = tf.constant(resize_size, tf.float64)
    new_h = tf.where(h <= w, size, tf.floor(size * h / w))
    new_w = tf.where(h <= w, tf.floor(size * w / h), size)
    new_h, new_w = tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method=interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)  # half to even
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    crop = resized[..., top:top + image_size, left:left + image_size, :]
    crop.set_shape(image.shape[:-3].concatenate([image_size, image_size, 3]))
    return tf.round(tf.clip_by_value(crop, 0.0, 255.0))


def eval_transform(image: tf.Tensor, *, image_size: int, resize_size: int, interpolation: str = "bilinear",
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   name: Union[tf.Tensor, str] = "", image_format: str = "float32") -> tf.Tensor:
    """Eval transform of one image (encoded tf.string or uint8 HWC) -> float32 (image_size, image_size, 3) normalized.

    A uint8 batch (N, H, W, 3) of one shape works too. ``image_format="uint8"``: the same whole
    grey levels as uint8, not normalized (normalizing them gives the float32 output exactly).
    """
    decoded = decode_rgb(image, name) if image.dtype == tf.string else _as_rgb(image)
    crop = resize_shorter_center_crop(decoded, image_size=image_size, resize_size=resize_size,
                                      interpolation=interpolation)
    return finish(crop, image_format, mean, std)


ImageLike = Union[bytes, bytearray, np.ndarray, tf.Tensor]


def preprocess_for_eval(image: ImageLike, image_size: int = 224, resize_size: Optional[int] = 256, *,
                        crop_pct: Optional[float] = None, interpolation: str = "bilinear",
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        name: Optional[str] = None) -> np.ndarray:
    """The eval transform on one image: encoded bytes or a uint8 (H, W, 3) array -> float32 (image_size, image_size, 3).

    Same ops as the eval pipeline (torchvision Resize(resize_size) + CenterCrop(image_size),
    bilinear antialiased by default, ImageNet normalization). ``resize_size=None`` with
    ``crop_pct`` gives timm's ``floor(image_size / crop_pct)``. ``name`` (e.g. a file name) is
    used in error messages. Raises ValueError for undecodable data or an array that is not
    uint8 (H, W, 3).
    """
    label = name or "image"
    if resize_size is not None and crop_pct is not None:
        resize_size = None  # an explicit crop_pct wins over the default resize_size
    resize_size = resize_size_for(image_size, resize_size, crop_pct)
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(f"{label}: preprocess_for_eval takes encoded bytes or a uint8 array, not a path; "
                        "read the file first (open(path, 'rb').read()).")
    if isinstance(image, (bytes, bytearray)):
        tensor = tf.constant(bytes(image), tf.string)
    elif isinstance(image, tf.Tensor) and image.dtype == tf.string:
        tensor = image
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
            raise ValueError(f"{label}: expected a uint8 RGB image of shape (H, W, 3), got dtype {array.dtype} "
                             f"and shape {array.shape}.")
        tensor = tf.constant(array)
    if tensor.dtype == tf.string and not bool(is_known_format(tensor)):
        head = bytes(tensor.numpy()[:8])
        raise ValueError(f"{label}: cannot decode image: not JPEG/PNG/GIF/BMP/WebP data (starts with {head!r}).")
    try:
        out = eval_transform(tensor, image_size=image_size, resize_size=resize_size, interpolation=interpolation,
                             mean=mean, std=std, name=label)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise ValueError(f"{label}: cannot decode image: {short_tf_message(e)}") from None
    return out.numpy()
