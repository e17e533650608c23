"""Using eca_jax's linen layers and models from ``flax.nnx`` code.

``flax.nnx.bridge.ToNNX`` wraps a linen module as an nnx module; ``lazy_init`` creates its
variables from an example input. BatchNorm statistics live in the ``batch_stats`` collection
and are updated in place when the wrapped module is called with ``train=True``.

    from flax import nnx
    import eca_jax.nn as enn
    eca = enn.to_nnx(enn.ECA(k_size=3), jnp.ones((2, 8, 8, 64)), rngs=nnx.Rngs(0))
    y = eca(x)                         # an nnx.Module: call it like any nnx layer
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax import nnx


def to_nnx(module: nn.Module, *example_args: Any, rngs: nnx.Rngs | None = None, **example_kwargs: Any) -> nnx.Module:
    """Wraps a linen ``module`` as an initialised ``nnx.Module`` (variables made from the example call)."""
    wrapped = nnx.bridge.ToNNX(module, rngs=rngs if rngs is not None else nnx.Rngs(0))
    return nnx.bridge.lazy_init(wrapped, *example_args, **example_kwargs)
