"""Per-example training losses on soft targets (mixup/CutMix, label smoothing), float32.

- :func:`soft_cross_entropy`: softmax cross-entropy against a distribution per example
  (``torch.nn.functional.cross_entropy(logits, probs)``);
- :func:`binary_cross_entropy`: timm's ``BinaryCrossEntropy`` (the "ResNet strikes back" loss):
  a sigmoid per class against the (already smoothed / mixed) targets, optionally made 0/1 by
  ``targets > target_threshold``; the mean over classes per example, so that the batch mean equals
  ``binary_cross_entropy_with_logits(..., reduction="mean")``;
- :func:`make_loss`: the loss named by the config (``"softmax"`` | ``"bce"``).

Both return (B,) float32 whatever the logits' dtype (bfloat16 logits are upcast first). The
formulas are optax's (``softmax_cross_entropy``, ``sigmoid_binary_cross_entropy``).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _float32_pair(name: str, logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(f"{name}: logits and targets must both be (B, K) (targets soft, e.g. from "
                         f"eca_jax.train.mixing.smooth_one_hot), got {logits.shape} and {targets.shape}")
    return logits.astype(jnp.float32), targets.astype(jnp.float32)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits (B, K) any float dtype, targets (B, K) rows summing to 1 -> float32 (B,):
    ``-sum_k t_k log_softmax(logits)_k``."""
    logits, targets = _float32_pair("soft_cross_entropy", logits, targets)
    return optax.softmax_cross_entropy(logits, targets)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array, *,
                         target_threshold: Optional[float] = None) -> jax.Array:
    """logits (B, K) any float dtype, targets (B, K) in [0, 1] -> float32 (B,): the mean over the
    K classes of ``-t log sigmoid(z) - (1 - t) log sigmoid(-z)``. With ``target_threshold`` the
    targets are first replaced by ``targets > target_threshold`` (0/1), as timm's."""
    logits, targets = _float32_pair("binary_cross_entropy", logits, targets)
    if target_threshold is not None:
        _check_threshold(target_threshold)
        targets = (targets > target_threshold).astype(jnp.float32)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)


def _check_threshold(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"binary_cross_entropy: target_threshold must be None or in [0, 1), got {value!r}")


LOSSES: dict[str, LossFn] = {"softmax": soft_cross_entropy, "bce": binary_cross_entropy}
_OPTIONS = {"softmax": (), "bce": ("target_threshold",)}


def make_loss(name: str, **options: Any) -> LossFn:
    """The per-example loss ``fn(logits, targets) -> (B,) float32`` called ``name``.

    "softmax": :func:`soft_cross_entropy` (no options); "bce": :func:`binary_cross_entropy`
    (option ``target_threshold``). An option set to None counts as unset, so a caller may pass
    ``target_threshold=config.bce_target_threshold`` whatever the loss; any other option raises.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(f"loss {name!r} takes no option(s) {', '.join(unknown)} "
                         f"(valid: {', '.join(_OPTIONS[name]) or 'none'})")
    if "target_threshold" in given:
        _check_threshold(given["target_threshold"])
    return functools.partial(LOSSES[name], **given) if given else LOSSES[name]
