"""Mixup / CutMix on device (eca_jax.train.mixing) against timm's ``Mixup`` ("batch" mode).

The reference is timm's definition rewritten here in NumPy (NCHW, as timm's tensors; torch is not
needed): ``one_hot``/``mixup_target``, ``rand_bbox`` with its centre given, ``_mix_batch`` with a
given lam and box. Fixed lam/box cases must match bit for bit (CutMix copies pixels; mixup is the
same two float32 products and one sum). The sampling is checked by its invariants (boxes inside
the image, lam = 1 - box area / (H W)) and by statistics over 4000 keys with loose bounds stated
at each check (about 5 standard errors). Sharded runs (8 fake devices, Auto and Explicit axes)
must equal the unsharded run exactly: the same elementwise ops on the same numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from eca_jax.train.mixing import (MixConfig, MixParams, apply_mix, box_from_lam, box_mask,
                                  mix_batch, mix_batch_with_params, sample_mix, smooth_one_hot)

B, H, W, C, K = 8, 9, 7, 3, 5
N_KEYS = 4000


# ------------------------------------------------------------------ timm's definition, in NumPy

def timm_one_hot(labels, num_classes, on_value, off_value):
    out = np.full((len(labels), num_classes), off_value, np.float32)
    out[np.arange(len(labels)), labels] = on_value
    return out


def timm_mixup_target(labels, num_classes, lam, smoothing):
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = timm_one_hot(labels, num_classes, on, off)
    y2 = timm_one_hot(labels[::-1], num_classes, on, off)
    return y1 * np.float32(lam) + y2 * np.float32(1.0 - np.float32(lam))


def timm_rand_bbox(img_hw, lam, cy, cx):
    """rand_bbox(margin=0) with the centre drawn by the caller."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_hw
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    yl = np.clip(cy - cut_h // 2, 0, img_h)
    yh = np.clip(cy + cut_h // 2, 0, img_h)
    xl = np.clip(cx - cut_w // 2, 0, img_w)
    xh = np.clip(cx + cut_w // 2, 0, img_w)
    return yl, yh, xl, xh


def timm_mix_batch_nchw(x, lam, use_cutmix, box):
    """Mixup._mix_batch on an NCHW float32 array (copy), lam and box given."""
    x = x.copy()
    if use_cutmix:
        yl, yh, xl, xh = box
        x[:, :, yl:yh, xl:xh] = x[::-1][:, :, yl:yh, xl:xh]
    else:
        x_flipped = x[::-1] * np.float32(1.0 - np.float32(lam))
        x = x * np.float32(lam) + x_flipped
    return x


# ------------------------------------------------------------------ helpers

def _batch(seed=0, b=B, h=H, w=W):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, h, w, C)).astype(np.float32)
    labels = rng.integers(0, K, size=(b,)).astype(np.int32)
    return images, labels


def _nhwc_to_nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


# One compile each (compiles dominate this file's time; jax.random.beta's is the largest).
_APPLY = jax.jit(apply_mix)
MIXED = MixConfig(num_classes=K, mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.5, switch_prob=0.3)
BOTH = MixConfig(num_classes=K, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)


@jax.jit
def _mix_and_draw(key, images, labels):
    """mix_batch with BOTH -> ((images, targets), the draw it used)."""
    images, targets, params = mix_batch_with_params(key, images, labels, BOTH)
    return (images, targets), params


def _samples(cfg, image_hw=(H, W), n=N_KEYS):
    """sample_mix over n keys (jit of vmap), as numpy."""
    keys = jax.random.split(jax.random.key(123), n)
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda key: sample_mix(key, cfg, image_hw)))(keys))


# ------------------------------------------------------------------ fixed lam / box

def test_mixup_with_a_fixed_lambda_is_exactly_timms():
    images, labels = _batch()
    lam = np.float32(0.3125)
    targets = smooth_one_hot(jnp.asarray(labels), K, 0.1)
    params = MixParams(jnp.float32(lam), jnp.bool_(False), jnp.zeros((4,), jnp.int32))
    out, soft = _APPLY(jnp.asarray(images), targets, params)
    expected = timm_mix_batch_nchw(_nhwc_to_nchw(images), lam, False, None)
    np.testing.assert_array_equal(_nhwc_to_nchw(np.asarray(out)), expected)
    np.testing.assert_array_equal(np.asarray(soft), timm_mixup_target(labels, K, lam, 0.1))
    # by hand, too: example 0 is lam * x0 + (1 - lam) * x7
    np.testing.assert_allclose(np.asarray(out)[0], lam * images[0] + (1 - lam) * images[-1], rtol=1e-6)


def test_cutmix_with_a_fixed_box_is_exactly_timms_and_area_is_the_label_weight():
    images, labels = _batch(1)
    box = (2, 7, 1, 4)                                  # rows 2..6, columns 1..3: 15 of 63 pixels
    lam = np.float32(1.0 - 15 / (H * W))
    targets = smooth_one_hot(jnp.asarray(labels), K, 0.0)
    params = MixParams(jnp.float32(lam), jnp.bool_(True), jnp.asarray(box, jnp.int32))
    out, soft = _APPLY(jnp.asarray(images), targets, params)
    out = np.asarray(out)
    expected = images.copy()
    expected[:, 2:7, 1:4] = images[::-1, 2:7, 1:4]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(_nhwc_to_nchw(out),
                                  timm_mix_batch_nchw(_nhwc_to_nchw(images), lam, True, box))
    np.testing.assert_array_equal(np.asarray(soft), timm_mixup_target(labels, K, lam, 0.0))
    # the pixels taken from the partner (all channels differ: random normal images) = 1 - lam
    taken = np.all(out != images, axis=-1) & np.all(out == images[::-1], axis=-1)
    np.testing.assert_allclose(taken.mean(axis=(1, 2)), 1.0 - lam, rtol=1e-6)


def test_box_mask_is_the_slice():
    mask = np.asarray(box_mask(jnp.asarray([3, 5, 0, 7]), (H, W)))
    expected = np.zeros((1, H, W, 1), bool)
    expected[:, 3:5, 0:7] = True
    np.testing.assert_array_equal(mask, expected)


def test_box_from_lam_is_timms_rand_bbox():
    rng = np.random.default_rng(3)
    for hw in [(H, W), (224, 224), (13, 32)]:
        lams = rng.uniform(0, 1, size=600).astype(np.float32)
        lams[:3] = [0.0, 0.5, 1.0]
        centers = np.stack([rng.integers(0, hw[0], 600), rng.integers(0, hw[1], 600)], 1).astype(np.int32)
        boxes = np.asarray(jax.jit(jax.vmap(lambda lam, c: box_from_lam(lam, c, hw)))(lams, centers))
        expected = np.array([timm_rand_bbox(hw, float(lam), cy, cx) for lam, (cy, cx) in zip(lams, centers)])
        np.testing.assert_array_equal(boxes, expected)


def test_smooth_one_hot_is_timms():
    _, labels = _batch(2)
    for smoothing in (0.0, 0.1, 0.3):
        np.testing.assert_array_equal(np.asarray(smooth_one_hot(jnp.asarray(labels), K, smoothing)),
                                      timm_one_hot(labels, K, 1 - smoothing + smoothing / K, smoothing / K))


# ------------------------------------------------------------------ sampling

def _check_boxes(s, image_hw=(H, W)):
    """Boxes inside the image and lam = 1 - box area / (H W) (correct_lam)."""
    h, w = image_hw
    y0, y1, x0, x1 = s.box.T
    assert ((0 <= y0) & (y0 <= y1) & (y1 <= h) & (0 <= x0) & (x0 <= x1) & (x1 <= w)).all()
    np.testing.assert_allclose(s.lam, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), rtol=0, atol=1e-6)


def test_sampling_frequencies_beta_and_boxes():
    """MIXED over 4000 keys: prob 0.5 unmixed (lam 1, no CutMix), switch_prob 0.3 CutMix: 15% CutMix
    (binomial s.e. <= 0.008: bounds 0.04 and 0.03). Mixup lam ~ Beta(0.4, 0.4): mean 1/2, variance
    1 / (4 (2a + 1)) = 0.139; over the ~1400 mixup draws the s.e. are ~0.01 and ~0.003: bounds 0.05
    and 0.02. CutMix boxes inside the image with lam = 1 - area / (H W)."""
    s = _samples(MIXED)
    unmixed = ~s.use_cutmix & (s.lam == 1.0)
    assert abs(unmixed.mean() - 0.5) < 0.04
    assert abs(s.use_cutmix.mean() - 0.15) < 0.03
    assert not s.box[~s.use_cutmix].any()
    lam = s.lam[~s.use_cutmix & ~unmixed]
    assert ((0 <= lam) & (lam < 1)).all()
    assert abs(lam.mean() - 0.5) < 0.05
    assert abs(lam.var() - 1 / (4 * (2 * 0.4 + 1))) < 0.02
    cut = jax.tree.map(lambda a: a[s.use_cutmix], s)
    _check_boxes(cut)
    assert (cut.lam < 1).mean() > 0.8  # most boxes are not empty


def test_minmax_boxes():
    cfg = MixConfig(num_classes=K, cutmix_alpha=0.3, cutmix_minmax=(0.2, 0.8))
    s = _samples(cfg, n=1000)
    assert s.use_cutmix.all()
    _check_boxes(s)
    y0, y1, x0, x1 = s.box.T  # sizes in [int(0.2 size), int(0.8 size)), each drawn
    assert set(y1 - y0) == set(range(int(H * 0.2), int(H * 0.8)))
    assert set(x1 - x0) == set(range(int(W * 0.2), int(W * 0.8)))


@pytest.mark.parametrize("switch_prob", [0.0, 1.0])
def test_switch_prob_zero_and_one_always_pick_mixup_or_cutmix(switch_prob):
    cfg = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob)
    picks = [bool(sample_mix(jax.random.key(seed), cfg, (H, W)).use_cutmix) for seed in range(24)]
    assert picks == [bool(switch_prob)] * 24


def test_prob_zero_is_identity_with_smoothed_targets():
    images, labels = _batch(4)
    cfg = MixConfig(num_classes=K, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, label_smoothing=0.2)
    for seed in range(3):
        out, soft = mix_batch(jax.random.key(seed), jnp.asarray(images), jnp.asarray(labels), cfg)
        np.testing.assert_array_equal(np.asarray(out), images)
        np.testing.assert_array_equal(np.asarray(soft), timm_one_hot(labels, K, 1 - 0.2 + 0.2 / K, 0.2 / K))


def test_mix_batch_equals_timm_with_its_draws():
    """mix_batch = timm's _mix_batch + mixup_target with the same draws (exactly)."""
    images, labels = _batch(5, b=16)
    kinds = set()
    for seed in range(6):
        (out, soft), p = jax.tree.map(np.asarray, _mix_and_draw(jax.random.key(seed), images, labels))
        kinds.add(bool(p.use_cutmix))
        expected = timm_mix_batch_nchw(_nhwc_to_nchw(images), p.lam, bool(p.use_cutmix), tuple(p.box))
        np.testing.assert_array_equal(_nhwc_to_nchw(out), expected)
        np.testing.assert_array_equal(soft, timm_mixup_target(labels, K, p.lam, 0.1))
    assert kinds == {False, True}


# ------------------------------------------------------------------ meshes

@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_batch_equals_unsharded(axis_type):
    """8 devices, batch 16 sharded over "data"; a mixup and a CutMix draw."""
    images, labels = _batch(5, b=16)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, P("data"))
    kinds = set()
    for seed in (0, 1, 2):
        key = jax.random.key(seed)
        ref, draw = _mix_and_draw(key, images, labels)
        with jax.set_mesh(mesh):
            out, _ = _mix_and_draw(key, jax.device_put(images, sharding), jax.device_put(labels, sharding))
        assert out[0].sharding.spec[0] == "data"
        kinds.add(bool(draw.use_cutmix))
        np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref[0]))
        np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref[1]))
        assert not np.array_equal(np.asarray(out[0]), images)  # it did mix
    assert kinds == {False, True}


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("field, value", [
    ("mixup_alpha", -0.1), ("cutmix_alpha", float("nan")), ("prob", 1.5), ("switch_prob", -0.1),
    ("label_smoothing", 1.0), ("num_classes", 0), ("correct_lam", 1),
    ("cutmix_minmax", (0.5, 0.4)), ("cutmix_minmax", (0.0, 0.5)), ("cutmix_minmax", (0.2, 1.1)),
    ("cutmix_minmax", (0.2,)),
])
def test_config_validation_names_the_field(field, value):
    cfg = MixConfig(**{"num_classes": K, "mixup_alpha": 1.0, field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    with pytest.raises(ValueError, match=field):
        mix_batch(jax.random.key(0), jnp.zeros((2, H, W, C)), jnp.zeros((2,), jnp.int32), cfg)


def test_bad_batches_are_rejected():
    cfg = MixConfig(num_classes=K, mixup_alpha=1.0)
    images, labels = _batch(8)
    with pytest.raises(ValueError, match="even"):
        mix_batch(jax.random.key(0), images[:3], labels[:3], cfg)
    with pytest.raises(ValueError, match="normalisation"):
        mix_batch(jax.random.key(0), images.astype(np.uint8), labels, cfg)
    with pytest.raises(ValueError, match="labels"):
        mix_batch(jax.random.key(0), images, labels[:4], cfg)
    with pytest.raises(ValueError, match="cutmix_minmax"):  # int(0.25 * 9) == int(0.3 * 9): no size
        sample_mix(jax.random.key(0), MixConfig(num_classes=K, cutmix_minmax=(0.25, 0.3)), (H, W))


def test_disabled_config_and_list_minmax():
    assert not MixConfig(num_classes=K).enabled
    assert not MixConfig(num_classes=K, mixup_alpha=1.0, prob=0.0).enabled
    cfg = MixConfig(num_classes=K, cutmix_minmax=[0.2, 0.8])
    assert cfg.enabled and cfg.cutmix_minmax == (0.2, 0.8) and hash(cfg)
