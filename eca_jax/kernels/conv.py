"""Convolutions rewritten for XLA:CPU speed, with the results of ``lax.conv_general_dilated``.

Profiles of ResNet-50 / MobileNetV2 training steps on XLA:CPU (jaxlib 0.10.2; see
experiments/PERFORMANCE.md) showed three slow paths, replaced here:

* 1x1 convs: XLA computes their weight gradient as a convolution with the batch as the feature
  axis (3-25 GFLOP/s, plus transposes) -> :func:`pointwise_conv`, a matrix product with a custom VJP;
* depthwise convs: XLA's grouped convolution runs at 0.3-0.6 GFLOP/s -> :func:`depthwise_conv_shifted`,
  kh*kw shifted multiply-adds fused into one loop, with a custom VJP (CPU backend only);
* dense convs whose input is smaller than the kernel (e.g. ResNet-50's 3x3 convs on the 2x2 maps
  of a 64x64 image): YNNPACK declines them and XLA's fallback runs at ~1 GFLOP/s (66 ms for one
  8x2x2x512 conv) -> :func:`small_input_conv`, im2col + one matrix product (0.6 ms);
* everything else (3x3, 7x7 dense convs) stays with XLA (YNNPACK, at ~90% of peak on this CPU).

Layouts: NHWC activations, HWIO kernels. :func:`conv_general_dilated` has the signature of
``lax.conv_general_dilated`` and is injected into ``flax.linen.Conv(conv_general_dilated=...)``,
so parameters (names, shapes, init) are exactly those of ``nn.Conv``. Results equal XLA's
convolution up to float rounding of the sums (tests/test_kernels_conv.py).

Every fast path has a keyword switch (default True = fast path; False = XLA's convolution or the
plain formulation), the A/B baselines of experiments/PERFORMANCE.md. Models choose them through
:class:`eca_jax.kernels.ImplOptions`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from eca_jax.kernels.sharding import explicit_sharding
from eca_jax.kernels.windows import acc_dtype, conv_out_hw, shifted_windows


def _is_nhwc_hwio(dimension_numbers: Any) -> bool:
    dn = dimension_numbers
    return dn is not None and tuple(dn.lhs_spec) == (0, 3, 1, 2) and tuple(dn.rhs_spec) == (3, 2, 0, 1) \
        and tuple(dn.out_spec) == (0, 3, 1, 2)


def _shifted_sum(xp: jax.Array, taps: jax.Array, out_hw: tuple[int, int], strides: Sequence[int]) -> jax.Array:
    """sum_{i,j} window_ij(xp) * taps[i, j]: one fused loop; taps (kh, kw, C). Accumulates in float32
    (or wider) and returns xp's dtype."""
    acc = acc_dtype(xp.dtype)
    out = None
    for i, j, window in shifted_windows(xp, taps.shape[0], taps.shape[1], out_hw, strides):
        term = window.astype(acc) * taps[i, j].astype(acc)
        out = term if out is None else out + term
    return out.astype(xp.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                           padding: tuple[tuple[int, int], tuple[int, int]], rows_grad: bool = True) -> jax.Array:
    """Depthwise conv of ``x`` (N, H, W, C) with ``kernel`` (kh, kw, 1, C) as kh*kw shifted multiply-adds.

    Cross-correlation with explicit zero ``padding`` ((top, bottom), (left, right)) and ``strides``,
    like ``lax.conv_general_dilated(..., feature_group_count=C)``. XLA fuses the taps into one
    vectorised loop over the channel axis: on CPU 10x faster than XLA's grouped convolution.
    The custom VJP keeps only ``x`` for the backward pass (autodiff would keep kh*kw shifted
    copies); input gradient = the same shifted sum over the stride-dilated output gradient with
    the flipped kernel; kernel gradient = one reduction per tap, computed from kh row slices of
    ``x`` and kw column shifts of the output gradient (``rows_grad=True``, faster on CPU) or from
    the kh*kw shifted windows of ``x`` (``rows_grad=False``, the A/B baseline; same sums).
    """
    return _depthwise_fwd(x, kernel, strides, padding, rows_grad)[0]


def _depthwise_fwd(x, kernel, strides, padding, rows_grad=True):
    kh, kw, _, c = kernel.shape
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    out_hw = conv_out_hw(x.shape, kernel.shape, strides, padding)
    return _shifted_sum(xp, kernel.reshape(kh, kw, c), out_hw, strides), (x, kernel)


def _depthwise_bwd(strides, padding, rows_grad, residuals, dy):
    x, kernel = residuals
    _, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    (pt, pb), (pl, pr) = padding
    (sh, sw), (ho, wo) = strides, dy.shape[1:3]
    hp, wp = h + pt + pb, w + pl + pr
    # d xp[a] = sum_i dy_dilated[a - i] * k[i] = a stride-1 correlation of the dilated, padded dy
    # with the flipped kernel; then crop the padding.
    dy_pad = jax.lax.pad(dy, jnp.zeros((), dy.dtype),
                         ((0, 0, 0), (kh - 1, hp - (ho - 1) * sh - 1, sh - 1), (kw - 1, wp - (wo - 1) * sw - 1, sw - 1),
                          (0, 0, 0)))
    dxp = _shifted_sum(dy_pad, kernel.reshape(kh, kw, c)[::-1, ::-1], (hp, wp), (1, 1))
    dx = dxp[:, pt:pt + h, pl:pl + w, :]
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    acc = acc_dtype(x.dtype)
    dk = _depthwise_kernel_grad(xp, dy, kh, kw, strides) if rows_grad else \
        jnp.stack([jnp.sum(window.astype(acc) * dy.astype(acc), axis=(0, 1, 2)) for _, _, window in
                   shifted_windows(xp, kh, kw, (ho, wo), strides)])
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


def _depthwise_kernel_grad(xp: jax.Array, dy: jax.Array, kh: int, kw: int, strides: Sequence[int]) -> jax.Array:
    """dk[i, j] = sum_{n,ho,wo} xp[n, ho*sh + i, wo*sw + j] * dy[n, ho, wo]  -> (kh*kw, C).

    Per kernel row i one row slice of ``xp`` (N, Ho, Wp, C); the column offset j moves to ``dy``
    instead (zero-padded / stride-dilated to width Wp): kh + kw materialised arrays instead of
    kh * kw shifted windows.
    """
    n, _, wp, c = xp.shape
    (sh, sw), (ho, wo) = strides, dy.shape[1:3]
    acc = acc_dtype(xp.dtype)
    zero = jnp.zeros((), dy.dtype)
    dy_cols = [jax.lax.pad(dy, zero, ((0, 0, 0), (0, 0, 0), (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
               for j in range(kw)]
    out = []
    for i in range(kh):
        rows = jax.lax.slice(xp, (0, i, 0, 0), (n, i + (ho - 1) * sh + 1, wp, c), (1, sh, 1, 1))
        out += [jnp.sum(rows.astype(acc) * dy_cols[j].astype(acc), axis=(0, 1, 2)) for j in range(kw)]
    return jnp.stack(out)


depthwise_conv_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def pointwise_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], precision: Any = None) -> jax.Array:
    """1x1 conv (no padding) of ``x`` (N, H, W, C_in) with ``kernel`` (C_in, C_out) as a matrix product.

    Strided: every s-th pixel, like PyTorch. The custom VJP computes the weight gradient
    ``x^T dy`` as a 2-D (P, C_in)^T (P, C_out) dot: autodiff's 4-D dot_general is canonicalised by
    XLA:CPU into a transpose of one operand, fused with that operand's producers (BatchNorm, ReLU,
    residual add) and evaluated in transposed, cache-hostile order (experiments/PERFORMANCE.md).
    """
    return _pointwise_fwd(x, kernel, strides, precision)[0]


def _pointwise_fwd(x, kernel, strides, precision):
    sh, sw = strides
    xs = x[:, ::sh, ::sw, :] if sh > 1 or sw > 1 else x
    y = jax.lax.dot_general(xs, kernel, (((3,), (0,)), ((), ())), precision=precision)
    return y, (xs, kernel, x.shape)


def _pointwise_bwd(strides, precision, residuals, dy):
    xs, kernel, x_shape = residuals
    dxs = jax.lax.dot_general(dy, kernel, (((3,), (1,)), ((), ())), precision=precision)
    # 2-D operands: a (P, C_in)^T (P, C_out) dot that XLA:CPU runs without transposing an operand
    # (a 4-D dot_general is canonicalised into transposes of both). It contracts the batch, so under
    # an Explicit mesh (batch sharded) its result must be typed: like the kernel's.
    dk = jax.lax.dot_general(xs.reshape(-1, xs.shape[-1]), dy.reshape(-1, dy.shape[-1]), (((0,), (0,)), ((), ())),
                             precision=precision, out_sharding=explicit_sharding(kernel))
    sh, sw = strides
    if sh > 1 or sw > 1:  # scatter back to every s-th pixel (zeros elsewhere)
        _, h, w, _ = x_shape
        zero = jnp.zeros((), dxs.dtype)
        dxs = jax.lax.pad(dxs, zero, ((0, 0, 0), (0, h - (dxs.shape[1] - 1) * sh - 1, sh - 1),
                                      (0, w - (dxs.shape[2] - 1) * sw - 1, sw - 1), (0, 0, 0)))
    return dxs.astype(xs.dtype), dk.astype(kernel.dtype)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def small_input_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                     padding: tuple[tuple[int, int], tuple[int, int]], precision: Any = None) -> jax.Array:
    """Dense conv of ``x`` (N, H, W, C_in) with ``kernel`` (kh, kw, C_in, C_out) as im2col + one dot.

    For inputs smaller than the kernel, where the patch matrix (N, Ho, Wo, kh*kw*C_in) is tiny.
    Cross-correlation with explicit zero ``padding`` and ``strides``; autodiff gives the gradients.
    """
    kh, kw, c_in, c_out = kernel.shape
    xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    out_hw = conv_out_hw(x.shape, kernel.shape, strides, padding)
    patches = jnp.concatenate([w for _, _, w in shifted_windows(xp, kh, kw, out_hw, strides)], axis=-1)
    return jax.lax.dot_general(patches, kernel.reshape(kh * kw * c_in, c_out), (((3,), (0,)), ((), ())),
                               precision=precision)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Optional[Sequence[int]] = None, rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, precision: Any = None,
                         *, pointwise_as_dot: bool = True, depthwise_shifted: bool = True,
                         depthwise_rows_grad: bool = True, small_input_im2col: bool = True) -> jax.Array:
    """``lax.conv_general_dilated`` with the convolutions XLA:CPU runs slowly rewritten (same sums).

    * 1x1 convs -> a matrix product (``dot_general``; strided ones take every s-th pixel first,
      like PyTorch's). XLA:CPU computes the weight gradient of a 1x1 *convolution* as a
      convolution with the batch as its feature axis, at a few GFLOP/s; as a dot it runs at GEMM speed.
    * depthwise convs (kernel (kh, kw, 1, C), ``feature_group_count == C``) -> shifted
      multiply-adds (:func:`depthwise_conv_shifted`), on the CPU only (GPUs keep cuDNN's).
    * dense convs on inputs smaller than the kernel -> im2col + dot (:func:`small_input_conv`), on
      the CPU only (YNNPACK declines them; XLA's fallback is ~100x slower).
    "On the CPU only" means the platform the program is lowered for (:func:`on_cpu`), so an
    export for TPU or CUDA made on a CPU host keeps XLA's convolutions there.
    Everything else goes to XLA unchanged. Injected into ``nn.Conv(conv_general_dilated=...)``
    (with the switches bound by ``functools.partial``, see ``ImplOptions.conv_general_dilated``);
    results equal XLA's convolution up to float rounding of the sums.

    Keyword switches (True = the rewrite above, False = XLA's convolution for that case):
    ``pointwise_as_dot``, ``depthwise_shifted``, ``small_input_im2col``; ``depthwise_rows_grad``
    picks the depthwise kernel-gradient formulation (see :func:`depthwise_conv_shifted`).
    """
    plain = (_is_nhwc_hwio(dimension_numbers) and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1))))

    def xla(x, k):
        return jax.lax.conv_general_dilated(x, k, window_strides, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                            feature_group_count=feature_group_count, precision=precision)

    if not plain:
        return xla(lhs, rhs)
    strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
    if pointwise_as_dot and rhs.shape[:2] == (1, 1) and feature_group_count == 1 and all(p == (0, 0) for p in pads):
        return pointwise_conv(lhs, rhs.reshape(rhs.shape[2:]), strides, precision)
    if depthwise_shifted and feature_group_count > 1 and rhs.shape[2] == 1 \
            and feature_group_count == lhs.shape[-1] == rhs.shape[-1]:
        return on_cpu(lambda x, k: depthwise_conv_shifted(x, k, strides, pads, bool(depthwise_rows_grad)), xla,
                      lhs, rhs)
    if small_input_im2col and feature_group_count == 1 and (lhs.shape[1] < rhs.shape[0] or lhs.shape[2] < rhs.shape[1]):
        return on_cpu(lambda x, k: small_input_conv(x, k, strides, pads, precision), xla, lhs, rhs)
    return xla(lhs, rhs)


def on_cpu(cpu_fn: Callable[..., jax.Array], other_fn: Callable[..., jax.Array], *args: jax.Array) -> jax.Array:
    """``cpu_fn(*args)`` where the program runs on the CPU, ``other_fn(*args)`` on every other platform.

    Chosen by the platform the program is LOWERED for (``jax.lax.platform_dependent``), not the
    machine that traces it: ``jax.export(..., platforms=("tpu",))`` from a CPU host carries only
    ``other_fn``; a multi-platform export carries both and the runtime platform picks one before
    compiling. Both must return the same shape, dtype and sharding. Differentiable (custom VJPs
    included: ``platform_dependent`` is a ``lax.switch``, whose AD keeps the platform choice).
    """
    return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=other_fn)
