"""Tests of timm's RandAugment and random erasing in eca_jax.data (issue 17, part 1).

- every RandAugment op against its PIL definition (``PIL.ImageOps``, ``PIL.ImageEnhance``,
  ``Image.transform``) on real photographs (scikit-learn's two sample images, bundled, resized to
  96x64), at arguments from timm's magnitude mapping;
- timm's magnitude -> argument mapping, the magnitude noise, the spec strings;
- random erasing: box sizes, untouched pixels, noise statistics, the uint8 encoding;
- the train stream with both on: deterministic per seed, exactly resumable, uint8 = float32.

Tolerances: LUT and enhance ops are PIL's integer/float32 arithmetic and must match exactly.
Geometric ops sample where PIL samples, but TF's kernel interpolates in float32 and PIL in double,
and both truncate to uint8: a value whose exact result is within ~1e-4 of a whole level may land one
level apart (measured: mean |diff| <= 0.03 levels, max 1). Rounding at the fill boundary and at exact
ties of nearest sampling (avoided here: the arguments are not simple fractions) could move a pixel
by more, so the bound is mean <= 0.1 level and <= 0.2% of values more than 2 levels apart.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_sample_images

from eca_jax import data
from eca_jax.data import erasing as E
from eca_jax.data import randaugment_ops as R
from eca_jax.data import transforms as T
from eca_jax.data.randaugment import RANDAUGMENT_INCREASING_OPS, RANDAUGMENT_OPS, RandAugmentSpec, parse_randaugment

tf = R.tf
MEAN, STD = np.array(T.IMAGENET_MEAN), np.array(T.IMAGENET_STD)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """scikit-learn's china.jpg and flower.jpg, resized to 96x64 (uint8 (64, 96, 3))."""
    return [np.asarray(Image.fromarray(im).resize((96, 64), Image.BILINEAR)) for im in load_sample_images().images]


def _ours(fn, image: np.ndarray, *args, **kw) -> np.ndarray:
    return fn(tf.constant(image, tf.float32), *args, **kw).numpy()


def _timm_level(magnitude: float, scale: float) -> float:
    return magnitude / 10.0 * scale


# ------------------------------------------------------------------ ops against PIL

def _solarize_add_pil(img: Image.Image, add: int) -> Image.Image:
    """timm's solarize_add: a 256-entry LUT per band through ``Image.point``."""
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * 3)


@pytest.mark.parametrize("magnitude", [2.5, 6.0, 9.0])
def test_lut_and_enhance_ops_equal_pil_exactly(photos, magnitude):
    level = magnitude / 10.0
    bits, thresh, add = int(level * 4), min(256, int(level * 256)), min(128, int(level * 110))
    enhance = level * 1.8 + 0.1
    for image in photos:
        pil = Image.fromarray(image)
        cases = {
            "AutoContrast": (_ours(R.auto_contrast, image), ImageOps.autocontrast(pil)),
            "Equalize": (_ours(R.equalize, image), ImageOps.equalize(pil)),
            "Invert": (_ours(R.invert, image), ImageOps.invert(pil)),
            "Posterize": (_ours(R.posterize, image, max(bits, 1)), ImageOps.posterize(pil, max(bits, 1))),
            "PosterizeIncreasing": (_ours(R.posterize, image, 4 - bits), ImageOps.posterize(pil, 4 - bits)),
            "Solarize": (_ours(R.solarize, image, thresh), ImageOps.solarize(pil, thresh)),
            "SolarizeIncreasing": (_ours(R.solarize, image, 256 - thresh), ImageOps.solarize(pil, 256 - thresh)),
            "SolarizeAdd": (_ours(R.solarize_add, image, add), _solarize_add_pil(pil, add)),
        }
        for name, op, pil_op in (("Color", R.color, ImageEnhance.Color), ("Contrast", R.contrast, ImageEnhance.Contrast),
                                 ("Brightness", R.brightness, ImageEnhance.Brightness),
                                 ("Sharpness", R.sharpness, ImageEnhance.Sharpness)):
            for factor in (enhance, max(0.1, 1 - 0.9 * level), 1 + 0.9 * level):  # plain, increasing -/+
                cases[f"{name}({factor:.3f})"] = (_ours(op, image, factor), pil_op(pil).enhance(factor))
        for name, (ours, ref) in cases.items():
            np.testing.assert_array_equal(ours, np.asarray(ref, np.float32), err_msg=name)
    assert not np.array_equal(cases["Equalize"][0], photos[-1])  # the ops do change the photos


def test_posterize_edges_and_blend_extrapolation_clip(photos):
    image = photos[0]
    np.testing.assert_array_equal(_ours(R.posterize, image, 8), image)  # timm: 8 bits -> unchanged
    np.testing.assert_array_equal(_ours(R.posterize, image, 0), 0 * image)  # old PIL: mask 0 -> black
    bright = _ours(R.brightness, image, 1.9)
    assert bright.max() == 255 and np.array_equal(bright, np.asarray(ImageEnhance.Brightness(
        Image.fromarray(image)).enhance(1.9), np.float32))


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_geometric_ops_match_pil_transform(photos, interpolation):
    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    fill = R.TIMM_FILL
    kw = dict(interpolation=interpolation, fill=fill)
    for image in photos:
        pil = Image.fromarray(image)
        w, h = pil.size
        for magnitude, sign in ((3.3, 1), (7.1, -1), (9.7, 1)):
            shear, pct, degrees = (sign * _timm_level(magnitude, s) for s in (0.3, 0.45, 30.0))
            affine = lambda m: pil.transform(pil.size, Image.AFFINE, m, resample=resample, fillcolor=fill)  # noqa
            cases = {
                "Rotate": (_ours(R.rotate, image, degrees, **kw), pil.rotate(degrees, resample=resample, fillcolor=fill)),
                "ShearX": (_ours(R.shear_x, image, shear, **kw), affine((1, shear, 0, 0, 1, 0))),
                "ShearY": (_ours(R.shear_y, image, shear, **kw), affine((1, 0, 0, shear, 1, 0))),
                "TranslateXRel": (_ours(R.translate_x_rel, image, pct, **kw), affine((1, 0, pct * w, 0, 1, 0))),
                "TranslateYRel": (_ours(R.translate_y_rel, image, pct, **kw), affine((1, 0, 0, 0, 1, pct * h))),
            }
            for name, (ours, ref) in cases.items():
                diff = np.abs(ours - np.asarray(ref, np.float32))
                what = f"{name} m={magnitude} {interpolation}: mean {diff.mean():.4f}, >2: {np.mean(diff > 2):.4f}"
                assert diff.mean() <= 0.1 and np.mean(diff > 2) <= 0.002, what
                filled = np.all(np.asarray(ref) == fill, axis=-1)
                assert 0.01 < filled.mean() < 0.9, what  # the fill colour is really exercised


def test_level_arguments_and_apply_op_follow_timm(photos):
    """``level_argument`` against timm's LEVEL_TO_ARG formulas, written out here; ``apply_op`` runs that op."""
    def timm(name, m, negate):
        sgn = -1.0 if negate else 1.0
        lv = m / 10.0
        table = {"Rotate": sgn * lv * 30, "ShearX": sgn * lv * 0.3, "ShearY": sgn * lv * 0.3,
                 "TranslateXRel": sgn * lv * 0.45, "TranslateYRel": sgn * lv * 0.45, "Posterize": int(lv * 4),
                 "PosterizeIncreasing": 4 - int(lv * 4), "Solarize": min(256, int(lv * 256)),
                 "SolarizeIncreasing": 256 - min(256, int(lv * 256)), "SolarizeAdd": min(128, int(lv * 110))}
        for base in ("Color", "Contrast", "Brightness", "Sharpness"):
            table[base], table[base + "Increasing"] = lv * 1.8 + 0.1, max(0.1, 1.0 + sgn * lv * 0.9)
        return table.get(name)
    for name in sorted(set(RANDAUGMENT_OPS) | set(RANDAUGMENT_INCREASING_OPS)):
        for m in (0.0, 2.5, 5.0, 9.0, 10.0, 12.0):
            for negate in (False, True):
                ours = R.level_argument(name, m, negate)
                expected = timm(name, m, negate)
                assert (ours is None) == (expected is None), name
                if expected is not None:
                    assert abs(float(ours) - expected) < 1e-9, (name, m, negate, float(ours), expected)
    image = photos[1]
    np.testing.assert_array_equal(_ours(lambda x: R.apply_op("SolarizeIncreasing", x, 5.0, False), image),
                                  _ours(R.solarize, image, 128))
    np.testing.assert_array_equal(_ours(lambda x: R.apply_op("Rotate", x, 5.0, True, fill=(1, 2, 3)), image),
                                  _ours(R.rotate, image, -15.0, fill=(1, 2, 3)))


# ------------------------------------------------------------------ magnitudes, specs, RandAugment

def test_magnitude_noise_conventions():
    seed = tf.constant([3, 4], tf.int64)
    fixed = R.sample_magnitude(RandAugmentSpec(magnitude=9.0), seed, [1000]).numpy()
    assert np.all(fixed == 9.0)
    gauss = R.sample_magnitude(RandAugmentSpec(magnitude=5.0, magnitude_std=1.0), seed, [20000]).numpy()
    assert abs(gauss.mean() - 5.0) < 0.03 and abs(gauss.std() - 1.0) < 0.03  # 5 sigma: 0.007 / 0.005
    uniform = R.sample_magnitude(RandAugmentSpec(magnitude=7.0, magnitude_std=math.inf), seed, [20000]).numpy()
    assert uniform.min() >= 0 and uniform.max() <= 7.0 and abs(uniform.mean() - 3.5) < 0.1
    assert abs(np.mean(uniform < 1.75) - 0.25) < 0.02  # flat, not bell-shaped
    clipped = R.sample_magnitude(RandAugmentSpec(magnitude=9.0, magnitude_std=2.0), seed, [20000]).numpy()
    assert clipped.max() == 10.0 and abs(np.mean(clipped == 10.0) - 0.3085) < 0.02  # P(N(9, 2) > 10)
    low = R.sample_magnitude(RandAugmentSpec(magnitude=0.5, magnitude_std=1.0, magnitude_max=12), seed, [20000])
    assert low.numpy().min() == 0.0 and abs(np.mean(low.numpy() == 0.0) - 0.3085) < 0.02
    high = R.sample_magnitude(RandAugmentSpec(magnitude=11.0, magnitude_std=1.0, magnitude_max=12), seed, [20000])
    assert high.numpy().max() == 12.0 and np.mean(high.numpy() > 10.0) > 0.8  # mmax lifts the default bound 10


@pytest.mark.parametrize("spec, expected", [
    ("rand-m9-mstd0.5-inc1", dict(num_layers=2, magnitude=9, magnitude_std=0.5, increasing=True, prob=0.5)),
    ("rand-m7-mstd0.5-inc1", dict(magnitude=7, magnitude_std=0.5, increasing=True)),
    ("rand-m6-mstd0.5", dict(magnitude=6, magnitude_std=0.5, increasing=False)),
    ("rand-n3-m10-mstd101-mmax15-p0.7", dict(num_layers=3, magnitude_std=math.inf, magnitude_max=15, prob=0.7)),
    ("rand-mstdinf", dict(magnitude=10, magnitude_std=math.inf)),
])
def test_parse_randaugment_accepts_timm_strings(spec, expected):
    parsed = parse_randaugment(spec)
    for field, value in expected.items():
        assert getattr(parsed, field) == value, (spec, field)
    assert parsed.ops == (RANDAUGMENT_INCREASING_OPS if parsed.increasing else RANDAUGMENT_OPS)


@pytest.mark.parametrize("spec, match", [
    ("rand-m9-x3", r"unknown RandAugment key 'x' in 'rand-m9-x3'; valid keys: m, n, mstd, mmax, inc, p"),
    ("rand-m9-mtsd0.5", r"unknown RandAugment key 'mtsd'"),
    ("rand-m9-mstd", r"key 'mstd' has no value"),
    ("rand-m9-inc2", r"'inc' takes 0 or 1"),
    ("rand-n2.5", r"'n' takes an integer"),
    ("rand-m9-p1.5", r"prob out of range"),
    ("rand-m9--n2", r"empty part"),
    ("rnd-m9", r"must start with 'rand'"),
    ("rand-m9-m8", r"'m' given twice"),
])
def test_parse_randaugment_rejects_typos(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_randaugment(spec)


def test_op_subset_and_import_without_tensorflow():
    spec = parse_randaugment("rand-m9-inc1", exclude=["Invert", "Posterize"])
    assert "Invert" not in spec.ops and "PosterizeIncreasing" not in spec.ops and len(spec.ops) == 13
    assert parse_randaugment("rand-m9", ops=["Rotate", "ShearX"]).ops == ("Rotate", "ShearX")
    with pytest.raises(ValueError, match=r"unknown RandAugment op 'Rotat' in ops; valid names: .*Rotate"):
        parse_randaugment("rand-m9", ops=["Rotat"])
    with pytest.raises(ValueError, match="no ops left"):
        parse_randaugment("rand-m9", ops=["Rotate"], exclude=["Rotate"])
    code = ("import sys; from eca_jax.data import parse_randaugment; parse_randaugment('rand-m9-mstd0.5-inc1'); "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=T.__file__.rsplit("/eca_jax/", 1)[0])
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_rand_augment_is_seeded_and_gated(photos):
    image = tf.constant(photos[0], tf.float32)
    spec = parse_randaugment("rand-m9-mstd0.5-inc1-n3")
    outs = [R.rand_augment(image, tf.constant([s, 1], tf.int64), spec).numpy() for s in (5, 5, 6, 7, 8)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert sum(not np.array_equal(outs[0], o) for o in outs[2:]) >= 2
    for out in outs:
        assert np.all(out == np.round(out)) and out.min() >= 0 and out.max() <= 255
    never = RandAugmentSpec(prob=0.0, num_layers=4)
    np.testing.assert_array_equal(R.rand_augment(image, tf.constant([1, 2], tf.int64), never).numpy(), photos[0])
    always_invert = RandAugmentSpec(prob=1.0, num_layers=1, ops=("Invert",))
    np.testing.assert_array_equal(R.rand_augment(image, tf.constant([1, 2], tf.int64), always_invert).numpy(),
                                  255.0 - photos[0])
    twice = RandAugmentSpec(prob=1.0, num_layers=2, ops=("Invert",))
    np.testing.assert_array_equal(R.rand_augment(image, tf.constant([1, 2], tf.int64), twice).numpy(), photos[0])


# ------------------------------------------------------------------ random erasing

def _boxes(n: int, probability: float) -> np.ndarray:
    """int (n, 4): ``erasing_box`` of a 64x96 image for seeds (0, 9) .. (n - 1, 9), in one graph."""
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(9, tf.int64))], axis=1)
    draw = tf.function(lambda s: tf.map_fn(lambda k: E.erasing_box(64, 96, k, probability), s,
                                                  fn_output_signature=tf.int32))
    return draw(seeds).numpy()


def test_erasing_boxes_have_timm_sizes_and_placement():
    boxes = _boxes(300, 1.0)
    top, left, h, w = boxes.T
    assert np.all(h > 0) and np.all((top >= 0) & (top + h <= 64) & (left >= 0) & (left + w <= 96))
    assert np.all((h < 64) & (w < 96))  # timm accepts a box only when strictly smaller than the image
    # h, w are rounded: allow the area / aspect that half a pixel either way can give.
    lo_area = (np.sqrt(0.02 * 64 * 96) - 0.5) ** 2 / (64 * 96)
    area = h * w / (64 * 96)
    aspect = h / w
    assert area.min() >= lo_area * 0.9 and area.max() <= ((h + 0.5) * (w + 0.5)).max() / (64 * 96)
    assert np.all(area <= (1 / 3) * (1 + 0.5 / h) * (1 + 0.5 / w)) and np.all(area >= 0.02 * (1 - 0.5 / h) * (1 - 0.5 / w))
    assert np.all(aspect >= 0.3 * (1 - 0.5 / h) / (1 + 0.5 / w)) and np.all(aspect <= (1 / 0.3) * (1 + 0.5 / h) / (1 - 0.5 / w))
    assert np.mean(np.log(aspect) > 0) > 0.3 and np.mean(np.log(aspect) < 0) > 0.3  # log-uniform: both sides
    assert len({(t, l) for t, l in zip(top, left)}) > 250  # placements vary
    half = np.mean(_boxes(1000, 0.5)[:, 2] > 0)
    assert abs(half - 0.5) < 0.06  # 4 sigma


def test_erasing_changes_only_the_box_with_normal_noise(photos):
    image = T.normalize(tf.constant(photos[1], tf.float32)).numpy()
    same = E.random_erasing(tf.constant(image), tf.constant([1, 1], tf.int64), 0.0)
    np.testing.assert_array_equal(np.asarray(same), image)
    noise = []
    for s in range(20):
        seed = tf.constant([s, 3], tf.int64)
        out = E.random_erasing(tf.constant(image), seed, 1.0).numpy()
        box = E.erasing_box(64, 96, tf.random.experimental.stateless_split(seed, 2)[0], 1.0).numpy()
        inside = E.box_mask(64, 96, box).numpy()[..., 0]
        np.testing.assert_array_equal(out[~inside], image[~inside])
        assert np.all(out[inside] != image[inside])
        noise.append(out[inside].ravel())
    noise = np.concatenate(noise)
    assert noise.size > 5000 and abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    assert abs(np.mean(np.abs(noise) < 1.0) - 0.6827) < 0.03  # normal, not uniform


def test_erasing_uint8_is_the_same_noise_in_grey_levels(photos):
    grey = photos[0]
    for s in range(5):
        seed = tf.constant([s, 7], tf.int64)
        f = E.random_erasing(T.normalize(tf.constant(grey, tf.float32)), seed, 1.0).numpy()
        u = E.random_erasing(tf.constant(grey), seed, 1.0, image_format="uint8").numpy()
        assert u.dtype == np.uint8
        back = (u / 255.0 - MEAN) / STD
        step = 0.5 / (255 * STD)  # half a grey level in normalised units
        lo, hi = -MEAN / STD, (1 - MEAN) / STD
        expected = np.clip(f, lo, hi)
        assert np.all(np.abs(back - expected) <= step + 1e-5)
        assert np.mean(f < lo) + np.mean(f > hi) < 0.05


# ------------------------------------------------------------------ the train stream

@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("digits", data_dir=path)
    return path


@pytest.fixture(scope="module")
def sharding() -> NamedSharding:
    return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in ("image", "label"))


@pytest.mark.slow  # 27 s on the shared 2 cores (load 9), three pipelines traced
def test_train_stream_with_both_is_deterministic_and_resumes_exactly(digits_dir, sharding):
    """Three streams of one seed: uninterrupted; stopped inside epoch 1 (its batches so far equal the
    uninterrupted ones: deterministic); resumed from the stopped one's state (continues exactly)."""
    kw = dict(global_batch_size=16, image_size=24, data_dir=digits_dir, cache=True, split="train[:64]",
              augment="inception_crop_flip", randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.5)
    make = lambda state=None: data.make_train_iterator("digits", **kw, seed=11, sharding=sharding,  # noqa
                                                       state=state)
    first = make()
    n_stop = first.steps_per_epoch + 1  # inside the second epoch
    run = [next(first) for _ in range(n_stop + 3)]
    stopped = make()
    assert all(_equal(expected, next(stopped)) for expected in run[:n_stop])
    resumed = make(state=json.loads(json.dumps(stopped.get_state())))
    assert all(_equal(expected, next(resumed)) for expected in run[n_stop:])
    images = np.stack([np.asarray(b["image"]) for b in run])
    assert len({x.tobytes() for x in images.reshape(-1, 24 * 24 * 3)}) == images.shape[0] * 16  # all differ


def test_uint8_and_float32_streams_agree_outside_erased_boxes(digits_dir, sharding):
    kw = dict(global_batch_size=32, image_size=24, seed=4, sharding=sharding, data_dir=digits_dir, cache=True,
              split="train[:64]", augment="inception_crop_flip", randaugment="rand-m9-mstd0.5", random_erasing=0.5)
    f = np.asarray(next(data.make_train_iterator("digits", **kw))["image"], np.float64)
    u = np.asarray(next(data.make_train_iterator("digits", **kw, image_format="uint8"))["image"])
    grey = f * STD * 255 + MEAN * 255
    erased = np.abs(grey - np.round(grey)).max(-1) > 1e-3  # the noise is not whole grey levels
    n_erased = 0
    for mask in erased:
        if mask.any():  # one rectangle per image
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].mean() > 0.95
            n_erased += 1
    assert 4 < n_erased < len(erased) - 4
    back = (u / 255.0 - MEAN) / STD
    np.testing.assert_allclose(back[~erased], f[~erased], rtol=0, atol=1e-5)
    inside = erased[..., None] & (grey > 0.5) & (grey < 254.5)
    assert np.all(np.abs(back - f)[inside] <= 0.5 / (255 * STD.min()) + 1e-5)


def test_extras_after_the_plain_resize_and_bad_values(digits_dir, sharding):
    """With augment="none" (digits' default) the extras follow the plain resize, per example: the
    same seed gives the same batch, the labels come in the same order as without extras, the
    images differ; bad values are refused before any data is read."""
    kw = dict(global_batch_size=32, image_size=16, seed=3, sharding=sharding, data_dir=digits_dir, cache=True,
              split="train[:64]")
    extras = dict(randaugment="rand-m9-mstd0.5", random_erasing=0.5)
    first = next(data.make_train_iterator("digits", **kw, **extras))
    again = next(data.make_train_iterator("digits", **kw, **extras))
    plain = next(data.make_train_iterator("digits", **kw))
    np.testing.assert_array_equal(np.asarray(first["image"]), np.asarray(again["image"]))
    np.testing.assert_array_equal(np.asarray(first["label"]), np.asarray(plain["label"]))
    changed = np.abs(np.asarray(first["image"]) - np.asarray(plain["image"])).max(axis=(1, 2, 3)) > 1e-3
    assert changed.mean() > 0.5
    base = dict(global_batch_size=len(jax.devices()), image_size=8, seed=0, sharding=sharding, data_dir=digits_dir)
    with pytest.raises(ValueError, match="unknown RandAugment key 'q'"):
        data.make_train_iterator("digits", **base, randaugment="rand-m9-q1")
    with pytest.raises(ValueError, match="random_erasing is a probability"):
        data.make_train_iterator("digits", **base, augment="inception_crop_flip", random_erasing=1.5)
