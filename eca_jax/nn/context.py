"""The other attentions of the paper's Table 3, as timm builds them: CBAM and the GC block.

Both map ``(N, H, W, C) -> (N, H, W, C)``. Parameter paths joined with "." are the PyTorch
state-dict paths of timm's modules (``timm.layers.cbam.CbamModule``,
``timm.layers.global_context.GlobalContext``), and the parameter counts equal theirs:

==========  ===============================================================  ========================
layer       computation (y = per-channel pool over H, W)                     parameters (R = hidden)
==========  ===============================================================  ========================
cbam        channel: x * sigmoid(MLP(avg y) + MLP(max y)), MLP = 1x1 C->R,   2*C*R + 2*k*k + 2
            ReLU, 1x1 R->C, no biases, R = round(C / 16);
            spatial: x * sigmoid(BN(conv_kxk([mean_c x, max_c x]))), k = 7
gc          context = sum_hw softmax_hw(conv_1x1(x)) * x (attention pooling);  2*C*R + 2*C + 3*R + 1
            x * sigmoid(1x1 R->C(ReLU(LN(1x1 C->R(context))))), R = round(C/8)
==========  ===============================================================  ========================

``GlobalContext(fuse="add")`` is the GCNet paper's fusion (``x + transform(context)``, timm's
``gca``); the default ``"scale"`` is timm's ``gc``. CBAM's spatial gate has a BatchNorm: in
training pass ``use_running_average=False`` (the ResNet blocks do) and ``mutable=["batch_stats"]``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.nn import checks
from eca_jax.nn.eca import apply_gate, global_avg_pool, torch_linear_init


def hidden_channels(channels: int, ratio: float) -> int:
    """timm's rounding of a reduced width (``make_divisible(C * ratio, 1, round_limit=0)``): at least 1."""
    return max(1, int(channels * ratio + 0.5))


def _pointwise(features: int, fan_in: int, use_bias: bool, param_dtype: Any, name: str,
               kernel_init: Optional[Any] = None) -> nn.Dense:
    """A 1x1 conv on pooled (N, C) features as a Dense in float32, initialised like PyTorch's Conv2d."""
    init = torch_linear_init(fan_in)
    return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init or init, bias_init=init,
                    dtype=jnp.float32, param_dtype=param_dtype, name=name)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: a channel gate, then a spatial gate (timm's layout).

    Parameters: ``channel.fc1`` (C, R), ``channel.fc2`` (R, C), ``spatial.conv.conv`` (k, k, 2, 1),
    ``spatial.conv.bn`` (scale, bias; batch_stats mean, var: all (1,)).
    """
    reduction: int = 16
    spatial_kernel_size: int = 7
    use_running_average: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
        checks.check_feature_map(x, "CBAM")
        if x.ndim != 4:
            raise ValueError(f"CBAM takes (N, H, W, C) feature maps, got shape {tuple(x.shape)}")
        channels = x.shape[-1]
        hidden = hidden_channels(channels, 1.0 / self.reduction)
        fc1 = _pointwise(hidden, channels, False, self.param_dtype, "channel.fc1")
        fc2 = _pointwise(channels, hidden, False, self.param_dtype, "channel.fc2")
        pooled_max = jnp.max(x, axis=(1, 2)).astype(jnp.float32)
        mlp = lambda y: fc2(nn.relu(fc1(y)))                                    # noqa: E731
        x = apply_gate(x, mlp(global_avg_pool(x)) + mlp(pooled_max))
        return x * self._spatial_gate(x, nn.merge_param("use_running_average", self.use_running_average,
                                                        use_running_average)).astype(x.dtype)

    def _spatial_gate(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        """sigmoid(BN(conv([mean_c x, max_c x]))): (N, H, W, 1), float32."""
        k = self.spatial_kernel_size
        maps = jnp.stack([jnp.mean(x, axis=-1, dtype=jnp.float32), jnp.max(x, axis=-1).astype(jnp.float32)], -1)
        conv = nn.Conv(1, (k, k), padding=(k - 1) // 2, use_bias=False, dtype=jnp.float32,
                       param_dtype=self.param_dtype, kernel_init=torch_linear_init(2 * k * k),
                       name="spatial.conv.conv")
        norm = nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=1e-5,
                            dtype=jnp.float32, param_dtype=self.param_dtype, name="spatial.conv.bn")
        return jax.nn.sigmoid(norm(conv(maps)))


def _kaiming_normal_fan_in(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
    """N(0, 2 / fan_in) for a (fan_in, out) Dense kernel (timm's init of the attention-pool conv)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / shape[0])


class GlobalContext(nn.Module):
    """The GC block (GCNet) as timm builds it: attention pooling, a bottleneck transform, fusion.

    Parameters: ``conv_attn`` (C, 1) + bias; ``mlp_<fuse>.fc1`` (C, R) + bias, ``mlp_<fuse>.norm``
    (LayerNorm over R, eps 1e-6), ``mlp_<fuse>.fc2`` (R, C) + bias, with ``<fuse>`` "scale" or "add".
    """
    reduction: float = 8
    fuse: str = "scale"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        checks.check_feature_map(x, "GlobalContext")
        if self.fuse not in ("scale", "add"):
            raise ValueError(f"GlobalContext: fuse must be 'scale' or 'add', got {self.fuse!r}")
        n, channels = x.shape[0], x.shape[-1]
        hidden = hidden_channels(channels, 1.0 / self.reduction)
        flat = x.reshape(n, -1, channels).astype(jnp.float32)                       # (N, HW, C)
        logits = _pointwise(1, channels, True, self.param_dtype, "conv_attn", _kaiming_normal_fan_in)(flat)
        weights = jax.nn.softmax(logits[..., 0], axis=-1)                            # (N, HW)
        context = jnp.einsum("nsc,ns->nc", flat, weights)
        prefix = f"mlp_{self.fuse}"
        y = _pointwise(hidden, channels, True, self.param_dtype, f"{prefix}.fc1")(context)
        y = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name=f"{prefix}.norm")(y)
        y = _pointwise(channels, hidden, True, self.param_dtype, f"{prefix}.fc2")(nn.relu(y))
        if self.fuse == "scale":
            return apply_gate(x, y)
        return x + y.astype(x.dtype).reshape(n, *(1,) * (x.ndim - 2), channels)
