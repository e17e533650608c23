"""MobileNetV2 in two layouts: the ECA release's (with ECA in every inverted residual) and torchvision's.

Parameter paths joined with "." are the PyTorch keys: ``features.0.0`` (stem conv),
``features.N.conv.I`` (block layers), ``features.18.0/.1`` (last 1x1 conv + BN), ``classifier.1``.

Where ECA sits in a block (the release's InvertedResidual): after the projection BatchNorm,
before the residual add; there is no activation after the projection (a linear bottleneck):

    y = relu6(bn(conv_1x1(x)))         # expand to hidden = round(t * in) channels (left out when t == 1)
    y = relu6(bn(conv_dw3x3(y)))       # depthwise, stride s
    y = bn(conv_1x1(y))                # project to out channels; from here on: the block's tail
    y = eca(y)                         # y * sigmoid(conv1d_k(mean_hw y)), k taps shared by all channels
    return y + x if s == 1 and in == out else y

``InvertedResidual.__call__`` reads exactly so; the tail is :func:`eca_jax.models.tail.block_tail`,
by default one fused BatchNorm op (:mod:`eca_jax.nn.fused`), with
``impl=ImplOptions(fused_block_tail=False)`` layer by layer (``ECA.__call__``); same variables and results.

The release's rules (ECA.md): ReLU6, channels ``int(c * width_mult)`` with no make_divisible,
last channel ``int(1280 * max(1, width_mult))``, hidden ``int(round(inp * t))``, Dropout(0.25),
ECA after the projection BN of all 17 blocks with k = 1 if the setting's unscaled c < 96 else 3.
torchvision: channels rounded with make_divisible(., 8), Dropout(0.2), no attention.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.kernels import ImplOptions
from eca_jax.models.layers import (DropPath, Dropout, batch_norm, check_image_batch, check_rate, classifier, conv2d,
                                   drop_path_rates, global_pool)
from eca_jax.models.tail import block_tail
from eca_jax.nn.attention import make_attention, resolve_attention
from eca_jax.nn.eca import eca_kernel_size
from eca_jax.nn.rows import find_row

ECA_LAYERS = ("eca", "ceca")

# (expand ratio t, output channels c, repeats n, first stride s)
INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LAYOUTS = ("release", "torchvision")
# Block index after which each C2..C5 feature map is taken (strides 4, 8, 16, 32); 18 = last conv.
FEATURE_INDICES = {3: "C2", 6: "C3", 13: "C4", 18: "C5"}


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of divisor, never below 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def release_k(unscaled_channels: int) -> int:
    """The release's ECA k for a MobileNetV2 block: 1 below 96 channels, else 3."""
    return 1 if unscaled_channels < 96 else 3


class InvertedResidual(nn.Module):
    """Expand (1x1, unless t == 1) -> depthwise 3x3 -> project (1x1) -> BN [-> attention] [+ x].

    Keys: t != 1: conv.0 (pw ConvBNReLU6), conv.1 (dw ConvBNReLU6), conv.2 (pw-linear), conv.3 (BN),
    conv.4 (ECA); t == 1: conv.0 (dw), conv.1 (pw-linear), conv.2 (BN), conv.3 (ECA).
    ``attn``/``attn_kwargs``: the attention layer (:func:`eca_jax.nn.make_attention`; the release:
    "eca" with its k) in the same slot, e.g. SE with r = 8 for the paper's Table 3.
    The tail (BN, ECA, + x) is :func:`eca_jax.models.tail.block_tail` with no activation.
    ``impl``: the implementation switches of its convs and BatchNorms (:class:`eca_jax.kernels.ImplOptions`).
    ``drop_path_rate``: stochastic depth in training on blocks with the identity shortcut (as timm's
    InvertedResidual: :class:`DropPath` "drop_path" after the attention, before ``+ x``).
    """
    out_channels: int
    hidden: int
    stride: int
    expand: bool
    attn: Optional[str] = None
    attn_kwargs: Mapping[str, Any] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: ImplOptions = ImplOptions()
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = partial(conv2d, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        norm = partial(batch_norm, train, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        index, y = 0, x
        if self.expand:
            y = norm(name="conv.0.1")(conv(self.hidden, 1, name="conv.0.0")(y), act="relu6")
            index = 1
        y = norm(name=f"conv.{index}.1")(
            conv(self.hidden, 3, self.stride, groups=self.hidden, name=f"conv.{index}.0")(y), act="relu6")
        z = conv(self.out_channels, 1, name=f"conv.{index + 1}")(y)
        attention = make_attention(self.attn, name=f"conv.{index + 3}", param_dtype=self.param_dtype, train=train,
                                   **(self.attn_kwargs or {}))   # None when self.attn is None
        shortcut = x if self.stride == 1 and x.shape[-1] == self.out_channels else None
        if shortcut is None or not train or self.drop_path_rate == 0.0:
            # The paper's order: projection BN -> ECA -> + x (no activation after the projection).
            return block_tail(norm(name=f"conv.{index + 2}"), attention, z, shortcut, act=None, impl=self.impl)
        branch = block_tail(norm(name=f"conv.{index + 2}"), attention, z, None, act=None, impl=self.impl)
        return DropPath(self.drop_path_rate, name="drop_path")(branch, deterministic=False) + shortcut


class MobileNetV2(nn.Module):
    """MobileNetV2 (NHWC).

    Attributes:
      layout: "release" (ECA release's channel rules, Dropout 0.25) or "torchvision".
      attn: None, "eca" (the release; any spelling), or another row or layer name of
        :func:`eca_jax.nn.make_attention` in the same slot (Table 3: "SE-r8"). k_size (ECA):
        None = the release's rule, an odd int for every block, or "adaptive" (Eq. 12 on each
        block's output channels); a k-sweep row ("ECA-k5") brings its own k.
      impl: implementation switches (:class:`eca_jax.kernels.ImplOptions`; same parameters and
        results, only the speed differs).
      drop_path_rate: stochastic depth in training: block i of the 17 (from 0) drops its branch with
        probability ``drop_path_rate * i / 17`` (timm's EfficientNet-builder rule), only on blocks
        with an identity shortcut.
    Call: ``apply(variables, x, train=False, return_features=False)``; in training, Dropout and
    DropPath need ``rngs={"dropout": key}``. Returns float32 logits or {"C2".."C5"} (strides 4, 8, 16, 32).
    """
    num_classes: int = 1000
    width_mult: float = 1.0
    layout: str = "release"
    attn: Optional[str] = None
    k_size: Union[None, int, str] = None
    dropout: Optional[float] = None
    in_chans: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: ImplOptions = ImplOptions()
    drop_path_rate: float = 0.0

    def _channels(self, c: float) -> int:
        return int(c * self.width_mult) if self.layout == "release" else make_divisible(c * self.width_mult)

    def _block_attention(self, unscaled: int, out_channels: int) -> tuple[Optional[str], dict]:
        """(layer name or None, its settings) of one block's attention; ECA's with the block's k."""
        layer, settings = resolve_attention(self.attn) if self.attn is not None else (None, {})
        if layer in ECA_LAYERS:
            return layer, {**settings, "k_size": self._block_k(unscaled, out_channels)}
        return layer, settings

    def _block_k(self, unscaled: int, out_channels: int) -> Optional[int]:
        """One block's ECA k (None without an ECA): a sweep row's own k, else the model's rule."""
        layer = resolve_attention(self.attn)[0] if self.attn is not None else None
        if layer not in ECA_LAYERS:
            return None
        row = find_row(self.attn)
        if row is not None and row.k_overrides_model:
            return eca_kernel_size(out_channels) if row.k == "adaptive" else int(row.k)
        if self.k_size is None:
            return release_k(unscaled)
        if self.k_size == "adaptive":
            return eca_kernel_size(out_channels)
        return self.k_size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if self.layout not in LAYOUTS:
            raise ValueError(f"MobileNetV2 layout must be one of {LAYOUTS}, got {self.layout!r}")
        check_image_batch(x, self.in_chans, type(self).__name__)
        conv = partial(conv2d, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        norm = partial(batch_norm, train, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        in_channels = self._channels(32)
        x = norm(name="features.0.1")(conv(in_channels, 3, 2, name="features.0.0")(x.astype(self.dtype)), act="relu6")
        check_rate("MobileNetV2 drop_path_rate", self.drop_path_rate)
        block_drop_path = drop_path_rates(sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTINGS), self.drop_path_rate,
                                          last_gets_full_rate=False)
        features, index = {}, 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            out_channels = self._channels(c)
            for repeat in range(n):
                attn, attn_kwargs = self._block_attention(c, out_channels)
                x = InvertedResidual(out_channels, int(round(in_channels * t)), s if repeat == 0 else 1,
                                     expand=t != 1, attn=attn, attn_kwargs=attn_kwargs, dtype=self.dtype,
                                     param_dtype=self.param_dtype, impl=self.impl,
                                     drop_path_rate=block_drop_path[index - 1], name=f"features.{index}")(x, train)
                if index in FEATURE_INDICES:
                    features[FEATURE_INDICES[index]] = x
                in_channels, index = out_channels, index + 1
        last = int(1280 * max(1.0, self.width_mult)) if self.layout == "release" \
            else make_divisible(1280 * max(1.0, self.width_mult))
        x = norm(name=f"features.{index}.1")(conv(last, 1, name=f"features.{index}.0")(x), act="relu6")
        features[FEATURE_INDICES[index]] = x
        if return_features:
            return features
        rate = self.dropout if self.dropout is not None else (0.25 if self.layout == "release" else 0.2)
        y = Dropout(rate, deterministic=not train)(global_pool(x).astype(jnp.float32))
        # Both layouts initialise the classifier N(0, 0.01) with zero bias.
        return classifier(self.num_classes, last, name="classifier.1", param_dtype=self.param_dtype,
                          kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)(y)
