"""Building blocks shared by the model files: PyTorch-equivalent conv, BatchNorm, pooling, head,
and the training-time regularisers (dropout, stochastic depth).

Every layer here reproduces PyTorch numerics: explicit symmetric padding (never 'SAME', which pads
(0, 1) at stride 2 on even sizes), BatchNorm eps 1e-5 with PyTorch momentum 0.1 (Flax 0.9), the
release's fan-out normal conv init, and PyTorch's default Linear init for the classifier.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.kernels import ImplOptions, max_pool_shifted, on_cpu
from eca_jax.kernels.sharding import explicit_sharding, explicit_sharding_from
from eca_jax.nn.attention import torch_linear_init
from eca_jax.nn.fused import BatchNormAct

# Release init: Conv2d weight ~ N(0, sqrt(2 / (kh * kw * out_channels))) (fan-out; untruncated).
conv_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9   # == PyTorch momentum 0.1
BN_EPSILON = 1e-5


def conv2d(features: int, kernel: int, stride: int = 1, groups: int = 1, *, name: str,
           dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = False,
           impl: ImplOptions = ImplOptions()) -> nn.Conv:
    """A bias-free square conv padded like PyTorch's ``padding=kernel // 2`` (symmetric).

    Kernel (k, k, C_in / groups, C_out) (HWIO); computed by :func:`eca_jax.kernels.conv_general_dilated`
    with the switches of ``impl``.
    """
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=use_bias, kernel_init=conv_fan_out_init,
                   dtype=dtype, param_dtype=param_dtype, conv_general_dilated=impl.conv_general_dilated, name=name)


def batch_norm(train: bool, *, name: str, dtype: Any = None, param_dtype: Any = jnp.float32,
               zero_init: bool = False, impl: ImplOptions = ImplOptions()) -> BatchNormAct:
    """BatchNorm over the last axis; batch statistics in training, running averages otherwise.

    The variables are ``nn.BatchNorm``'s; the call can fuse what follows the normalisation
    (``residual=``, ``eca_kernel=``, ``act="relu"``): see :mod:`eca_jax.nn.fused`
    (``impl.hand_written_backward`` picks its training-mode implementation). The models choose
    between that fused call and the plain layers in one place, :func:`eca_jax.models.tail.block_tail`.

    Under ``jax.jit`` with a batch sharded over a mesh, the statistics are those of the GLOBAL
    batch (XLA inserts the all-reduce), unlike PyTorch DataParallel's per-GPU statistics.
    Note: Flax updates ``var`` with the biased batch variance; PyTorch's ``running_var`` uses the
    unbiased one (factor n / (n - 1)). Outputs in train and eval mode are unaffected.
    """
    return BatchNormAct(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        dtype=dtype, param_dtype=param_dtype,
                        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                        hand_written_backward=impl.hand_written_backward, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch MaxPool2d(3, stride=2, padding=1) on NHWC (padding never wins: it is -inf).

    On the CPU :func:`max_pool_shifted` (same values, PyTorch's first-maximum gradient; XLA:CPU runs
    the select-and-scatter backward of ``nn.max_pool`` ~5x slower); ``nn.max_pool`` elsewhere. The
    platform is the one the program is lowered for (:func:`eca_jax.kernels.on_cpu`), not the tracing host.
    """
    return on_cpu(lambda v: max_pool_shifted(v, (3, 3), (2, 2), ((1, 1), (1, 1))),
                  lambda v: nn.max_pool(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), x)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same keys, same masks) whose mask is typed like its input under an Explicit mesh.

    flax's Dropout draws an unsharded mask and ``lax.select``s it against the (batch-sharded) input,
    which explicit sharding mode rejects ("select `which` must ... have the same sharding as
    cases"); here the mask is drawn with ``out_sharding=`` the input's sharding. Same numbers under
    Auto axes and without a mesh (threefry keys are partitionable: a sharded draw has the same bits).
    """

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: Optional[bool] = None,
                 rng: Optional[jax.Array] = None) -> jax.Array:
        sharding = explicit_sharding(inputs)
        if sharding is None or self.broadcast_dims:
            return super().__call__(inputs, deterministic, rng)
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        rng = self.make_rng(self.rng_collection) if rng is None else rng
        mask = jax.random.bernoulli(rng, keep, inputs.shape, out_sharding=sharding)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def check_rate(name: str, rate: Any) -> None:
    """Requires a drop probability ``0 <= rate <= 1`` (a real number, not a bool); names ``name`` otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {rate!r}")


def drop_path_rates(num_blocks: int, rate: float, *, last_gets_full_rate: bool = True) -> tuple[float, ...]:
    """Per-block stochastic-depth rates, growing linearly from 0 over a network's residual blocks.

    Block i (0-based, counted over all stages) gets ``rate * i / (num_blocks - 1)`` (timm's ResNet:
    the last block gets ``rate``; a single block gets 0) or, with ``last_gets_full_rate=False``,
    ``rate * i / num_blocks`` (timm's EfficientNet builder, which builds its MobileNetV2).
    """
    check_rate("drop_path_rate", rate)
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"drop_path_rates: num_blocks must be a positive int, got {num_blocks!r}")
    denominator = max(num_blocks - 1, 1) if last_gets_full_rate else num_blocks
    return tuple(rate * i / denominator for i in range(num_blocks))


def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Stochastic depth on a batch of residual-branch outputs (timm's ``drop_path``): each example
    (axis 0) is zeroed with probability ``rate`` and otherwise scaled by ``1 / (1 - rate)``, so the
    expected value is ``x``.

    x: (B, ...) any float dtype (kept); key: a PRNG key. One Bernoulli draw per example, mask
    shape (B, 1, ..., 1). Under an Explicit mesh the mask is drawn with the batch axis's sharding
    (as :class:`Dropout`'s mask; the same bits as without a mesh, threefry keys being partitionable).
    ``rate == 0`` returns ``x`` itself and ``rate == 1`` zeros, without drawing.
    """
    check_rate("drop_path rate", rate)
    if rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = 1.0 - rate
    batch_only = (0,) + (None,) * (x.ndim - 1)
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1),
                                out_sharding=explicit_sharding_from(x, batch_only))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class DropPath(nn.Module):
    """Stochastic depth (:func:`drop_path`) on a residual branch, in training only.

    Identity when ``deterministic`` (eval) or ``rate == 0`` (no RNG drawn then); otherwise the
    key comes from the ``rng_collection`` stream ("dropout", as :class:`Dropout`), so the
    caller passes ``rngs={"dropout": key}``. No variables.
    """
    rate: float
    deterministic: Optional[bool] = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: Optional[bool] = None) -> jax.Array:
        check_rate("DropPath rate", self.rate)
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        return drop_path(x, self.rate, self.make_rng(self.rng_collection))


def avg_pool_2x2_ceil(x: jax.Array) -> jax.Array:
    """PyTorch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on NHWC.

    On odd sizes the last window is partial and averages only the real pixels.
    """
    pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding=((0, pad_h), (0, pad_w)), count_include_pad=False)


def classifier(num_classes: int, in_features: int, *, name: str, param_dtype: Any = jnp.float32,
               kernel_init: Optional[Any] = None, bias_init: Optional[Any] = None) -> nn.Dense:
    """The final Linear, computed in float32 (logits stay float32 under bf16 compute)."""
    default = torch_linear_init(in_features)
    return nn.Dense(num_classes, kernel_init=kernel_init or default, bias_init=bias_init or default,
                    dtype=jnp.float32, param_dtype=param_dtype, name=name)


def check_image_batch(x: jax.Array, in_chans: int, model: str) -> None:
    """Requires a floating NHWC batch with ``in_chans`` channels; names what is wrong otherwise."""
    shape = tuple(x.shape)
    if x.ndim != 4:
        raise ValueError(f"{model}: expected an NHWC image batch of rank 4 (N, H, W, {in_chans}), "
                         f"got rank {x.ndim} with shape {shape}")
    if shape[-1] != in_chans:
        hint = " (this looks like NCHW: transpose to NHWC with x.transpose(0, 2, 3, 1))" \
            if shape[1] == in_chans else ""
        raise ValueError(f"{model}: expected {in_chans} input channels in the last axis (NHWC), "
                         f"got shape {shape}{hint}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{model}: expected a floating input (normalized float32/bfloat16 images), got "
                        f"dtype {x.dtype}; convert uint8 images with eca_jax.data.preprocess_for_eval")


def global_pool(x: jax.Array) -> jax.Array:
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))
