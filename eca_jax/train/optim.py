"""Optimizers and learning-rate schedules from the config (optax).

The release trains with ``torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4)``. PyTorch's
weight decay is *coupled*: ``g <- g + wd * p`` before the momentum buffer ``b <- 0.9 b + g``
and the update ``p <- p - lr * b``. The optax chain below is exactly that:
``clip -> add_decayed_weights -> trace(momentum) -> scale_by_learning_rate``.
(optax's ``trace`` starts from a zero buffer, so its first step gives ``b = g`` as PyTorch does.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from eca_jax.train.config import to_steps


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the optimizer update count.

    step:     lr * lr_decay_factor ** floor(epoch / lr_decay_epochs) (release: 0.1 every 30
              epochs for ResNets; 0.98 every epoch for MobileNetV2), epoch = count // steps/epoch.
    cosine:   cosine decay from lr to min_learning_rate over the steps after warmup.
    constant: lr.
    All of them start with a linear warmup from 0 when warmup_steps/epochs is set.
    """
    lr = float(config.learning_rate)
    warmup = to_steps(config, "warmup", steps_per_epoch, default=0)
    if config.schedule == "step":
        every = max(1, int(round(config.lr_decay_epochs * steps_per_epoch)))
        factor = float(config.lr_decay_factor)

        def main(count):
            return lr * factor ** jnp.floor_divide(count + warmup, every).astype(jnp.float32)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(
            lr, decay_steps=max(1, total_steps - warmup),
            alpha=float(config.min_learning_rate) / lr if lr else 0.0)
    elif config.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"Unknown schedule {config.schedule!r}.")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params: Any, norm_and_bias: bool) -> Any:
    """True for parameters that get weight decay: all of them, or only ndim > 1 kernels."""
    return jax.tree.map(lambda p: bool(norm_and_bias) or p.ndim > 1, params)


def _decay_mask(config: ml_collections.ConfigDict):
    """optax's mask argument: None (every parameter) or kernels only (ndim > 1)."""
    if config.weight_decay_norm_and_bias:
        return None
    return lambda params: decay_mask(params, False)


def _sgd(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> list:
    """The release's SGD: coupled weight decay, then momentum (see the module docstring)."""
    parts = []
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(float(config.weight_decay), mask=_decay_mask(config)))
    parts.append(optax.trace(decay=float(config.momentum), nesterov=bool(config.nesterov)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return parts


def _lamb(config: ml_collections.ConfigDict, schedule: optax.Schedule, eps: float) -> list:
    """LAMB as timm's ``Lamb`` (the "ResNet strikes back" optimizer): Adam moments with bias
    correction, decoupled weight decay, then the layer-wise trust ratio ||p|| / ||u|| on the
    parameters that get weight decay (timm adapts only those; with the usual exclusions BatchNorm
    and biases take plain Adam steps). ``optax.lamb`` applies the trust ratio to every parameter,
    so the chain is built from optax's own pieces with the ratio masked. timm's Lamb also clips
    the global gradient norm to 1.0 inside the optimizer: set ``grad_clip_norm=1.0`` for that."""
    mask = _decay_mask(config)
    return [optax.scale_by_adam(b1=float(config.adam_b1), b2=float(config.adam_b2), eps=eps),
            optax.add_decayed_weights(float(config.weight_decay), mask=mask),
            optax.scale_by_trust_ratio() if mask is None else optax.masked(optax.scale_by_trust_ratio(), mask),
            optax.scale_by_learning_rate(schedule)]


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The config's optimizer (``optimizer`` = sgd | adamw | lamb) with its schedule, optional
    clipping of the global gradient norm (first) and gradient accumulation.

    sgd: the release's (coupled weight decay, momentum, optional Nesterov). adamw: ``optax.adamw``
    (PyTorch's AdamW: decoupled decay ``lr * wd * p``). lamb: see :func:`_lamb`. Weight decay
    applies to every parameter, or to kernels only with ``weight_decay_norm_and_bias=False``
    (the usual exclusion of BatchNorm scales/offsets and biases). Returns (tx, schedule). With
    ``grad_accum_steps = n > 1`` the transformation is wrapped in ``optax.MultiSteps``: it must be
    called n times (once per micro-batch) per update, and the schedule counts updates.
    """
    schedule = make_schedule(config, steps_per_epoch, total_steps)
    parts = []
    if config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    name = config.get("optimizer", "sgd")
    if name == "sgd":
        parts.extend(_sgd(config, schedule))
    elif name == "adamw":
        eps = 1e-8 if config.adam_eps is None else float(config.adam_eps)
        parts.append(optax.adamw(schedule, b1=float(config.adam_b1), b2=float(config.adam_b2),
                                 eps=eps, weight_decay=float(config.weight_decay),
                                 mask=_decay_mask(config)))
    elif name == "lamb":
        parts.extend(_lamb(config, schedule, 1e-6 if config.adam_eps is None else float(config.adam_eps)))
    else:
        raise ValueError(f"config.optimizer={name!r} is not one of ('sgd', 'adamw', 'lamb').")
    tx = optax.chain(*parts)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.grad_accum_steps))
    return tx, schedule
