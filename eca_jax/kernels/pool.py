"""Max pooling rewritten for XLA:CPU speed, with the gradient of ``nn.max_pool`` / PyTorch's ``MaxPool2d``.

``nn.max_pool`` lowers to ``reduce_window(max)``; its VJP is XLA's ``select_and_scatter_add``,
which XLA:CPU runs slowly (the stem pool of ECA-ResNet-50 at batch 8, 224x224: ~180 ms forward +
backward on one core, against 20-35 ms here; ~0.13 s less per training step). :func:`max_pool_shifted` computes
the same values as the element-wise maximum of kh*kw strided slices of the -inf-padded input (one
fused loop) and has a custom VJP made of element-wise ops, slices and pads that XLA fuses into a
few vectorised loops.

Gradient rule: each output gradient goes to exactly ONE input position of its window, the first
maximal in-bounds element in row-major window order (top-left first). This is PyTorch's rule and
also what ``jax.grad`` of ``nn.max_pool`` gives on XLA:CPU (``select_and_scatter_add`` with
``select_prim=ge`` keeps the earlier element on ties); tests/test_kernels_pool.py checks both. Ties
matter: after a ReLU many windows are all zeros. Two corner cases differ from ``nn.max_pool``: a
window whose inputs are all -inf routes its gradient to its first input here and in PyTorch, to the
-inf padding (i.e. drops it) in XLA; a window whose maximum is NaN gets no gradient here (PyTorch:
its last NaN).

Layout: NHWC activations.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp

from eca_jax.kernels.sharding import explicit_sharding_from
from eca_jax.kernels.windows import Padding, conv_out_hw, shifted_windows


def _out_hw(h: int, w: int, window: Sequence[int], strides: Sequence[int], padding: Padding) -> tuple[int, int]:
    """Output size (floor formula, like ``reduce_window`` and PyTorch's ``ceil_mode=False``)."""
    ho, wo = conv_out_hw((1, h, w, 1), tuple(window), strides, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"max pool: window {tuple(window)} with padding {padding} does not fit an {h}x{w} input")
    return ho, wo


def _windows(xp: jax.Array, window: Sequence[int], strides: Sequence[int], out_hw: tuple[int, int]
             ) -> Iterator[jax.Array]:
    """The (N, Ho, Wo, C) strided slices of the padded input ``xp`` that the window taps see, row-major."""
    return (win for _, _, win in shifted_windows(xp, window[0], window[1], out_hw, strides))


def _max_of_windows(xp: jax.Array, window: Sequence[int], strides: Sequence[int], out_hw: tuple[int, int]
                    ) -> jax.Array:
    """(N, Ho, Wo, C): the element-wise maximum over the taps' slices of ``xp`` (one fused loop)."""
    y = None
    for win in _windows(xp, window, strides, out_hw):
        y = win if y is None else jnp.maximum(y, win)
    return y


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_shifted(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding) -> jax.Array:
    return _max_pool_fwd(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
    (pt, pb), (pl, pr) = padding
    xp = jax.lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    y = _max_of_windows(xp, window, strides, _out_hw(x.shape[1], x.shape[2], window, strides, padding))
    # Residual: the padded input only (the forward materialises it anyway). The backward recomputes y
    # from the same loads that find the first maximum; keeping y as well measured no faster.
    return y, xp


def _first_max_tap(xp: jax.Array, y: jax.Array, window: Sequence[int], strides: Sequence[int],
                   padding: Padding) -> jax.Array:
    """(N, Ho, Wo, C) integer: the row-major index of the first in-bounds tap of each window whose input
    equals the window's maximum ``y``; kh*kw where none does (a NaN maximum).

    ``xp`` is the -inf-padded input. A padding tap can equal ``y`` only in a window whose inputs are
    all -inf; such taps are excluded by position (an iota compare, only for taps that can reach the
    padding), so that window routes its gradient to its first input, like XLA.
    """
    (kh, kw), (sh, sw) = window, strides
    (pt, pb), (pl, pr) = padding
    h, w = xp.shape[1] - pt - pb, xp.shape[2] - pl - pr
    _, ho, wo, _ = y.shape
    rows = jnp.arange(ho)[None, :, None, None] * sh - pt   # input row of tap row 0, per output row
    cols = jnp.arange(wo)[None, None, :, None] * sw - pl
    dtype = jnp.int8 if kh * kw < 127 else jnp.int32
    first = jnp.full(y.shape, kh * kw, dtype)
    taps = list(_windows(xp, window, strides, (ho, wo)))
    for t in reversed(range(len(taps))):   # the last assignment (smallest t) wins
        i, j = divmod(t, kw)
        hit = taps[t] == y
        if i < pt or (ho - 1) * sh + i - pt >= h:
            hit = hit & (rows + i >= 0) & (rows + i < h)
        if j < pl or (wo - 1) * sw + j - pl >= w:
            hit = hit & (cols + j >= 0) & (cols + j < w)
        first = jnp.where(hit, jnp.array(t, dtype), first)
    return first


def _route_to_first(first: jax.Array, dy: jax.Array, window: Sequence[int], strides: Sequence[int],
                    padded_hw: tuple[int, int]) -> jax.Array:
    """d xp (N, Hp, Wp, C), float32 or wider: ``dy`` (N, Ho, Wo, C) added at the input position of tap
    ``first`` of each window.

    No scatter and no interior padding: the padded input splits into sh*sw phase planes (rows
    ra + sh*m, columns rb + sw*q). Tap (i, j) = (ra + sh*k, rb + sw*l) of output (m - k, q - l) lands
    at (m, q) of plane (ra, rb), so a plane is a sum of unit-stride shifted slices of ``dy`` masked
    by ``first == tap`` (one fused loop); a stack and a reshape interleave the planes.
    """
    n, ho, wo, c = dy.shape
    (kh, kw), (sh, sw), (hp, wp) = window, strides, padded_hw
    hq, wq = -(-hp // sh), -(-wp // sw)                  # plane size: ceil(Hp / sh) x ceil(Wp / sw)
    kh_max, kw_max = -(-kh // sh) - 1, -(-kw // sw) - 1  # largest shifts k, l
    acc = jnp.promote_types(dy.dtype, jnp.float32)
    # Pad so that every shifted slice is in bounds: with kh*kw (matches no tap) and zeros.
    pads = ((0, 0), (kh_max, hq - ho), (kw_max, wq - wo), (0, 0))
    first_p = jnp.pad(first, pads, constant_values=kh * kw)
    dy_p = jnp.pad(dy.astype(acc), pads)
    zero = jnp.zeros((), acc)
    planes = []
    for ra in range(sh):
        row = []
        for rb in range(sw):
            plane = jnp.zeros((n, hq, wq, c), acc)
            for i in range(ra, kh, sh):
                for j in range(rb, kw, sw):
                    k, l = (i - ra) // sh, (j - rb) // sw
                    idx = (slice(None), slice(kh_max - k, kh_max - k + hq), slice(kw_max - l, kw_max - l + wq))
                    plane = plane + jnp.where(first_p[idx] == i * kw + j, dy_p[idx], zero)
            row.append(plane)
        planes.append(jnp.stack(row, axis=3))            # (N, Hq, Wq, sw, C)
    dxp = jnp.stack(planes, axis=2)                      # (N, Hq, sh, Wq, sw, C)
    dxp = dxp.reshape(n, hq * sh, wq * sw, c, out_sharding=explicit_sharding_from(dxp, (0, None, None, 5)))
    return dxp[:, :hp, :wp]


def _max_pool_bwd(window, strides, padding, xp, dy):
    (pt, pb), (pl, pr) = padding
    _, hp, wp, _ = xp.shape
    y = _max_of_windows(xp, window, strides, dy.shape[1:3])
    first = _first_max_tap(xp, y, window, strides, padding)
    dxp = _route_to_first(first, dy, window, strides, (hp, wp))
    return (dxp[:, pt:hp - pb, pl:wp - pr, :].astype(xp.dtype),)


_max_pool_shifted.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_shifted(x: jax.Array, window: Sequence[int] = (3, 3), strides: Sequence[int] = (2, 2),
                     padding: Sequence[Sequence[int]] = ((1, 1), (1, 1))) -> jax.Array:
    """Max pool of ``x`` (N, H, W, C), floating (float32, bfloat16, ...) -> (N, Ho, Wo, C), same dtype.

    ``window`` (kh, kw), ``strides`` (sh, sw), explicit ``padding`` ((top, bottom), (left, right)),
    padded with -inf; Ho = (H + top + bottom - kh) // sh + 1, likewise Wo (PyTorch's
    ``ceil_mode=False``). Values equal ``nn.max_pool(x, window, strides, padding)`` exactly.
    Gradient: each output gradient goes to the first maximal input of its window in row-major order
    (PyTorch's rule, and that of ``jax.grad(nn.max_pool)`` on XLA:CPU), accumulated in float32 for
    bfloat16/float16. The custom VJP keeps only the padded input. Defaults: ``MaxPool2d(3, 2, 1)``.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_shifted expects an NHWC array of rank 4, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"max_pool_shifted expects a floating array, got {x.dtype}")
    window = (int(window[0]), int(window[1]))
    strides = (int(strides[0]), int(strides[1]))
    padding = ((int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1])))
    if min(window + strides) < 1 or any(not 0 <= p < k for pair, k in zip(padding, window) for p in pair):
        raise ValueError(f"max_pool_shifted: window {window} and strides {strides} must be >= 1 and padding "
                         f"{padding} between 0 and the window size - 1")
    _out_hw(x.shape[1], x.shape[2], window, strides, padding)
    return _max_pool_shifted(x, window, strides, padding)
