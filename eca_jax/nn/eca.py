"""Efficient Channel Attention (ECA) and its circular variant (CECA).

Layout: NHWC (any number of spatial axes: ``(N, *spatial, C)``). The gate is

    y = mean_{spatial}(x)                      # (N, C)
    z = conv1d_k(y)                            # one shared k-tap kernel across the channel axis
    out = x * sigmoid(z)[:, None, ..., None, :]

with the release's semantics: cross-correlation (no kernel flip), no bias, zero padding of
``(k - 1) // 2`` channels at both ends (``padding="circular"`` wraps around instead: CECA).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.nn import checks

PADDING_MODES = ("zero", "circular")


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1, min_size: int = 1) -> int:
    """Adaptive kernel size of the paper's Eq. 12: ``t = int(|(log2(C) + b) / gamma|)``, odd-ified.

    ``min_size=3`` reproduces timm's rule (k >= 3). Example: C = 64, 128, 256, 512, 1024, 2048
    gives 3, 5, 5, 5, 5, 7.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"eca_kernel_size: channels must be a positive int, got {channels!r}")
    t = int(abs((math.log2(channels) + b) / gamma))
    k = t if t % 2 else t + 1
    return max(k, min_size)


def _pad_channels(y: jax.Array, pad: int, padding: str) -> jax.Array:
    """Pads the last axis of ``y`` (N, C) by ``pad`` on both ends, with zeros or circularly."""
    if pad == 0:
        return y
    mode = "constant" if padding == "zero" else "wrap"
    return jnp.pad(y, ((0, 0), (pad, pad)), mode=mode)


def channel_conv1d(y: jax.Array, kernel: jax.Array, padding: str = "zero") -> jax.Array:
    """k-tap cross-correlation along the channel axis of ``y`` (N, C) -> (N, C).

    ``kernel`` has k taps, shape ``(k,)`` or Flax's 1-D conv layout ``(k, 1, 1)`` (== PyTorch's
    ``(1, 1, k)`` in the same order). Written as k shifted multiply-adds: k is tiny (1..9), so this
    beats a general convolution and fuses into one XLA loop.
    """
    checks.check_padding(padding)
    taps = kernel.reshape(-1)
    k = taps.shape[0]
    checks.check_odd_kernel(k)
    channels = y.shape[-1]
    y_pad = _pad_channels(y, (k - 1) // 2, padding)
    out = taps[0] * y_pad[:, 0:channels]
    for i in range(1, k):
        out = out + taps[i] * y_pad[:, i:i + channels]
    return out


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of ``(N, *spatial, C)`` -> ``(N, C)``, accumulated in float32 (or wider)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), dtype=jnp.promote_types(x.dtype, jnp.float32))


def apply_gate(x: jax.Array, gate_logits: jax.Array) -> jax.Array:
    """``x * sigmoid(gate_logits)`` broadcast over the spatial axes; ``gate_logits`` is (N, C)."""
    gate = jax.nn.sigmoid(gate_logits).astype(x.dtype)
    return x * gate.reshape(gate.shape[:1] + (1,) * (x.ndim - 2) + gate.shape[1:])


def eca_gate(x: jax.Array, kernel: jax.Array, padding: str = "zero") -> jax.Array:
    """Pure-function ECA: ``x`` (N, *spatial, C), ``kernel`` (k,) or (k, 1, 1) -> same shape as x."""
    checks.check_feature_map(x, "eca_gate")
    pooled = global_avg_pool(x)                     # float32 (or wider)
    return apply_gate(x, channel_conv1d(pooled, kernel.astype(pooled.dtype), padding))


def torch_linear_init(fan_in: int) -> Callable:
    """PyTorch's default nn.Linear init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_default_conv1d_init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default Conv1d init (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(k), 1/sqrt(k))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv1dKernel(nn.Module):
    """Holds a bias-free k-tap Conv1d kernel, Flax layout (k, 1, 1), under the name ``kernel``.

    A module of its own so that the parameter path is ``<attn>.conv.kernel``, mirroring the
    release's ``<attn>.conv.weight``.
    """
    k_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", torch_default_conv1d_init, (self.k_size, 1, 1), self.param_dtype)


class ECA(nn.Module):
    """Efficient Channel Attention for ``(N, *spatial, C)`` inputs.

    Attributes:
      k_size: odd kernel size; ``None`` derives it from C with :func:`eca_kernel_size`.
      padding: ``"zero"`` (ECA, the release) or ``"circular"`` (CECA).
      gamma, b, min_size: parameters of the adaptive rule when ``k_size`` is None.
      dtype: unused for the gate arithmetic (float32), kept for API symmetry; the output has x's dtype.
    Parameters: ``conv.kernel`` of shape (k, 1, 1): exactly k parameters.
    """
    k_size: Optional[int] = None
    padding: str = "zero"
    gamma: float = 2
    b: float = 1
    min_size: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def kernel_size_for(self, channels: int) -> int:
        """The k this layer uses for ``channels`` input channels."""
        if self.k_size is None:
            return eca_kernel_size(channels, self.gamma, self.b, self.min_size)
        return self.k_size

    @nn.compact
    def kernel(self, channels: int) -> jax.Array:
        """This layer's (k, 1, 1) kernel for ``channels`` input channels (created on first use).

        For fusing the gate into another op, e.g. ``eca_jax.nn.fused.batch_norm_act``.
        """
        checks.check_padding(self.padding)
        k = self.kernel_size_for(channels)
        checks.check_odd_kernel(k)
        return Conv1dKernel(k, self.param_dtype, name="conv")()

    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, type(self).__name__)
        return eca_gate(x, self.kernel(x.shape[-1]), self.padding)


def CECA(k_size: Optional[int] = None, **kwargs: Any) -> ECA:
    """Circular ECA (timm's CECA): :class:`ECA` with ``padding="circular"``."""
    return ECA(k_size=k_size, padding="circular", **kwargs)
