"""Soft-target losses (eca_jax.train.losses) against PyTorch's definitions.

References: ``torch.nn.functional.cross_entropy(logits, probabilities)`` (soft targets) and
``binary_cross_entropy_with_logits`` (timm's ``BinaryCrossEntropy`` calls it on the smoothed /
mixed targets, made 0/1 by ``> target_threshold`` when set). Random logits (std 3) and random
soft targets (Dirichlet rows, smoothed one-hot, mixed pairs); tolerance rel 1e-6 in float32 on
per-example losses (both sides sum K float32 terms in their own order and use their own
log-sum-exp / log-sigmoid formulas: observed ~1e-7).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eca_jax.train.losses import binary_cross_entropy, make_loss, soft_cross_entropy
from eca_jax.train.mixing import MixParams, apply_mix, smooth_one_hot

B, K = 32, 10
RTOL = 1e-6


def _logits_and_targets(seed=0):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.normal(size=(B, K))).astype(np.float32)
    soft = rng.dirichlet(np.full(K, 0.5), size=B).astype(np.float32)
    labels = rng.integers(0, K, size=B).astype(np.int32)
    return logits, soft, labels


def _mixed_targets(labels, lam=0.7, smoothing=0.1):
    """Smoothed one-hot targets mixed with the flipped batch (what mix_batch gives)."""
    targets = smooth_one_hot(jnp.asarray(labels), K, smoothing)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(B, 2, 2, 1)), jnp.float32)
    return np.array(apply_mix(images, targets, MixParams(jnp.float32(lam), jnp.bool_(False),
                                                            jnp.zeros(4, jnp.int32)))[1])


def test_soft_cross_entropy_matches_torch():
    logits, soft, labels = _logits_and_targets()
    for targets in (soft, _mixed_targets(labels)):
        ours = np.asarray(soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
        ref = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), reduction="none").numpy()
        assert ours.shape == (B,) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, rtol=RTOL)


def test_soft_cross_entropy_of_mixed_targets_is_the_mixed_loss():
    """CE(lam t1 + (1 - lam) t2) = lam CE(t1) + (1 - lam) CE(t2): timm's mixup_criterion form."""
    logits, _, labels = _logits_and_targets(2)
    lam = 0.7
    mixed = soft_cross_entropy(jnp.asarray(logits), jnp.asarray(_mixed_targets(labels, lam, 0.0)))
    ref = (lam * F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long(), reduction="none")
           + (1 - lam) * F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels[::-1].copy()).long(),
                                         reduction="none")).numpy()
    np.testing.assert_allclose(np.asarray(mixed), ref, rtol=RTOL)


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_binary_cross_entropy_matches_torch(threshold):
    logits, soft, labels = _logits_and_targets(3)
    for targets in (soft, _mixed_targets(labels)):
        ours = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), target_threshold=threshold)
        torch_targets = torch.from_numpy(targets)
        if threshold is not None:
            torch_targets = torch_targets.gt(threshold).to(torch_targets.dtype)
        ref = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch_targets, reduction="none")
        assert ours.shape == (B,) and ours.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(ours), ref.mean(-1).numpy(), rtol=RTOL)
        batch_mean = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch_targets, reduction="mean")
        np.testing.assert_allclose(float(ours.mean()), float(batch_mean), rtol=RTOL)
    if threshold is not None:  # the threshold changed the loss (targets on both sides of it)
        plain = binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
        assert np.abs(np.asarray(plain) - np.asarray(ours)).mean() > 0.05


@pytest.mark.parametrize("name", ["softmax", "bce"])
def test_bfloat16_logits_give_a_float32_loss(name):
    logits, soft, _ = _logits_and_targets(4)
    loss = make_loss(name)
    low = jnp.asarray(logits, jnp.bfloat16)
    ours = loss(low, jnp.asarray(soft))
    assert ours.dtype == jnp.float32
    # the same as float32 logits holding the bfloat16 values: the loss itself is float32
    np.testing.assert_allclose(np.asarray(ours), np.asarray(loss(low.astype(jnp.float32), jnp.asarray(soft))),
                               rtol=RTOL)
    assert jax.jit(loss)(low, jnp.asarray(soft)).dtype == jnp.float32


def test_make_loss_names_options_and_errors():
    logits, soft, _ = _logits_and_targets(5)
    x, t = jnp.asarray(logits), jnp.asarray(soft)
    assert make_loss("softmax") is soft_cross_entropy
    assert make_loss("softmax", target_threshold=None) is soft_cross_entropy  # None: unset
    np.testing.assert_array_equal(np.asarray(make_loss("bce", target_threshold=0.2)(x, t)),
                                  np.asarray(binary_cross_entropy(x, t, target_threshold=0.2)))
    with pytest.raises(ValueError, match=r"unknown loss 'ce'.*bce, softmax"):
        make_loss("ce")
    with pytest.raises(ValueError, match="target_threshold"):
        make_loss("softmax", target_threshold=0.2)
    with pytest.raises(ValueError, match="smoothing"):
        make_loss("bce", smoothing=0.1)
    with pytest.raises(ValueError, match="target_threshold"):
        make_loss("bce", target_threshold=1.5)
    with pytest.raises(ValueError, match="targets"):
        soft_cross_entropy(x, jnp.argmax(t, -1))  # integer labels: use smooth_one_hot first
    with pytest.raises(ValueError, match="targets"):
        binary_cross_entropy(x, t[:, :3])
