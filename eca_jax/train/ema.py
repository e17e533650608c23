"""An exponential moving average of the weights and of the BatchNorm statistics.

``ema <- decay * ema + (1 - decay) * new`` after each optimizer update, over the variables
``{"params", "batch_stats"}`` (timm's ``ModelEmaV2`` averages the parameters and the buffers, so
the BatchNorm running statistics too). The average starts as a copy of the initial variables.
With ``warmup`` the decay at update n (0-based count of updates before this one) is
``min(decay, (1 + n) / (10 + n))``, TensorFlow's ``ExponentialMovingAverage(num_updates=n)``
rule, so that an early average is not dominated by the random initialisation.

Closed form (tested): with a constant decay d and the variables v_1..v_n after updates 1..n,
``ema_n = d^n ema_0 + (1 - d) * sum_k d^(n-k) v_k``.

The arithmetic is ``optax.incremental_update`` (the Polyak average optax provides); this module
only adds when to apply it (not on the micro-steps of gradient accumulation) and the warmup.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def ema_decay_at(decay: float, num_updates: jax.Array, warmup: bool) -> jax.Array:
    """float32 (): the decay used for the update after ``num_updates`` earlier updates."""
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema: Any, new: Any, decay: jax.Array) -> Any:
    """``decay * ema + (1 - decay) * new`` leaf by leaf (trees of the same structure); ``decay``
    may be a traced scalar (1.0 leaves ``ema`` unchanged)."""
    return optax.incremental_update(new, ema, 1.0 - jnp.asarray(decay, jnp.float32))


def init_ema(variables: Any) -> Any:
    """A copy of ``variables`` (fresh buffers: the train state is donated to the step, and one
    buffer may not be donated twice)."""
    return jax.tree.map(jnp.copy, variables)
