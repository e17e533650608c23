"""The ECA paper's Table-2 attention family as native ``flax.nnx`` modules.

Each layer is built eagerly from its channel count C and maps ``(N, *spatial, C) -> (N, *spatial, C)``
as ``x * sigmoid(f(mean_{spatial} x))``, exactly like its linen twin in :mod:`eca_jax.nn.attention`
/ :mod:`eca_jax.nn.eca`: the same parameter names and shapes (``ECA``: ``conv/kernel`` (k, 1, 1);
``SE``: ``fc.0``/``fc.2`` with ``kernel`` (C_in, C_out) and ``bias``; ``SEVar2``: ``weight`` (C,);
``SEVar3``: ``fc/kernel`` (C, C); ``SEGC``: ``kernel`` (G, C/G, C/G); ``ECANS``: ``kernel`` (C, k)),
the same initialisers and the same pure functions (``eca_gate``, ``global_avg_pool``, ``apply_gate``).
Calling a layer with another channel count than its constructor's is a ValueError.

    from flax import nnx
    import eca_jax.nnx as ennx
    eca = ennx.ECA(256, rngs=nnx.Rngs(0))            # k = 5 by Eq. 12
    se = ennx.make_attention("se", 256, reduction=16, rngs=nnx.Rngs(0))
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from eca_jax.nn import checks
from eca_jax.nn.attention import torch_default_conv1d_init_per_channel, torch_linear_init
from eca_jax.nn.eca import (_pad_channels, apply_gate, eca_gate, eca_kernel_size, global_avg_pool,
                            torch_default_conv1d_init)


def check_channels(x: jax.Array, channels: int, where: str) -> None:
    """A floating (N, *spatial, C) map whose C is the ``channels`` the layer was built for."""
    checks.check_feature_map(x, where)
    if x.shape[-1] != channels:
        raise ValueError(f"{where}: built for {channels} channels, called with {x.shape[-1]} "
                         f"(input shape {tuple(x.shape)})")


def _linear(fan_in: int, features: int, use_bias: bool, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """A float32-compute Linear (kernel (fan_in, features)) initialised like a PyTorch Linear."""
    init = torch_linear_init(fan_in)
    return nnx.Linear(fan_in, features, use_bias=use_bias, kernel_init=init, bias_init=init,
                      dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)


class Conv1dKernel(nnx.Module):
    """Holds the bias-free k-tap Conv1d kernel (k, 1, 1) as ``kernel`` (path ``<attn>/conv/kernel``)."""

    def __init__(self, k_size: int, param_dtype: Any = jnp.float32, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(torch_default_conv1d_init(rngs.params(), (k_size, 1, 1), param_dtype))


class ECA(nnx.Module):
    """Efficient Channel Attention for C channels; ``k_size=None`` takes k from Eq. 12
    (:func:`eca_jax.nn.eca_kernel_size` with ``gamma``, ``b``, ``min_size``).

    ``padding``: "zero" (ECA) or "circular" (CECA). Parameter: ``conv.kernel`` (k, 1, 1).
    ``dtype`` is unused (the gate runs in float32; the output has x's dtype), kept for symmetry.
    """

    def __init__(self, channels: int, k_size: Optional[int] = None, *, padding: str = "zero",
                 gamma: float = 2, b: float = 1, min_size: int = 1, dtype: Any = None,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        checks.check_padding(padding)
        k = eca_kernel_size(channels, gamma, b, min_size) if k_size is None else k_size
        checks.check_odd_kernel(k)
        self.channels, self.k_size, self.padding, self.dtype = channels, k, padding, dtype
        self.conv = Conv1dKernel(k, param_dtype, rngs=rngs)

    def kernel(self, channels: int) -> jax.Array:
        """The (k, 1, 1) kernel, for fusing the gate into a BatchNorm; ``channels`` must match."""
        if channels != self.channels:
            raise ValueError(f"{type(self).__name__}: built for {self.channels} channels, "
                             f"called with {channels}")
        return self.conv.kernel[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, type(self).__name__)
        return eca_gate(x, self.conv.kernel[...], self.padding)


def CECA(channels: int, k_size: Optional[int] = None, **kwargs: Any) -> ECA:
    """Circular ECA: :class:`ECA` with ``padding="circular"``."""
    return ECA(channels, k_size, padding="circular", **kwargs)


class SE(nnx.Module):
    """Squeeze-and-Excitation: ``fc.0`` (C -> C//r) + ReLU + ``fc.2`` (C//r -> C) + sigmoid."""

    def __init__(self, channels: int, reduction: int = 16, use_bias: bool = True, *, dtype: Any = None,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if reduction < 1 or channels // reduction < 1:
            raise ValueError(f"SE: reduction {reduction} leaves no hidden units for C={channels}")
        hidden = channels // reduction
        self.channels, self.dtype = channels, dtype
        setattr(self, "fc.0", _linear(channels, hidden, use_bias, param_dtype, rngs))
        setattr(self, "fc.2", _linear(hidden, channels, use_bias, param_dtype, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "SE")
        y = jax.nn.relu(getattr(self, "fc.0")(global_avg_pool(x)))
        return apply_gate(x, getattr(self, "fc.2")(y))


class SEVar1(nnx.Module):
    """SE-Var1: the parameter-free gate ``sigmoid(GAP(x))``."""

    def __init__(self, channels: int, *, dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: Optional[nnx.Rngs] = None):
        self.channels, self.dtype = channels, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "SEVar1")
        return apply_gate(x, global_avg_pool(x))


class SEVar2(nnx.Module):
    """SE-Var2: ``sigmoid(w * GAP(x))``, ``weight`` (C,) initialised to ones."""

    def __init__(self, channels: int, *, dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: Optional[nnx.Rngs] = None):
        self.channels, self.dtype = channels, dtype
        self.weight = nnx.Param(jnp.ones((channels,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "SEVar2")
        return apply_gate(x, global_avg_pool(x) * self.weight[...].astype(jnp.float32))


class SEVar3(nnx.Module):
    """SE-Var3: one C x C FC without bias, ``fc.kernel`` (C_in, C_out)."""

    def __init__(self, channels: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.channels, self.dtype = channels, dtype
        self.fc = _linear(channels, channels, False, param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "SEVar3")
        return apply_gate(x, self.fc(global_avg_pool(x)))


class SEGC(nnx.Module):
    """SE-GC: a grouped C x C FC (G groups, no bias); ``kernel`` (G, C/G in, C/G out)."""

    def __init__(self, channels: int, groups: int = 4, *, dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if groups < 1 or channels % groups:
            raise ValueError(f"SEGC: groups={groups} must divide the channel count C={channels}")
        size = channels // groups
        self.channels, self.groups, self.dtype = channels, groups, dtype
        self.kernel = nnx.Param(torch_linear_init(size)(rngs.params(), (groups, size, size), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "SEGC")
        n, size = x.shape[0], self.channels // self.groups
        y = global_avg_pool(x).reshape(n, self.groups, size)
        z = jnp.einsum("ngi,gio->ngo", y, self.kernel[...].astype(jnp.float32)).reshape(n, self.channels)
        return apply_gate(x, z)


class ECANS(nnx.Module):
    """ECA-NS: a separate k-tap kernel per channel, ``kernel`` (C, k) (a C x C band matrix)."""

    def __init__(self, channels: int, k_size: Optional[int] = None, *, padding: str = "zero", dtype: Any = None,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        checks.check_padding(padding)
        k = eca_kernel_size(channels) if k_size is None else k_size
        checks.check_odd_kernel(k)
        self.channels, self.k_size, self.padding, self.dtype = channels, k, padding, dtype
        self.kernel = nnx.Param(torch_default_conv1d_init_per_channel(rngs.params(), (channels, k), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels(x, self.channels, "ECANS")
        c, k = self.channels, self.k_size
        y_pad = _pad_channels(global_avg_pool(x), (k - 1) // 2, self.padding)
        windows = jnp.stack([y_pad[:, i:i + c] for i in range(k)], axis=-1)      # (N, C, k)
        return apply_gate(x, jnp.sum(windows * self.kernel[...].astype(jnp.float32), axis=-1))


ATTENTION_LAYERS: dict[str, Callable[..., nnx.Module]] = {
    "se": SE, "se_var1": SEVar1, "se_var2": SEVar2, "se_var3": SEVar3, "se_gc": SEGC,
    "eca_ns": ECANS, "eca": ECA, "ceca": CECA,
}


def make_attention(name: Optional[str], channels: int, /, *, rngs: nnx.Rngs, **kwargs: Any) -> Optional[nnx.Module]:
    """The nnx twin of :func:`eca_jax.nn.make_attention`: a Table-2 layer for ``channels`` by name
    (``None`` -> None). Keyword arguments go to the layer (``reduction``, ``groups``, ``k_size``,
    ``gamma``/``b``/``min_size``, ``dtype``, ``param_dtype``); an unknown one is a TypeError."""
    if name is None:
        return None
    key = name.lower().replace("-", "_")
    if key not in ATTENTION_LAYERS:
        close = difflib.get_close_matches(key, list(ATTENTION_LAYERS), n=3)
        raise ValueError(f"Unknown attention {name!r}. Known: {sorted(ATTENTION_LAYERS)}"
                         + (f"; did you mean {close}?" if close else ""))
    try:
        return ATTENTION_LAYERS[key](channels, rngs=rngs, **kwargs)
    except TypeError as e:
        raise TypeError(f"make_attention({name!r}): {e}") from None
