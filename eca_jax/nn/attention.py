"""The channel-attention family of the ECA paper's Table 2, behind one factory.

Every layer maps ``(N, *spatial, C) -> (N, *spatial, C)`` as ``x * sigmoid(f(mean_{spatial} x))``
and differs only in ``f`` (parameter counts for C channels):

=========  ==========================================  ==========================
name       f(y), y = (N, C)                             parameters
=========  ==========================================  ==========================
se         FC(C->C//r) + ReLU + FC(C//r->C), biases     2*C*(C//r) + C//r + C
se_var1    identity                                     0
se_var2    y * w, one weight per channel                C
se_var3    one full C x C FC (no bias)                  C*C
se_gc      grouped C x C FC with G groups (no bias)     C*C/G  (G or C/G given)
eca_ns     a separate k-tap kernel per channel (band)   C*k
eca        one shared k-tap kernel (zero padding)       k
ceca       one shared k-tap kernel (circular padding)   k
=========  ==========================================  ==========================

Table 3's other attentions, as timm builds them (:mod:`eca_jax.nn.context`): ``cbam`` (channel
and spatial gates, avg + max pooling) and ``gc`` (the GC block: attention pooling, LayerNorm
bottleneck).

``make_attention("eca", k_size=3)`` builds a layer from its name, so an ablation swaps one string;
the paper's rows (``make_attention("SE-GC2")``, ``"ECA-k5"``, ``"vanilla"``) come with their
settings (:mod:`eca_jax.nn.rows`).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.nn import checks
from eca_jax.nn.context import CBAM, GlobalContext
from eca_jax.nn.eca import (ECA, CECA, _pad_channels, apply_gate, eca_kernel_size,
                            global_avg_pool, torch_default_conv1d_init, torch_linear_init)
from eca_jax.nn.rows import find_row, row_key, row_names


def _dense(features: int, fan_in: int, use_bias: bool, param_dtype: Any, name: str) -> nn.Dense:
    """A Dense (float32 compute: the gate is tiny) initialised like a PyTorch Linear."""
    init = torch_linear_init(fan_in)
    return nn.Dense(features, use_bias=use_bias, kernel_init=init, bias_init=init,
                    dtype=jnp.float32, param_dtype=param_dtype, name=name)


class SE(nn.Module):
    """Squeeze-and-Excitation: FC(C -> C//r) + ReLU + FC(C//r -> C) + sigmoid.

    Parameter names ``fc.0`` and ``fc.2`` mirror the PyTorch ``nn.Sequential`` layout
    (Linear, ReLU, Linear, Sigmoid) of SE-ResNets.
    """
    reduction: int = 16
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "SE")
        channels = x.shape[-1]
        if self.reduction < 1 or channels // self.reduction < 1:
            raise ValueError(f"SE: reduction {self.reduction} leaves no hidden units for C={channels}")
        hidden = channels // self.reduction
        y = global_avg_pool(x)
        y = nn.relu(_dense(hidden, channels, self.use_bias, self.param_dtype, "fc.0")(y))
        return apply_gate(x, _dense(channels, hidden, self.use_bias, self.param_dtype, "fc.2")(y))


class SEVar1(nn.Module):
    """SE-Var1: the parameter-free gate ``sigmoid(GAP(x))``."""
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "SEVar1")
        return apply_gate(x, global_avg_pool(x))


class SEVar2(nn.Module):
    """SE-Var2: one weight per channel, ``sigmoid(w * GAP(x))``; ``weight`` is (C,), init 1."""
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "SEVar2")
        w = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        return apply_gate(x, global_avg_pool(x) * w.astype(jnp.float32))


class SEVar3(nn.Module):
    """SE-Var3: one full C x C FC layer without bias (``fc.kernel`` is (C_in, C_out))."""
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "SEVar3")
        channels = x.shape[-1]
        return apply_gate(x, _dense(channels, channels, False, self.param_dtype, "fc")(global_avg_pool(x)))


class SEGC(nn.Module):
    """SE-GC: a grouped C x C FC (no bias); ``kernel`` is (G, C/G in, C/G out).

    The groups are a count (``groups=G``: SE-GC1 has 16) or a group size
    (``channels_per_group=S``: G = C/S, SE-GC2 has 16, SE-GC3 has 8), resolved from C at call
    time; neither given: 4 groups. G must divide C (else ValueError naming the layer and C).
    """
    groups: Optional[int] = None
    channels_per_group: Optional[int] = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def groups_for(self, channels: int) -> int:
        """The number of groups G for ``channels`` input channels (checked to divide C)."""
        where = f"SEGC at {'.'.join(self.scope.path) or '<top>'}" if self.scope is not None else "SEGC"
        if self.groups is not None and self.channels_per_group is not None:
            raise ValueError(f"{where}: give groups or channels_per_group, not both")
        size = self.channels_per_group
        if size is not None:
            if size < 1 or channels % size:
                raise ValueError(f"{where}: channels_per_group={size} must divide the channel count C={channels}")
            return channels // size
        groups = 4 if self.groups is None else self.groups
        if groups < 1 or channels % groups:
            raise ValueError(f"{where}: groups={groups} must divide the channel count C={channels}")
        return groups

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "SEGC")
        channels = x.shape[-1]
        groups = self.groups_for(channels)
        size = channels // groups
        kernel = self.param("kernel", torch_linear_init(size), (groups, size, size), self.param_dtype)
        y = global_avg_pool(x).reshape(x.shape[0], groups, size)
        z = jnp.einsum("ngi,gio->ngo", y, kernel.astype(jnp.float32)).reshape(x.shape[0], channels)
        return apply_gate(x, z)


class ECANS(nn.Module):
    """ECA-NS: a separate k-tap kernel per channel (a C x C band matrix with C*k weights).

    ``kernel`` is (C, k): output channel c sees input channels c-(k-1)//2 .. c+(k-1)//2 (zero padded).
    """
    k_size: Optional[int] = None
    padding: str = "zero"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "ECANS")
        checks.check_padding(self.padding)
        channels = x.shape[-1]
        k = eca_kernel_size(channels) if self.k_size is None else self.k_size
        checks.check_odd_kernel(k)
        kernel = self.param("kernel", torch_default_conv1d_init_per_channel, (channels, k), self.param_dtype)
        y_pad = _pad_channels(global_avg_pool(x), (k - 1) // 2, self.padding)
        windows = jnp.stack([y_pad[:, i:i + channels] for i in range(k)], axis=-1)  # (N, C, k)
        return apply_gate(x, jnp.sum(windows * kernel.astype(jnp.float32), axis=-1))


def torch_default_conv1d_init_per_channel(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
    """U(-1/sqrt(k), 1/sqrt(k)) for a (C, k) per-channel kernel (Conv1d's default per row)."""
    return torch_default_conv1d_init(key, shape[::-1], dtype).T


ATTENTION_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "se": SE,
    "se_var1": SEVar1,
    "se_var2": SEVar2,
    "se_var3": SEVar3,
    "se_gc": SEGC,
    "eca_ns": ECANS,
    "eca": ECA,
    "ceca": CECA,
    "cbam": CBAM,
    "gc": GlobalContext,
}
BATCH_STAT_LAYERS = ("cbam",)   # layers with BatchNorm statistics (they take use_running_average)


def layer_names() -> list[str]:
    """Every name :func:`make_attention` takes: the rows (paper's spelling) and the layer names."""
    return row_names() + [name for name in ATTENTION_LAYERS if find_row(name) is None]


def make_attention(name: Optional[str], /, train: Optional[bool] = None, **kwargs: Any) -> Optional[nn.Module]:
    """Builds an attention layer by row or layer name (``None`` or ``"vanilla"`` -> None).

    ``name`` is case-insensitive (``-`` == ``_``): a row of :mod:`eca_jax.nn.rows` (``SE``,
    ``SE-GC2``, ``ECA-NS``, ``ECA``, ``ECA-k5``, ``ECA-adaptive`` ...) brings the paper's settings
    (r = 16, the group rules, k = 3), or a layer name without a row (``se_gc``, ``ceca``) its
    layer's defaults. Keyword arguments go to the layer and win over a row's settings:
    ``reduction`` (se), ``groups``/``channels_per_group`` (se_gc), ``k_size`` (eca, ceca, eca_ns;
    None = adaptive), ``gamma``/``b``/``min_size`` (eca, ceca), ``name``, ``dtype``,
    ``param_dtype``. An argument the layer does not take is an error. ``train`` reaches only the
    layers with batch statistics (CBAM's spatial BatchNorm: ``use_running_average = not train``).
    """
    if name is None:
        return None
    layer, settings = resolve_attention(name)
    if layer is None:
        return None
    if train is not None and layer in BATCH_STAT_LAYERS:
        kwargs = {"use_running_average": not train, **kwargs}
    try:
        return ATTENTION_LAYERS[layer](**{**settings, **kwargs})
    except TypeError as e:
        raise TypeError(f"make_attention({name!r}): {e}") from None


def resolve_attention(name: str) -> tuple[Optional[str], dict[str, Any]]:
    """(layer name or None for vanilla, the row's settings) of a row or layer name.

    ValueError listing the valid names (and the closest ones) for an unknown name.
    """
    row = find_row(name)
    if row is not None:
        return row.layer, dict(row.kwargs)
    key = row_key(name)
    if key in ATTENTION_LAYERS:
        return key, {}
    valid = layer_names()
    close = difflib.get_close_matches(key, [row_key(n) for n in valid], n=3, cutoff=0.6)
    raise ValueError(f"Unknown attention {name!r}. Valid (case-insensitive): {', '.join(valid)}"
                     + (f"; did you mean {close}?" if close else ""))
