"""Window arithmetic shared by the shifted-slice kernels: output sizes, strided windows, accumulation dtype.

Layout: NHWC activations; explicit padding ((top, bottom), (left, right)).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]


def shifted_windows(xp: jax.Array, kh: int, kw: int, out_hw: tuple[int, int], strides: Sequence[int]
                    ) -> Iterator[tuple[int, int, jax.Array]]:
    """Yields (i, j, window): the (N, Ho, Wo, C) input pixels that tap (i, j) of a kernel sees."""
    n, _, _, c = xp.shape
    (ho, wo), (sh, sw) = out_hw, strides
    for i in range(kh):
        for j in range(kw):
            yield i, j, jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                                      (1, sh, sw, 1))


def conv_out_hw(x_shape: tuple, k_shape: tuple, strides: Sequence[int], padding: Padding) -> tuple[int, int]:
    """(Ho, Wo) of a window of k_shape[:2] over NHWC x_shape with explicit padding (floor formula)."""
    (pt, pb), (pl, pr) = padding
    return ((x_shape[1] + pt + pb - k_shape[0]) // strides[0] + 1,
            (x_shape[2] + pl + pr - k_shape[1]) // strides[1] + 1)


def acc_dtype(dtype: Any) -> Any:
    """Accumulation dtype: float32 for bfloat16/float16 inputs (like XLA's convolutions)."""
    return jnp.promote_types(dtype, jnp.float32)
