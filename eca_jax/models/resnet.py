"""ResNets with channel attention: the ECA release, torchvision baselines, SE-ResNet, timm's ResNet-D.

One ``ResNet`` module covers all of them (NHWC). Parameter paths joined with "." are the PyTorch
state-dict module paths of the corresponding layout, e.g. ``layer1.0.conv1`` / ``layer1.0.eca.conv``
(release) or ``layer1.0.se.conv`` and ``conv1.0`` (timm's deep stem), so converting checkpoints is
a matter of renaming leaves (kernel <-> weight) and transposing kernels.

Where ECA sits in a block (release and timm; SE-ResNet puts SE in the same place): after the
last BatchNorm of the residual branch, before the residual add and the final ReLU. A bottleneck:

    shortcut = x or downsample(x)      # 1x1 conv (stride s) + BN; ResNet-D: avg pool + 1x1 conv + BN
    y = relu(bn1(conv1(x)))            # 1x1
    y = relu(bn2(conv2(y)))            # 3x3, stride s (the stride is on the 3x3 conv)
    y = bn3(conv3(y))                  # 1x1 to 4 * planes; from here on: the block's tail
    y = eca(y)                         # y * sigmoid(conv1d_k(mean_hw y)), k taps shared by all channels
    y = y + shortcut
    return relu(y)

A basic block has two 3x3 convs and the same tail after bn2. ``ResidualBlock.__call__`` reads
exactly so; the tail is :func:`eca_jax.models.tail.block_tail`, which by default runs it as one
fused BatchNorm op (:mod:`eca_jax.nn.fused`, faster on CPU) and with
``impl=ImplOptions(fused_block_tail=False)`` layer by layer (``ECA.__call__`` etc.); both have the
same variables and results.

Stochastic depth (``drop_path_rate``, timm's per-block rule) drops the whole branch of an example
after the attention, before ``+ shortcut`` (where timm's blocks apply ``self.drop_path``), in
training only; the block then runs the tail without the add and adds the shortcut itself.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.kernels import ImplOptions
from eca_jax.models.layers import (DropPath, Dropout, avg_pool_2x2_ceil, batch_norm, check_image_batch, check_rate,
                                   classifier, conv2d, drop_path_rates, global_pool, max_pool_3x3_s2)
from eca_jax.models.tail import block_tail
from eca_jax.nn.attention import make_attention, resolve_attention
from eca_jax.nn.rows import find_row
from eca_jax.nn.checks import check_odd_kernel

KSize = Union[None, int, str, Sequence[Optional[int]]]
ECA_LIKE = ("eca", "ceca", "eca_ns")
EXPANSION = {"basic": 1, "bottleneck": 4}
STEMS = ("conv7", "deep", "deep_tiered", "conv3")


def resolve_stage_k(k_size: KSize, num_stages: int) -> tuple[Optional[int], ...]:
    """Per-stage ECA kernel sizes: a list (one per stage), one int for all, or None/"adaptive"
    (None entries: derive k from each block's channel count)."""
    if k_size is None or k_size == "adaptive":
        return (None,) * num_stages
    if isinstance(k_size, str):
        raise ValueError(f"k_size must be an odd int, a list of {num_stages} odd ints or 'adaptive'; got {k_size!r}")
    if isinstance(k_size, int):
        k_size = (k_size,) * num_stages
    k_size = tuple(k_size)
    if len(k_size) != num_stages:
        raise ValueError(f"k_size lists one kernel size per stage: expected {num_stages} values, got {k_size}")
    for k in k_size:
        if k is not None:
            check_odd_kernel(k)
    return k_size


def attention_stage_k(attn: Optional[str], k_size: KSize, num_stages: int) -> tuple[Optional[int], ...]:
    """Per-stage ECA k of a ResNet with attention ``attn`` (a row or layer name) and ``k_size``.

    A k-sweep row (``ECA-k5``, ``ECA-adaptive``) overrides ``k_size``; ``ECA``/``ECA-NS`` take
    ``k_size`` when set and the paper's k = 3 otherwise; other names: ``k_size`` (None: adaptive).
    """
    row = find_row(attn) if attn is not None else None
    if row is not None and row.k is not None and (row.k_overrides_model or k_size is None):
        k_size = row.k
    return resolve_stage_k(k_size, num_stages)


class ResidualBlock(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block with optional attention.

    ``out = relu(attention(bn_last(conv_last(...conv1(x)))) + shortcut(x))``: the tail is
    :func:`eca_jax.models.tail.block_tail` (fused into the BatchNorm by default, or layer by layer
    with ``impl.fused_block_tail=False``; same variables and results).

    Shortcut: ``"conv"`` = 1x1 strided conv + BN (``downsample.0/.1``), ``"avg"`` = ResNet-D's
    2x2 ceil-mode average pool (when strided) + 1x1 conv + BN (``downsample.1/.2``), None = identity.
    ``impl``: the implementation switches of its convs and BatchNorms (:class:`eca_jax.kernels.ImplOptions`).
    ``drop_path_rate``: stochastic depth of the residual branch in training (:class:`DropPath`, scope
    "drop_path", RNG stream "dropout"), after the attention and before the shortcut add, as timm.
    """
    kind: str
    planes: int
    stride: int = 1
    shortcut: Optional[str] = None
    attn: Optional[str] = None
    attn_scope: str = "eca"
    attn_kwargs: Mapping[str, Any] = None
    zero_init_last_bn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: ImplOptions = ImplOptions()
    drop_path_rate: float = 0.0

    def _shortcut(self, x: jax.Array, conv: Callable, norm: Callable, out_channels: int) -> jax.Array:
        """x itself, or the downsample branch (conv + BN, ResNet-D: avg pool + conv + BN)."""
        if self.shortcut == "conv":
            return norm(name="downsample.1")(conv(out_channels, 1, self.stride, name="downsample.0")(x))
        if self.shortcut == "avg":
            pooled = avg_pool_2x2_ceil(x) if self.stride > 1 else x
            return norm(name="downsample.2")(conv(out_channels, 1, name="downsample.1")(pooled))
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = partial(conv2d, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        norm = partial(batch_norm, train, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        out_channels = self.planes * EXPANSION[self.kind]
        shortcut = self._shortcut(x, conv, norm, out_channels)
        if self.kind == "bottleneck":
            y = norm(name="bn1")(conv(self.planes, 1, name="conv1")(x), act="relu")
            y = norm(name="bn2")(conv(self.planes, 3, self.stride, name="conv2")(y), act="relu")
            z, last_bn = conv(out_channels, 1, name="conv3")(y), "bn3"
        else:
            y = norm(name="bn1")(conv(self.planes, 3, self.stride, name="conv1")(x), act="relu")
            z, last_bn = conv(out_channels, 3, name="conv2")(y), "bn2"
        attention = make_attention(self.attn, name=self.attn_scope, dtype=self.dtype, param_dtype=self.param_dtype,
                                   train=train, **(self.attn_kwargs or {}))   # None when self.attn is None
        last_norm = norm(name=last_bn, zero_init=self.zero_init_last_bn)
        if not train or self.drop_path_rate == 0.0:
            # The paper's order: last BN -> attention -> + shortcut -> ReLU.
            return block_tail(last_norm, attention, z, shortcut, act="relu", impl=self.impl)
        # timm's order with stochastic depth: last BN -> attention -> drop path -> + shortcut -> ReLU.
        branch = block_tail(last_norm, attention, z, None, act=None, impl=self.impl)
        return jax.nn.relu(DropPath(self.drop_path_rate, name="drop_path")(branch, deterministic=False) + shortcut)


class ResNet(nn.Module):
    """A ResNet (NHWC) with optional channel attention in every block.

    Attributes:
      block: "basic" or "bottleneck".
      layers: blocks per stage, e.g. (3, 4, 6, 3).
      widths: planes per stage (output channels = planes * 4 for bottlenecks).
      stem: "conv7" (7x7/2 + max pool), "deep" / "deep_tiered" (three 3x3 convs + max pool, ResNet-D),
        "conv3" (3x3/1, no pool: small 32x32 inputs).
      stem_width: width of the 7x7 / 3x3 stem (deep stems end at 2 * stem_width channels).
      avg_down: ResNet-D shortcut (avg pool + 1x1 conv) instead of a strided 1x1 conv.
      attn: a row or layer name of :func:`eca_jax.nn.make_attention` (case-insensitive: "SE-GC2",
        "ECA-k5", "vanilla" = none, "se_gc" ...) or None; k: :func:`attention_stage_k`.
      attn_scope: the Flax scope name of the attention module, which is also its PyTorch attribute
        ("eca" in the release, "se" in timm and SE-ResNets).
      k_size: ECA kernel sizes, per stage (list), for all stages (int) or "adaptive"/None.
      attn_kwargs: extra layer arguments (e.g. min_size=3 for timm's rule, reduction for SE).
      impl: implementation switches (:class:`eca_jax.kernels.ImplOptions`; same parameters and
        results, only the speed differs).
      drop_path_rate: stochastic depth in training, block i of N (counted over all stages from 0)
        dropping its residual branch with probability ``drop_path_rate * i / (N - 1)``
        (:func:`eca_jax.models.layers.drop_path_rates`, timm's linear rule).
      drop_rate: dropout on the pooled features before ``fc`` in training (timm's ``drop_rate``).
    Both regularisers add no variables, are identity at eval and draw from the "dropout" RNG stream:
    ``apply(..., train=True, rngs={"dropout": key}, mutable=["batch_stats"])`` when either is > 0.
    Call: ``apply(variables, x, train=False, return_features=False)``; x is (N, H, W, in_chans)
    float; returns float32 logits (N, num_classes) or a dict {"C2": ..., "C5": ...} of stage outputs
    (strides 4, 8, 16, 32 with the 224 stems).
    """
    block: str
    layers: Sequence[int]
    num_classes: int = 1000
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "conv7"
    stem_width: int = 64
    avg_down: bool = False
    attn: Optional[str] = None
    attn_scope: str = "eca"
    k_size: KSize = None
    attn_kwargs: Mapping[str, Any] = None
    zero_init_last_bn: bool = False
    in_chans: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: ImplOptions = ImplOptions()
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0

    def _check_config(self) -> None:
        if self.block not in EXPANSION:
            raise ValueError(f"ResNet block must be one of {sorted(EXPANSION)}, got {self.block!r}")
        if self.stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}")
        if len(self.layers) != len(self.widths):
            raise ValueError(f"layers {tuple(self.layers)} and widths {tuple(self.widths)} differ in length")
        check_rate("ResNet drop_path_rate", self.drop_path_rate)
        check_rate("ResNet drop_rate", self.drop_rate)

    def _stem(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(conv2d, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        norm = partial(batch_norm, train, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.impl)
        if self.stem == "conv7":
            return max_pool_3x3_s2(norm(name="bn1")(conv(self.stem_width, 7, 2, name="conv1")(x), act="relu"))
        if self.stem == "conv3":
            return norm(name="bn1")(conv(self.stem_width, 3, 1, name="conv1")(x), act="relu")
        first = 3 * self.stem_width // 4 if self.stem == "deep_tiered" else self.stem_width
        x = norm(name="conv1.1")(conv(first, 3, 2, name="conv1.0")(x), act="relu")
        x = norm(name="conv1.4")(conv(self.stem_width, 3, 1, name="conv1.3")(x), act="relu")
        x = norm(name="bn1")(conv(2 * self.stem_width, 3, 1, name="conv1.6")(x), act="relu")
        return max_pool_3x3_s2(x)

    def _stage_attn_kwargs(self, k: Optional[int]) -> dict:
        kwargs = dict(self.attn_kwargs or {})
        if self.attn is not None and resolve_attention(self.attn)[0] in ECA_LIKE:
            kwargs["k_size"] = k
        return kwargs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        self._check_config()
        check_image_batch(x, self.in_chans, type(self).__name__)
        stage_k = attention_stage_k(self.attn, self.k_size, len(self.layers))
        x = self._stem(x.astype(self.dtype), train)
        in_channels = self.stem_width * (2 if self.stem.startswith("deep") else 1)
        block_drop_path = iter(drop_path_rates(sum(self.layers), self.drop_path_rate))
        features = {}
        for stage, (num_blocks, planes) in enumerate(zip(self.layers, self.widths)):
            out_channels = planes * EXPANSION[self.block]
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                needs_shortcut = stride != 1 or in_channels != out_channels
                x = ResidualBlock(
                    self.block, planes, stride,
                    shortcut=("avg" if self.avg_down else "conv") if needs_shortcut else None,
                    attn=self.attn, attn_scope=self.attn_scope, attn_kwargs=self._stage_attn_kwargs(stage_k[stage]),
                    zero_init_last_bn=self.zero_init_last_bn, dtype=self.dtype, param_dtype=self.param_dtype,
                    impl=self.impl, drop_path_rate=next(block_drop_path), name=f"layer{stage + 1}.{index}")(x, train)
                in_channels = out_channels
            features[f"C{stage + 2}"] = x
        if return_features:
            return features
        pooled = Dropout(self.drop_rate, deterministic=not train, name="head_drop")(global_pool(x).astype(jnp.float32))
        return classifier(self.num_classes, in_channels, name="fc", param_dtype=self.param_dtype)(pooled)
