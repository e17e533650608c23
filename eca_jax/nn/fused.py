"""BatchNorm fused with what follows it in a CNN block: ECA gate, residual add, activation.

    out = act(bn(z) * sigmoid(conv1d_k(mean_{spatial} bn(z))) + residual)      # every part optional

``bn`` normalises with the batch statistics (training) or given running statistics (inference).
In training, :func:`batch_norm_act` is one ``jax.custom_vjp`` whose backward pass is two sweeps
over the activations, written out by hand instead of left to autodiff:

* forward: one reduction over ``z`` gives the BatchNorm sums AND the ECA pooling (the spatial mean
  of bn(z) is BN's affine map of the spatial mean of z), then one elementwise sweep writes ``out``;
* backward: one reduction (per-sample, per-channel sums of g and g * x_hat, where g is the
  output gradient masked by the activation) and one elementwise sweep for dz (and d residual).
  The activation mask is read from ``out`` (``out > 0`` for ReLU), so nothing else is kept
  besides ``z``, ``out`` and (N, C) vectors.

Why by hand: on XLA:CPU, autodiff of the unfused chain (BatchNorm, ECA gate, add, ReLU) keeps the
bn(z) output for the gate's backward, builds the ReLU masks by recomputing the previous blocks'
BatchNorm + add + ReLU inside each block's fusion, and spends several passes per BatchNorm
(experiments/PERFORMANCE.md has the profiles and the measured effect).

Layouts: ``z`` and ``residual`` are ``(N, *spatial, C)`` (NHWC for images); ``scale``, ``bias``,
``mean``, ``var`` are ``(C,)``; the ECA kernel has k taps, shape ``(k,)`` or ``(k, 1, 1)``.
Statistics and gate arithmetic run in float32 (or wider); ``out`` has ``z``'s dtype.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.nn import checks
from eca_jax.nn.eca import channel_conv1d, eca_gate

ACTIVATIONS = (None, "relu", "relu6")


def _check_activation(act: Optional[str]) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"batch_norm_act: act must be one of {ACTIVATIONS}, got {act!r}")


def _activate(pre: jax.Array, act: Optional[str]) -> jax.Array:
    if act == "relu":
        return jnp.maximum(pre, 0)
    if act == "relu6":
        return jnp.clip(pre, 0, 6)
    return pre


def _activation_mask(out: jax.Array, act: Optional[str]) -> Optional[jax.Array]:
    """Where the activation passes gradient, read from its output (exact: max/min return an input)."""
    if act == "relu":
        return out > 0
    if act == "relu6":
        return (out > 0) & (out < 6)
    return None


def _acc(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _bcast(v: jax.Array, ndim: int) -> jax.Array:
    """(C,) -> (1, ..., 1, C) or (N, C) -> (N, 1, ..., 1, C) for an ndim-rank activation."""
    if v.ndim == 1:
        return v.reshape((1,) * (ndim - 1) + v.shape)
    return v.reshape(v.shape[:1] + (1,) * (ndim - 2) + v.shape[1:])


def _tail(z: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array, bias: jax.Array,
          spatial_mean_z: Optional[jax.Array], residual: Optional[jax.Array], kernel: Optional[jax.Array],
          act: Optional[str], padding: str):
    """Normalise, gate, add, activate. Returns (out, gate, pooled); gate/pooled are None without a kernel."""
    acc = _acc(z.dtype)
    u = (z.astype(acc) - _bcast(mean, z.ndim)) * _bcast(rstd * scale, z.ndim) + _bcast(bias, z.ndim)
    gate = pooled = None
    if kernel is not None:
        pooled = (spatial_mean_z - mean) * (rstd * scale) + bias                  # mean_spatial bn(z), (N, C)
        gate = jax.nn.sigmoid(channel_conv1d(pooled, kernel.astype(acc), padding))
        u = u * _bcast(gate, z.ndim)
    if residual is not None:
        u = u + residual.astype(acc)
    return _activate(u, act).astype(z.dtype), gate, pooled


def _spatial_axes(z: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, z.ndim - 1))


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def batch_norm_act(z: jax.Array, scale: jax.Array, bias: jax.Array, residual: Optional[jax.Array],
                   kernel: Optional[jax.Array], act: Optional[str] = None, padding: str = "zero",
                   epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm [-> ECA gate] [+ residual] [-> act], with a hand-written backward.

    Args:
      z: (N, *spatial, C) input (a conv output).
      scale, bias: (C,) BatchNorm affine parameters.
      residual: None or an array shaped like ``z``, added after the gate.
      kernel: None (no gate) or the ECA kernel, (k,) or (k, 1, 1).
      act: None, "relu" or "relu6", applied last. padding: the gate's "zero" or "circular".
    Returns:
      ``(out, batch_mean, batch_var)``: out like ``z``; the (C,) float32 statistics over all axes
      but the last (variance biased, E[z^2] - E[z]^2 like Flax's BatchNorm), for the running averages.
    """
    out, _, _, stats = _forward_train(z, scale, bias, residual, kernel, act, padding, epsilon)
    return (out,) + stats


def _forward_train(z, scale, bias, residual, kernel, act, padding, epsilon):
    acc = _acc(z.dtype)
    zf = z.astype(acc)
    count = z.size // z.shape[-1]
    spatial = _spatial_axes(z)
    if kernel is not None:       # per-sample sums: the gate's pooling comes from them
        sum_nc, sumsq_nc = jnp.sum(zf, axis=spatial), jnp.sum(zf * zf, axis=spatial)
        total, total_sq = jnp.sum(sum_nc, axis=0), jnp.sum(sumsq_nc, axis=0)
        spatial_mean_z = sum_nc / (count // z.shape[0])
    else:
        axes = (0,) + spatial
        total, total_sq = jnp.sum(zf, axis=axes), jnp.sum(zf * zf, axis=axes)
        spatial_mean_z = None
    mean = total / count
    var = jnp.maximum(total_sq / count - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    scale_f, bias_f = scale.astype(acc), bias.astype(acc)
    out, gate, pooled = _tail(z, mean, rstd, scale_f, bias_f, spatial_mean_z, residual, kernel, act, padding)
    return out, (gate, pooled, spatial_mean_z), rstd, (mean, var)


def _batch_norm_act_fwd(z, scale, bias, residual, kernel, act, padding, epsilon):
    out, (gate, pooled, spatial_mean_z), rstd, stats = _forward_train(
        z, scale, bias, residual, kernel, act, padding, epsilon)
    saved = (z, out if act is not None else None, stats[0], rstd, scale, bias, gate, pooled, spatial_mean_z,
             kernel, None if residual is None else jnp.zeros((0,), residual.dtype))
    return (out,) + stats, saved


def _batch_norm_act_bwd(act, padding, epsilon, saved, cotangents):
    z, out, mean, rstd, scale, bias, gate, pooled, spatial_mean_z, kernel, residual_marker = saved
    d_out, d_mean, d_var = cotangents
    acc = _acc(z.dtype)
    nd = z.ndim
    count = z.size // z.shape[-1]
    scale_f, bias_f = scale.astype(acc), bias.astype(acc)
    g = d_out.astype(acc)
    mask = _activation_mask(out, act)
    if mask is not None:
        g = jnp.where(mask, g, 0)
    x_hat = (z.astype(acc) - _bcast(mean, nd)) * _bcast(rstd, nd)
    d_kernel = None
    if kernel is None:
        axes = (0,) + _spatial_axes(z)
        d_bias, d_scale = jnp.sum(g, axis=axes), jnp.sum(g * x_hat, axis=axes)
        du = g
    else:
        spatial = _spatial_axes(z)
        s_g, s_gx = jnp.sum(g, axis=spatial), jnp.sum(g * x_hat, axis=spatial)     # (N, C)
        d_gate = scale_f * s_gx + bias_f * s_g                                        # sum_spatial g * bn(z)
        d_logits = d_gate * gate * (1 - gate)
        _, conv_vjp = jax.vjp(lambda p, k: channel_conv1d(p, k, padding), pooled, kernel.astype(acc))
        d_pooled, d_kernel = conv_vjp(d_logits)
        mean_x_hat = (spatial_mean_z - mean) * rstd                                   # mean_spatial x_hat, (N, C)
        d_bias = jnp.sum(gate * s_g + d_pooled, axis=0)
        d_scale = jnp.sum(gate * s_gx + d_pooled * mean_x_hat, axis=0)
        per_sample = count // z.shape[0]
        du = g * _bcast(gate, nd) + _bcast(d_pooled / per_sample, nd)
    # d z of the normalisation (batch statistics included), plus the statistics outputs' cotangents.
    coef = rstd * scale_f
    dz = _bcast(coef, nd) * (du - _bcast(d_bias / count, nd) - x_hat * _bcast(d_scale / count, nd))
    dz = dz + _bcast(d_mean.astype(acc) / count, nd) + x_hat * _bcast(2 * d_var.astype(acc) / (rstd * count), nd)
    d_residual = None if residual_marker is None else g.astype(residual_marker.dtype)
    return (dz.astype(z.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype), d_residual,
            None if kernel is None else d_kernel.reshape(kernel.shape).astype(kernel.dtype))


batch_norm_act.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)


def batch_norm_act_autodiff(z: jax.Array, scale: jax.Array, bias: jax.Array, residual: Optional[jax.Array],
                            kernel: Optional[jax.Array], act: Optional[str] = None, padding: str = "zero",
                            epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`batch_norm_act` as the unfused composition (Flax BatchNorm statistics, ``eca_gate`` on
    the normalised output, add, activation), left to autodiff: the A/B baseline."""
    acc = _acc(z.dtype)
    zf = z.astype(acc)
    axes = tuple(range(z.ndim - 1))
    mean = jnp.mean(zf, axes)
    var = jnp.maximum(jnp.mean(zf * zf, axes) - mean * mean, 0.0)
    u = (zf - mean) * (jax.lax.rsqrt(var + epsilon) * scale.astype(acc)) + bias.astype(acc)
    if kernel is not None:
        u = eca_gate(u, kernel, padding)
    if residual is not None:
        u = u + residual.astype(acc)
    return _activate(u, act).astype(z.dtype), mean, var


def batch_norm_act_inference(z: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array,
                             residual: Optional[jax.Array] = None, kernel: Optional[jax.Array] = None,
                             act: Optional[str] = None, padding: str = "zero", epsilon: float = 1e-5) -> jax.Array:
    """:func:`batch_norm_act` with given (running) statistics ``mean``/``var`` (C,); plain autodiff."""
    acc = _acc(z.dtype)
    rstd = jax.lax.rsqrt(var.astype(acc) + epsilon)
    spatial_mean_z = None if kernel is None else jnp.mean(z, axis=_spatial_axes(z), dtype=acc)
    return _tail(z, mean.astype(acc), rstd, scale.astype(acc), bias.astype(acc), spatial_mean_z, residual,
                 kernel, act, padding)[0]


class BatchNormAct(nn.Module):
    """``nn.BatchNorm`` (same variables: params ``scale``/``bias``, batch_stats ``mean``/``var``) that
    can also apply an ECA gate, a residual add and an activation in the same fused op.

    Call: ``BatchNormAct(...)(z, residual=None, eca_kernel=None, act=None, eca_padding="zero")``,
    z (N, *spatial, C). ``residual`` may also be a zero-argument callable and ``eca_kernel`` a
    callable of the channel count (e.g. ``ECA(...).kernel``, which creates the ECA layer's own
    parameter): they are then evaluated inside this call. Running averages update like ``nn.BatchNorm`` (momentum = weight of
    the old value; biased batch variance; no update while initialising).

    ``hand_written_backward=False`` computes training mode with :func:`batch_norm_act_autodiff`
    (the unfused layers under autodiff: the A/B baseline of experiments/PERFORMANCE.md; same results).
    """
    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    hand_written_backward: bool = True

    @nn.compact
    def __call__(self, z: jax.Array, residual: Union[None, jax.Array, Callable[[], jax.Array]] = None,
                 eca_kernel: Union[None, jax.Array, Callable[[int], jax.Array]] = None,
                 act: Optional[str] = None, eca_padding: str = "zero") -> jax.Array:
        checks.check_feature_map(z, type(self).__name__)
        _check_activation(act)
        checks.check_padding(eca_padding)
        channels = z.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if callable(eca_kernel):
            eca_kernel = eca_kernel(channels)
        if callable(residual):
            residual = residual()
        if residual is not None and residual.shape != z.shape:
            raise ValueError(f"BatchNormAct: residual shape {tuple(residual.shape)} != input shape {tuple(z.shape)}")
        if self.dtype is not None:
            z = z.astype(self.dtype)
        if self.use_running_average:
            return batch_norm_act_inference(z, scale, bias, ra_mean.value, ra_var.value, residual, eca_kernel,
                                            act, eca_padding, self.epsilon)
        train_fn = batch_norm_act if self.hand_written_backward else batch_norm_act_autodiff
        out, mean, var = train_fn(z, scale, bias, residual, eca_kernel, act, eca_padding, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return out
