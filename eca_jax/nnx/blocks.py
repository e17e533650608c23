"""The zoo's building blocks as native ``flax.nnx`` modules: conv, BatchNorm, classifier, the block
tail, stochastic depth, ResNet's ``ResidualBlock`` and MobileNetV2's ``InvertedResidual`` (NHWC).

They mirror :mod:`eca_jax.models.layers`, :mod:`eca_jax.models.tail`, :mod:`eca_jax.models.resnet`
and :mod:`eca_jax.models.mobilenet_v2` one for one, with the same initialisers, the same
``eca_jax.kernels`` convolution (``ImplOptions().conv_general_dilated``) and the same fused
BatchNorm functions, so values, gradients and variables are those of the linen zoo.

Names: a submodule is stored under its linen scope name, dots included (``setattr(self, "conv.0.0", ...)``),
so ``nnx.state(model)`` paths ARE the linen variable paths (``("layer1.0", "conv1", "kernel")``).
Reach such a child with ``getattr(block, "downsample.0")``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from eca_jax.kernels import ImplOptions
from eca_jax.models.layers import (BN_EPSILON, BN_MOMENTUM, avg_pool_2x2_ceil, check_rate, conv_fan_out_init,
                                   drop_path)
from eca_jax.models.resnet import EXPANSION
from eca_jax.models.tail import block_tail as shared_block_tail
from eca_jax.nn.attention import torch_linear_init
from eca_jax.nnx.attention import ECA, make_attention
from eca_jax.nnx.norm import BatchNormAct


@dataclasses.dataclass(frozen=True)
class KernelConv:
    """``impl.conv_general_dilated`` (:mod:`eca_jax.kernels`) with the call signature ``nnx.Conv`` uses:
    it also passes ``out_sharding`` (None unless asked for), which the kernels do not take.
    Frozen (hashable, equal by value): it is static data of the module graph."""
    impl: ImplOptions = ImplOptions()

    def __call__(self, *args: Any, out_sharding: Any = None, **kwargs: Any) -> jax.Array:
        if out_sharding is not None:
            raise NotImplementedError("eca_jax.nnx convs do not take out_sharding")
        return self.impl.conv_general_dilated(*args, **kwargs)


def conv2d(in_features: int, features: int, kernel: int, stride: int = 1, groups: int = 1, *, dtype: Any = None,
           param_dtype: Any = jnp.float32, impl: ImplOptions = ImplOptions(), rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free square conv padded like PyTorch's ``padding=kernel // 2``; kernel (k, k, C_in/groups, C_out)."""
    pad = kernel // 2
    return nnx.Conv(in_features, features, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                    kernel_init=conv_fan_out_init, dtype=dtype, param_dtype=param_dtype,
                    conv_general_dilated=KernelConv(impl), rngs=rngs)


def batch_norm(features: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, zero_init: bool = False,
               impl: ImplOptions = ImplOptions(), rngs: nnx.Rngs) -> BatchNormAct:
    """The zoo's BatchNorm (PyTorch eps/momentum), in training mode until ``model.eval()``."""
    return BatchNormAct(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, param_dtype=param_dtype,
                        scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones,
                        hand_written_backward=impl.hand_written_backward, rngs=rngs)


def classifier(in_features: int, num_classes: int, *, param_dtype: Any = jnp.float32, kernel_init: Any = None,
               bias_init: Any = None, rngs: nnx.Rngs) -> nnx.Linear:
    """The final Linear (kernel (in, classes)), float32 compute, PyTorch's default init unless given."""
    default = torch_linear_init(in_features)
    return nnx.Linear(in_features, num_classes, kernel_init=kernel_init or default, bias_init=bias_init or default,
                      dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)


def block_tail(norm: BatchNormAct, attention: Optional[nnx.Module], z: jax.Array, shortcut: Optional[jax.Array],
               act: Optional[str] = "relu", impl: ImplOptions = ImplOptions()) -> jax.Array:
    """``act(attention(norm(z)) + shortcut)`` in the paper's order: :func:`eca_jax.models.tail.block_tail`
    itself, with this package's ECA/CECA as the gates the fused BatchNorm applies."""
    return shared_block_tail(norm, attention, z, shortcut, act, impl, eca_types=(ECA,))


class DropPath(nnx.Module):
    """Stochastic depth on a residual branch: :func:`eca_jax.models.layers.drop_path` (the linen
    ``DropPath``'s function) with keys from its own RNG stream, forked from ``rngs``'s "dropout"
    stream like ``nnx.Dropout``'s. Active until ``model.eval()`` (``deterministic``); identity at
    rate 0. Holds no ``nnx.Param``/``nnx.BatchStat`` (only its ``nnx.RngState``).
    """

    def __init__(self, rate: float, *, deterministic: bool = False, rng_collection: str = "dropout",
                 rngs: nnx.Rngs):
        check_rate("DropPath rate", rate)
        self.rate, self.deterministic = rate, deterministic
        self.rngs = rngs[rng_collection].fork()

    @property
    def active(self) -> bool:
        """Whether a call draws a mask (training mode and rate > 0)."""
        return not self.deterministic and self.rate > 0.0

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, ...) -> same shape and dtype; each example kept (scaled by 1 / (1 - rate)) or zeroed."""
        return drop_path(x, self.rate, self.rngs()) if self.active else x


def make_drop_path(rate: float, rngs: nnx.Rngs) -> Optional[DropPath]:
    """A :class:`DropPath` for ``rate > 0``, else None: a model without stochastic depth keeps its state
    (no RNG stream) and its call unchanged."""
    check_rate("drop_path_rate", rate)
    return DropPath(rate, rngs=rngs) if rate > 0.0 else None


class ResidualBlock(nnx.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) block: ``relu(attn(bn_last(conv_last(..))) + shortcut(x))``.

    Arguments as :class:`eca_jax.models.ResidualBlock`, plus ``in_channels``. Children: ``conv1``,
    ``bn1``, ``conv2``, ``bn2`` [, ``conv3``, ``bn3``], the attention under ``attn_scope``, the
    shortcut ``downsample.0/.1`` ("conv") or ``downsample.1/.2`` ("avg", ResNet-D), and with
    ``drop_path_rate > 0`` a :class:`DropPath` ``drop_path`` (None otherwise).
    """

    def __init__(self, in_channels: int, kind: str, planes: int, stride: int = 1, shortcut: Optional[str] = None,
                 attn: Optional[str] = None, attn_scope: str = "eca", attn_kwargs: Optional[Mapping[str, Any]] = None,
                 zero_init_last_bn: bool = False, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 impl: ImplOptions = ImplOptions(), drop_path_rate: float = 0.0, *, rngs: nnx.Rngs):
        out = planes * EXPANSION[kind]
        common = dict(dtype=dtype, param_dtype=param_dtype, impl=impl, rngs=rngs)
        self.kind, self.stride, self.shortcut, self.attn_scope, self.impl = kind, stride, shortcut, attn_scope, impl
        if shortcut == "conv":
            setattr(self, "downsample.0", conv2d(in_channels, out, 1, stride, **common))
            setattr(self, "downsample.1", batch_norm(out, **common))
        elif shortcut == "avg":
            setattr(self, "downsample.1", conv2d(in_channels, out, 1, **common))
            setattr(self, "downsample.2", batch_norm(out, **common))
        if kind == "bottleneck":
            self.conv1, self.bn1 = conv2d(in_channels, planes, 1, **common), batch_norm(planes, **common)
            self.conv2, self.bn2 = conv2d(planes, planes, 3, stride, **common), batch_norm(planes, **common)
            self.conv3 = conv2d(planes, out, 1, **common)
            self.bn3 = batch_norm(out, zero_init=zero_init_last_bn, **common)
        else:
            self.conv1, self.bn1 = conv2d(in_channels, planes, 3, stride, **common), batch_norm(planes, **common)
            self.conv2 = conv2d(planes, out, 3, **common)
            self.bn2 = batch_norm(out, zero_init=zero_init_last_bn, **common)
        attention = make_attention(attn, out, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **(attn_kwargs or {}))
        self.has_attention = attention is not None
        if attention is not None:
            setattr(self, attn_scope, attention)
        self.drop_path = make_drop_path(drop_path_rate, rngs)

    def _shortcut(self, x: jax.Array) -> jax.Array:
        if self.shortcut == "conv":
            return getattr(self, "downsample.1")(getattr(self, "downsample.0")(x))
        if self.shortcut == "avg":
            pooled = avg_pool_2x2_ceil(x) if self.stride > 1 else x
            return getattr(self, "downsample.2")(getattr(self, "downsample.1")(pooled))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = self._shortcut(x)
        y = self.bn1(self.conv1(x), act="relu")
        if self.kind == "bottleneck":
            y = self.bn2(self.conv2(y), act="relu")
            z, last_bn = self.conv3(y), self.bn3
        else:
            z, last_bn = self.conv2(y), self.bn2
        attention = getattr(self, self.attn_scope) if self.has_attention else None
        if self.drop_path is None or not self.drop_path.active:
            return block_tail(last_bn, attention, z, shortcut, act="relu", impl=self.impl)
        # As the linen block: last BN -> attention -> drop path -> + shortcut -> ReLU.
        return jax.nn.relu(self.drop_path(block_tail(last_bn, attention, z, None, act=None, impl=self.impl)) + shortcut)


class InvertedResidual(nnx.Module):
    """MobileNetV2's block: expand 1x1 (unless t == 1) -> depthwise 3x3 -> project 1x1 -> BN [-> ECA] [+ x].

    Children as :class:`eca_jax.models.InvertedResidual`: t != 1: ``conv.0.0/.1`` (expand), ``conv.1.0/.1``
    (depthwise), ``conv.2`` (project), ``conv.3`` (BN), ``conv.4`` (ECA); t == 1: the indices less one;
    ``drop_path`` (a :class:`DropPath` when ``drop_path_rate > 0`` and the block has its identity shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int, expand: bool,
                 eca_k: Optional[int] = None, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 impl: ImplOptions = ImplOptions(), drop_path_rate: float = 0.0, *, rngs: nnx.Rngs):
        common = dict(dtype=dtype, param_dtype=param_dtype, impl=impl, rngs=rngs)
        index = 0
        if expand:
            setattr(self, "conv.0.0", conv2d(in_channels, hidden, 1, **common))
            setattr(self, "conv.0.1", batch_norm(hidden, **common))
            index = 1
        setattr(self, f"conv.{index}.0", conv2d(hidden, hidden, 3, stride, groups=hidden, **common))
        setattr(self, f"conv.{index}.1", batch_norm(hidden, **common))
        setattr(self, f"conv.{index + 1}", conv2d(hidden, out_channels, 1, **common))
        setattr(self, f"conv.{index + 2}", batch_norm(out_channels, **common))
        if eca_k is not None:
            setattr(self, f"conv.{index + 3}", ECA(out_channels, eca_k, param_dtype=param_dtype, rngs=rngs))
        self.expand, self.index, self.has_eca, self.impl = expand, index, eca_k is not None, impl
        self.identity = stride == 1 and in_channels == out_channels
        self.drop_path = make_drop_path(drop_path_rate if self.identity else 0.0, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        child = lambda name: getattr(self, name)  # noqa: E731
        i, y = self.index, x
        if self.expand:
            y = child("conv.0.1")(child("conv.0.0")(y), act="relu6")
        y = child(f"conv.{i}.1")(child(f"conv.{i}.0")(y), act="relu6")
        z = child(f"conv.{i + 1}")(y)
        attention = child(f"conv.{i + 3}") if self.has_eca else None
        shortcut = x if self.identity else None
        if self.drop_path is None or not self.drop_path.active:
            return block_tail(child(f"conv.{i + 2}"), attention, z, shortcut, act=None, impl=self.impl)
        return self.drop_path(block_tail(child(f"conv.{i + 2}"), attention, z, None, act=None, impl=self.impl)) + x
