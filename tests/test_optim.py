"""Tests of the optimisation side of eca_jax.train: the release's SGD against torch.optim.SGD,
the learning-rate schedules against their closed forms, label smoothing, gradient clipping, the
weight-decay mask, gradient accumulation through the train step, and bfloat16 training.

Every bound is set from the error measured on this machine (the value is written next to it).
Every test that checks a variant (coupled decay, Nesterov, clipping, ...) also checks that the
plausible wrong variant lands at least 100x the bound away, so each test can fail.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen as nn
from flax import traverse_util

import eca_jax.nn as enn
from eca_jax.models.layers import batch_norm, classifier, conv2d
from eca_jax.checkpoints.training import load_variables, resolve_step_dir
from eca_jax.train.checkpoint import Checkpointer
from eca_jax.train.config import make_config, to_steps, validate_config
from eca_jax.train.loop import build_model, train_and_evaluate
from eca_jax.train.optim import make_optimizer, make_schedule
from eca_jax.train.state import TrainState, init_state, make_init_fn
from eca_jax.evaluation import cross_entropy
from eca_jax.train.step import make_train_step
from train_helpers import NUM_CLASSES, SyntheticData, _examples, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_TRAIN = 1_281_167  # ImageNet-1k train images: sets steps/epoch of the release configs

# The SGD comparisons: a large weight decay so that coupled, decoupled and no decay separate
# by far more than float32 noise within a few steps.
LR, MOMENTUM, WD, SGD_STEPS = 0.1, 0.9, 0.2, 5


# ----------------------------------------------------------------------------- helpers

def rel_err(a, b) -> float:
    """max over leaves of ||a - b|| / ||b|| (trees of the same structure), in float64."""
    errs = jax.tree.map(lambda x, y: float(np.linalg.norm(np.asarray(x, np.float64) - y) /
                                           max(np.linalg.norm(np.asarray(y, np.float64)), 1e-12)),
                        a, b)
    return max(jax.tree.leaves(errs))


def tree_rel_change(a, b) -> float:
    """||a - b|| / ||b|| over all leaves together (float64)."""
    diff = sum(float(np.sum((np.asarray(x, np.float64) - y) ** 2))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))
    return math.sqrt(diff / norm)


def load_config(name: str):
    """``get_config()`` of experiments/configs/<name>.py."""
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def schedule_values(schedule, counts) -> np.ndarray:
    """The schedule at integer update counts, as float64."""
    return np.asarray(schedule(jnp.asarray(counts, jnp.int32)), np.float64)


def assert_rel_close(actual, expected, bound: float) -> float:
    """max |actual / expected - 1| <= bound; returns it."""
    err = float(np.max(np.abs(np.asarray(actual) / np.asarray(expected, np.float64) - 1.0)))
    assert err <= bound, (err, actual, expected)
    return err


# ----------------------------------------------------------------------------- twin models

class _TinyFlax(nn.Module):
    """conv3x3 - BN - ReLU - ECA(k=3) - mean - fc, built from the library's layers: kernels
    of rank 4, 3 and 2, BatchNorm scale/bias and a dense bias (every kind of parameter)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train, name="bn1")(conv2d(6, 3, name="conv1")(x)))
        x = enn.ECA(k_size=3, name="eca")(x)
        return classifier(5, 6, name="fc")(x.mean(axis=(1, 2)))


class _TinyTorch(torch.nn.Module):
    """The PyTorch twin of :class:`_TinyFlax` (NCHW)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.eca = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        gate = torch.sigmoid(self.eca(x.mean(dim=(2, 3)).unsqueeze(1))).squeeze(1)
        return self.fc((x * gate[:, :, None, None]).mean(dim=(2, 3)))


def _torch_model() -> _TinyTorch:
    """The same freshly initialised twin every call (BN affine and ECA weights moved off their
    identity-like init so that every parameter matters)."""
    torch.manual_seed(0)
    model = _TinyTorch()
    with torch.no_grad():
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.normal_(0, 0.1)
        model.eca.weight.normal_(0, 0.5)
    return model


def _torch_to_flax(m: _TinyTorch) -> dict:
    """The twin's parameters in the Flax layout (HWIO conv kernel, (in, out) dense kernel)."""
    t = lambda p: p.detach().numpy().copy()  # noqa: E731
    return {"conv1": {"kernel": t(m.conv1.weight).transpose(2, 3, 1, 0)},
            "bn1": {"scale": t(m.bn1.weight), "bias": t(m.bn1.bias)},
            "eca": {"conv": {"kernel": t(m.eca.weight).reshape(3, 1, 1)}},
            "fc": {"kernel": t(m.fc.weight).T, "bias": t(m.fc.bias)}}


def _batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """n fixed (images NHWC (8, 8, 8, 3) float32, labels (8,) int32) batches."""
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
             rng.integers(0, 5, size=8).astype(np.int32)) for _ in range(n)]


def _sgd(**overrides) -> optax.GradientTransformation:
    """The project's optimizer for the SGD comparisons (constant lr)."""
    config = make_config(**{**dict(total_steps=SGD_STEPS, learning_rate=LR, momentum=MOMENTUM,
                                   weight_decay=WD, schedule="constant"), **overrides})
    return make_optimizer(config, steps_per_epoch=10, total_steps=SGD_STEPS)[0]


def _decoupled_sgd() -> optax.GradientTransformation:
    """The wrong variant: decay applied after momentum, p <- p - lr (b + wd p) (SGDW-style)."""
    return optax.chain(optax.trace(MOMENTUM), optax.add_decayed_weights(WD),
                       optax.scale_by_learning_rate(LR))


def _run_torch(steps: int = SGD_STEPS, label_smoothing: float = 0.0, clip: float | None = None,
               **sgd) -> dict:
    """torch.optim.SGD(lr, momentum, **sgd) on the twin: params (Flax layout), losses, grad norms
    (before clipping) and the BN running mean."""
    model = _torch_model()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, **sgd)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    losses, norms = [], []
    for x, y in _batches(steps):
        opt.zero_grad()
        loss = loss_fn(model(torch.from_numpy(x.transpose(0, 3, 1, 2))), torch.from_numpy(y).long())
        loss.backward()
        max_norm = float("inf") if clip is None else clip
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        opt.step()
        losses.append(loss.item())
    return {"params": _torch_to_flax(model), "losses": np.asarray(losses), "norms": norms,
            "bn_mean": model.bn1.running_mean.numpy().copy()}


def _clip_after_decay_sgd(max_norm: float) -> optax.GradientTransformation:
    """The wrong variant: clipping the gradient after the decay was added to it."""
    return optax.chain(optax.add_decayed_weights(WD), optax.clip_by_global_norm(max_norm),
                       optax.trace(MOMENTUM), optax.scale_by_learning_rate(LR))


@functools.lru_cache(maxsize=None)
def _ours(steps: int = SGD_STEPS, label_smoothing: float = 0.0, **overrides) -> dict:
    """:func:`_run_ours` with ``_sgd(**overrides)``, cached: tests that compare with the same
    optimizer share its compiled step and results (do not modify the returned dict)."""
    return _run_ours(_sgd(**overrides), steps, label_smoothing)


def _run_ours(tx: optax.GradientTransformation, steps: int = SGD_STEPS,
              label_smoothing: float = 0.0) -> dict:
    """The project's jitted train step with ``tx`` on _TinyFlax, from the twin's initial
    parameters and on the same batches: params, losses, BN running mean."""
    model = _TinyFlax()
    params = jax.tree.map(jnp.asarray, _torch_to_flax(_torch_model()))
    stats = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)["batch_stats"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                       opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(model.apply, tx, label_smoothing, 1))
    losses = []
    for x, y in _batches(steps):
        state, metrics = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(y)})
        losses.append(float(metrics["loss"]))
    return {"params": jax.device_get(state.params), "losses": np.asarray(losses),
            "bn_mean": np.asarray(state.batch_stats["bn1"]["mean"])}


# ----------------------------------------------------------------------------- SGD vs torch

SGD_TOL = 1e-5     # measured 3.6e-7 (AMD EPYC, float32): ours vs torch params after 5 steps
LOSS_TOL = 1e-5    # measured 3.6e-7: the per-step losses (of order 1.6)


def test_sgd_coupled_weight_decay_matches_torch_sgd():
    """Our release recipe == torch.optim.SGD(lr, momentum=0.9, weight_decay=wd): decay coupled
    (added to the gradient before momentum) on every parameter, BN and biases included.

    The decay is large (0.2) so that after 5 steps no decay, decoupled decay and kernel-only
    decay all land >= 100x the bound from torch (asserted). BN running variances are not
    compared: PyTorch keeps the unbiased batch variance, Flax the biased one."""
    ref = _run_torch(weight_decay=WD)
    ours = _ours()
    err = rel_err(ours["params"], ref["params"])
    assert err < SGD_TOL, err
    assert np.max(np.abs(ours["losses"] - ref["losses"])) < LOSS_TOL
    # BN running mean: measured 7.2e-7 relative
    np.testing.assert_allclose(ours["bn_mean"], ref["bn_mean"], rtol=1e-5, atol=1e-7)
    wrong = {"no decay": _ours(weight_decay=0.0),         # measured 3.3e-1 from torch
             "decoupled decay": _run_ours(_decoupled_sgd()),  # measured 2.1e-1
             "kernels-only decay": _ours(weight_decay_norm_and_bias=False)}  # measured 3.3e-1
    for name, run in wrong.items():
        far = rel_err(run["params"], ref["params"])
        assert far > 100 * SGD_TOL, (name, far)


def test_sgd_nesterov_matches_torch_sgd():
    """nesterov=True == torch.optim.SGD(nesterov=True) with coupled decay; plain momentum lands
    >= 100x the bound from it (asserted)."""
    ref = _run_torch(weight_decay=WD, nesterov=True)
    ours = _ours(nesterov=True)
    err = rel_err(ours["params"], ref["params"])
    assert err < SGD_TOL, err  # measured 2.6e-7
    assert np.max(np.abs(ours["losses"] - ref["losses"])) < LOSS_TOL
    far = rel_err(_ours()["params"], ref["params"])  # plain momentum: measured 1.4e-1
    assert far > 100 * SGD_TOL, far


# ----------------------------------------------------------------------------- label smoothing

LS_TOL = 1e-5  # measured 1.4e-6 (AMD EPYC, float32; per-example losses up to 12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothing_matches_torch_cross_entropy(smoothing):
    """cross_entropy(logits, labels, s) == torch.nn.CrossEntropyLoss(label_smoothing=s) per
    example, on random logits; ignoring s would be >= 100x the bound off (asserted)."""
    rng = np.random.default_rng(1)
    logits = (3.0 * rng.normal(size=(64, 10))).astype(np.float32)
    labels = rng.integers(0, 10, size=64).astype(np.int32)
    ours = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing))
    ref = torch.nn.CrossEntropyLoss(label_smoothing=smoothing, reduction="none")(
        torch.from_numpy(logits), torch.from_numpy(labels).long()).numpy()
    err = float(np.max(np.abs(ours - ref)))
    assert err < LS_TOL, err
    if smoothing:
        plain = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.0))
        assert float(np.max(np.abs(plain - ref))) > 100 * LS_TOL  # measured 0.66 at s=0.1


def test_train_step_uses_label_smoothing():
    """The train step with label_smoothing=0.3 trains on torch's smoothed loss: losses and
    parameters after 5 steps match torch; the unsmoothed step is far (asserted)."""
    ref = _run_torch(label_smoothing=0.3, weight_decay=WD)
    ours = _ours(label_smoothing=0.3)
    assert np.max(np.abs(ours["losses"] - ref["losses"])) < LOSS_TOL
    err = rel_err(ours["params"], ref["params"])
    assert err < SGD_TOL, err  # measured 2.4e-7 (losses: 3.6e-7)
    plain = _ours()
    assert np.max(np.abs(plain["losses"] - ref["losses"])) > 100 * LOSS_TOL  # measured 1.2e-2


# ----------------------------------------------------------------------------- clipping

def test_grad_clipping_matches_torch_clip_grad_norm():
    """grad_clip_norm == torch.nn.utils.clip_grad_norm_ before SGD (clipping precedes the
    coupled decay). Active (max_norm below every step's gradient norm): matches torch, and
    no clipping or clipping after the decay are >= 100x the bound off. Inactive (max_norm above
    every norm): matches unclipped torch."""
    active, inactive = 0.05, 100.0
    ref = _run_torch(weight_decay=WD, clip=active)
    assert min(ref["norms"]) > 2 * active  # clipping really acts at every step
    err = rel_err(_ours(grad_clip_norm=active)["params"], ref["params"])
    assert err < SGD_TOL, err  # measured 3.4e-7 (gradient norms 0.13-0.47)
    for name, run in {"no clipping": _ours(),               # measured 5.1e-1
                      "clip after decay": _run_ours(_clip_after_decay_sgd(active))  # 3.3e-1
                      }.items():
        far = rel_err(run["params"], ref["params"])
        assert far > 100 * SGD_TOL, (name, far)
    ref = _run_torch(weight_decay=WD, clip=inactive)
    assert max(ref["norms"]) < inactive / 2  # clipping never acts
    err = rel_err(_ours(grad_clip_norm=inactive)["params"], ref["params"])
    assert err < SGD_TOL, err  # measured 3.6e-7


# ----------------------------------------------------------------------------- weight-decay mask

def test_weight_decay_mask_kernels_only():
    """One update with zero gradient is exactly the decay, -lr * wd * p, on the decayed
    parameters and exactly 0 elsewhere: every parameter with weight_decay_norm_and_bias=True;
    only the kernels (conv, ECA conv, fc) with False; BN scale/bias and the fc bias never."""
    params = jax.tree.map(jnp.asarray, _torch_to_flax(_torch_model()))
    zeros = jax.tree.map(jnp.zeros_like, params)
    kernels = {"conv1/kernel", "eca/conv/kernel", "fc/kernel"}
    every = set(traverse_util.flatten_dict(params, sep="/"))
    for norm_and_bias, expected in ((True, every), (False, kernels)):
        tx = _sgd(weight_decay_norm_and_bias=norm_and_bias)
        updates, _ = tx.update(zeros, tx.init(params), params)
        flat_p = traverse_util.flatten_dict(params, sep="/")
        decayed = set()
        for path, u in traverse_util.flatten_dict(updates, sep="/").items():
            u, p = np.asarray(u), np.asarray(flat_p[path])
            if np.array_equal(u, np.zeros_like(u)):
                continue
            np.testing.assert_allclose(u, -LR * WD * p, rtol=1e-6)  # measured 2.6e-9
            decayed.add(path)
        assert decayed == expected, (norm_and_bias, sorted(decayed))


# ----------------------------------------------------------------------------- schedules

SCHED_TOL = 1e-6   # measured <= 2.1e-7 (AMD EPYC; float32 schedule vs float64 closed form)


def test_step_schedule_at_its_boundaries():
    """lr * factor ** (count // (lr_decay_epochs * steps/epoch)): the update just before a
    boundary keeps the old lr, the update at the boundary and after it get the new one."""
    steps_per_epoch, every = 10, 30
    config = make_config(total_steps=100, learning_rate=0.1, schedule="step",
                         lr_decay_factor=0.1, lr_decay_epochs=3.0)
    schedule = make_schedule(config, steps_per_epoch, 100)
    counts = [0, 1] + [c for b in (30, 60, 90) for c in (b - 1, b, b + 1)] + [99]
    expected = [0.1 * 0.1 ** (c // every) for c in counts]
    assert_rel_close(schedule_values(schedule, counts), expected, SCHED_TOL)


def test_step_schedule_with_warmup_keeps_absolute_boundaries():
    """With warmup: linear from 0 over the first 5 updates, then the step schedule at the same
    absolute boundaries (30, 60) as without warmup."""
    config = make_config(total_steps=100, learning_rate=0.1, schedule="step",
                         lr_decay_factor=0.1, lr_decay_epochs=3.0, warmup_steps=5)
    schedule = make_schedule(config, 10, 100)
    counts = [0, 1, 4, 5, 6, 29, 30, 31, 59, 60]
    expected = [0.1 * c / 5 if c < 5 else 0.1 * 0.1 ** (c // 30) for c in counts]
    values = schedule_values(schedule, counts)
    assert values[0] == 0.0
    assert_rel_close(values[1:], expected[1:], SCHED_TOL)


def test_mobilenet_v2_schedule_is_0_98_per_epoch():
    """The MobileNetV2 release config: 0.045 * 0.98 ** epoch with epoch = count // steps/epoch
    (ImageNet at batch 96: 13345 steps/epoch), at epoch boundaries up to the last epoch."""
    config = load_config("imagenet_eca_mobilenet_v2")
    steps_per_epoch = IMAGENET_TRAIN // config.batch_size
    total = to_steps(config, "total", steps_per_epoch)
    schedule = make_schedule(config, steps_per_epoch, total)
    counts = [0, 1, total - 1] + [e * steps_per_epoch + d for e in (1, 2, 10, 200, 399) for d in (-1, 0, 1)]
    expected = [0.045 * 0.98 ** (c // steps_per_epoch) for c in counts]
    # measured 7.8e-6 at epoch 399: float32(0.98) is 1.9e-8 off, compounded 399 times
    assert_rel_close(schedule_values(schedule, counts), expected, 2e-5)


def test_warmup_cosine_schedule_of_ecaresnet50d():
    """The ecaresnet50d config: linear warmup from 0 over 5 epochs, then cosine from lr to 0
    over the remaining updates: at 0, mid-warmup, end of warmup, mid-cosine, the end and after.
    Errors are measured relative to the peak lr (float32 near 0 has no relative accuracy:
    optax's warmup at count 1 and the cosine's last values are differences of O(lr) terms)."""
    config = load_config("imagenet_ecaresnet50d")
    steps_per_epoch = IMAGENET_TRAIN // config.batch_size
    total, warmup = to_steps(config, "total", steps_per_epoch), to_steps(config, "warmup", steps_per_epoch)
    assert (steps_per_epoch, warmup, total) == (1251, 6255, 250200)
    lr = config.learning_rate
    schedule = make_schedule(config, steps_per_epoch, total)

    def closed(c):
        if c < warmup:
            return lr * c / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min(c - warmup, total - warmup) /
                                        (total - warmup)))

    mid = warmup + (total - warmup) // 2
    counts = [0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, mid, total - 2, total - 1,
              total, total + 10]
    values = schedule_values(schedule, counts)
    err = float(np.max(np.abs(values - [closed(c) for c in counts]))) / lr
    assert err < SCHED_TOL, err  # measured 6.6e-8
    assert values[0] == 0.0 and values[counts.index(warmup)] == pytest.approx(lr, rel=1e-6)


def test_cosine_schedule_floor_and_constant_schedule():
    """cosine with min_learning_rate: lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2, held at
    lr_min after T; constant: lr at every update, after a linear warmup when one is set."""
    config = make_config(total_steps=100, learning_rate=0.2, schedule="cosine",
                         min_learning_rate=0.02)
    schedule = make_schedule(config, 10, 100)
    counts = [0, 1, 25, 50, 99, 100, 150]
    expected = [0.02 + 0.18 * 0.5 * (1 + math.cos(math.pi * min(c, 100) / 100)) for c in counts]
    assert_rel_close(schedule_values(schedule, counts), expected, SCHED_TOL)
    constant = make_schedule(make_config(total_steps=100, learning_rate=0.05,
                                         schedule="constant"), 10, 100)
    assert_rel_close(schedule_values(constant, [0, 1, 50, 99, 1000]), [0.05] * 5, SCHED_TOL)
    warm = make_schedule(make_config(total_steps=100, learning_rate=0.05, schedule="constant",
                                     warmup_steps=4), 10, 100)
    assert_rel_close(schedule_values(warm, [1, 2, 3, 4, 5, 99]),
                     [0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05], SCHED_TOL)


@pytest.mark.parametrize("accum", [1, 3])
def test_update_k_uses_the_schedule_at_k(accum):
    """The lr the optimizer applies at its k-th update (k from 0) is schedule(k), also under
    grad_accum_steps=3 (the schedule counts updates, not micro-steps). Gradient 1, no decay,
    no momentum: each emitted update is exactly -schedule(k); micro-steps emit 0."""
    config = make_config(total_steps=12, learning_rate=0.1, schedule="step", momentum=0.0,
                         weight_decay=0.0, lr_decay_factor=0.5, lr_decay_epochs=1.0,
                         warmup_steps=2, grad_accum_steps=accum)
    tx, schedule = make_optimizer(config, steps_per_epoch=3, total_steps=12)
    params = {"w": jnp.zeros(())}
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    applied = []
    for _ in range(12):
        for micro in range(accum):
            updates, opt_state = update({"w": jnp.ones(())}, opt_state, params)
            if micro < accum - 1:
                assert float(updates["w"]) == 0.0
        applied.append(-float(updates["w"]))
    expected = schedule_values(schedule, np.arange(12))
    np.testing.assert_allclose(applied, expected, rtol=1e-6)  # measured exact
    # Warmup over updates 0-1, then x0.5 at the absolute epoch boundaries 3 and 6.
    assert applied[:7] == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.05, 0.05, 0.025])


# ----------------------------------------------------------------------------- accumulation

# Accumulated vs full-batch parameters after 3 updates:
ACCUM_TOL = 1e-5  # measured 5.3e-7 (AMD EPYC, float32)


def _train_tiny(updates: int, batch_size: int, grad_accum_steps: int, bn_groups: int):
    """_TinyFlax trained as the loop trains: make_optimizer / make_init_fn / make_train_step from
    a validated config, and grad_accum_steps calls of the jitted step per update, each on the
    next micro-batch of batch_size / grad_accum_steps consecutive examples of one fixed stream.
    Returns (final state, initial params)."""
    config = make_config(total_steps=updates, batch_size=batch_size,
                         grad_accum_steps=grad_accum_steps, bn_groups=bn_groups,
                         schedule="cosine", warmup_steps=1, learning_rate=LR, weight_decay=WD,
                         nesterov=True)
    validate_config(config)
    model = _TinyFlax()
    tx, _ = make_optimizer(config, steps_per_epoch=updates, total_steps=updates)
    state = make_init_fn(model, tx, (1, 8, 8, 3))(jax.random.PRNGKey(0))  # eager: no compile
    initial = jax.device_get(state.params)
    step = jax.jit(make_train_step(model.apply, tx, config.label_smoothing, config.bn_groups))
    rng = np.random.default_rng(2)
    images = rng.normal(size=(updates * batch_size, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=updates * batch_size).astype(np.int32)
    micro = batch_size // grad_accum_steps
    for i in range(updates * grad_accum_steps):
        part = slice(i * micro, (i + 1) * micro)
        state, _ = step(state, {"image": jnp.asarray(images[part]),
                                "label": jnp.asarray(labels[part])})
    return state, initial


def test_grad_accumulation_through_the_train_step():
    """grad_accum_steps=2 on micro-batches of 8 == one step on the batch of 16 with
    bn_groups=2 (each half normalised with its own BatchNorm statistics, as each micro-batch
    is): the parameters after 3 updates agree (warmup + cosine, Nesterov, weight decay).
    BatchNorm running averages are not compared: accumulation updates them once per
    micro-batch, bn_groups once per update with the mean of the groups' statistics.

    Step semantics: ``state.step`` counts optimizer updates (3 after 6 micro-steps), as the
    optimizer's own counter does. Taking every micro-batch as an update of its own (no
    accumulation) lands >= 100x the bound away (asserted)."""
    accum, initial = _train_tiny(3, 16, grad_accum_steps=2, bn_groups=1)
    full, _ = _train_tiny(3, 16, grad_accum_steps=1, bn_groups=2)
    err = rel_err(jax.device_get(accum.params), jax.device_get(full.params))
    assert err < ACCUM_TOL, err
    moved = tree_rel_change(jax.device_get(full.params), initial)
    assert moved > 1e-2, moved  # measured 9.1e-2: it trained
    separate, _ = _train_tiny(6, 8, grad_accum_steps=1, bn_groups=1)
    far = rel_err(jax.device_get(separate.params), jax.device_get(full.params))
    assert far > 100 * ACCUM_TOL, far  # measured 2.5
    assert int(accum.step) == 3 and int(full.step) == 3
    assert int(accum.opt_state.gradient_step) == 3 and int(accum.opt_state.mini_step) == 0


@pytest.mark.parametrize("accum", [1, 3])
def test_state_step_counts_updates_and_each_micro_batch_has_its_key(accum):
    """``state.step`` advances once per optimizer update (with grad_accum_steps=3: on the third
    micro-step of each), and micro-batch i of update k draws the dropout key
    ``fold_in(fold_in(rng, k), i)``: a model whose logits are uniform noise from that key gives
    exactly those losses, all different (identical batches, so only the key differs)."""
    num_classes, updates = 4, 2
    config = make_config(total_steps=updates, batch_size=6, grad_accum_steps=accum,
                         weight_decay=0.0)
    tx, _ = make_optimizer(config, steps_per_epoch=updates, total_steps=updates)

    def apply_fn(variables, x, train, mutable, rngs):
        noise = jax.random.uniform(rngs["dropout"], (x.shape[0], num_classes))
        return noise + 0.0 * variables["params"]["w"], {}

    params = {"w": jnp.zeros((num_classes,))}
    rng = jax.random.PRNGKey(7)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                       opt_state=tx.init(params), rng=rng)
    step = jax.jit(make_train_step(apply_fn, tx, 0.0, 1))
    labels = jnp.zeros((6 // accum,), jnp.int32)
    batch = {"image": jnp.zeros((6 // accum, 1, 1, 3)), "label": labels}
    losses, steps, expected = [], [], []
    for k in range(updates):
        for i in range(accum):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
            steps.append(int(state.step))
            key = jax.random.fold_in(jax.random.fold_in(rng, k), i)
            noise = jax.random.uniform(key, (labels.shape[0], num_classes))
            expected.append(float(cross_entropy(noise, labels).mean()))
    assert steps == [k + (i == accum - 1) for k in range(updates) for i in range(accum)]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert len(set(losses)) == len(losses), losses


@pytest.mark.slow
def test_loop_grad_accumulation_equals_the_full_batch(tmp_path):
    """The loop itself (train_and_evaluate on 8 devices, synthetic data): grad_accum_steps=2
    and batch 16 ends with the same parameters as batch 16 with bn_groups=2 (the loop feeds
    micro-batches of batch_size / grad_accum_steps and calls the step that often per update);
    both checkpoints are numbered by updates, and the saved ``state.step`` is that number too."""
    from eca_jax.train import loop
    finals = {}
    for name, extra in {"accum": dict(grad_accum_steps=2), "groups": dict(bn_groups=2)}.items():
        config = tiny_config(batch_size=16, total_steps=3, eval_every_steps=3,
                             checkpoint_every_steps=3, schedule="cosine", warmup_steps=1,
                             **extra)
        result = train_and_evaluate(config, str(tmp_path / name), data_module=SyntheticData())
        step_dir = resolve_step_dir(tmp_path / name)
        assert result["step"] == 3 and step_dir.name == "3"
        finals[name] = load_variables(step_dir)["params"]
        plan = loop.make_plan(config, str(tmp_path / name), SyntheticData())
        saved = Checkpointer(str(tmp_path / name), loop.signature(config, NUM_CLASSES))
        try:
            state, _ = saved.restore(3, loop._abstract_with_shardings(plan.abstract, plan.shardings))
        finally:
            saved.close_quietly()
        assert int(state.step) == 3, int(state.step)
    err = rel_err(finals["accum"], finals["groups"])
    # measured 7.4e-7 (8 devices; 1.6e-6 on 1 device with XLA's optimisations on); taking each
    # micro-batch as an update of its own (batch 8, 6 steps) measured 2.7
    assert err < 2e-5, err


# ----------------------------------------------------------------------------- bfloat16

@pytest.mark.slow
def test_bfloat16_training_lowers_the_loss_with_float32_params():
    """dtype=bfloat16: the tiny ECA-ResNet computes in bf16 (its logits differ from float32's
    by more than float32 noise), 8 steps on one batch lower the loss, and params, optimizer
    state and BatchNorm statistics stay float32 (all floating leaves)."""
    config = tiny_config(dtype="bfloat16", schedule="constant", learning_rate=0.1)
    model = build_model(config, NUM_CLASSES)
    tx, _ = make_optimizer(config, steps_per_epoch=8, total_steps=8)
    state = init_state(make_init_fn(model, tx, (1, 8, 8, 3)), jax.random.PRNGKey(0), None)
    images, labels = _examples(np.arange(32), 8, 1)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    f32 = build_model(tiny_config(), NUM_CLASSES)
    gap = float(jnp.max(jnp.abs(model.apply(state.variables, batch["image"]) -
                                f32.apply(state.variables, batch["image"]))))
    assert 1e-4 < gap < 0.1, gap  # measured 2.3e-3 (logits up to 0.61): bf16, same network
    step = jax.jit(make_train_step(model.apply, tx, 0.0, 1))
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # every step lowers it
    assert losses[-1] < 0.9 * losses[0], losses  # measured 1.44 -> 1.17 (x0.82)
    for tree in (state.params, state.batch_stats, state.opt_state):
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(tree)
                  if jnp.issubdtype(leaf.dtype, jnp.floating)}
        assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
