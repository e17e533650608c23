"""Optimizer and learning-rate schedules from the config (optax).

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


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum, coupled weight decay, optional clipping and gradient accumulation.

    Returns (tx, schedule). With ``grad_accum_steps = n > 1`` the transformation is wrapped in
    ``optax.MultiSteps``: it must be called n times (once per micro-batch) per update, and the
    schedule counts updates, not micro-batches.
    """
    schedule = make_schedule(config, steps_per_epoch, total_steps)
    parts = []
    if config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if config.weight_decay:
        mask = None if config.weight_decay_norm_and_bias else (
            lambda params: decay_mask(params, False))
        parts.append(optax.add_decayed_weights(float(config.weight_decay), mask=mask))
    parts.append(optax.trace(decay=float(config.momentum), nesterov=bool(config.nesterov)))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.grad_accum_steps))
    return tx, schedule
