"""Input validation shared by the layers: clear errors instead of silent wrong results."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_feature_map(x: jax.Array, where: str) -> None:
    """Requires a floating ``(N, *spatial, C)`` array with at least one spatial axis."""
    if x.ndim < 3:
        raise ValueError(f"{where}: expected a (N, *spatial, C) feature map with at least one spatial "
                         f"axis (NHWC for images), got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{where}: expected a floating dtype (float32, bfloat16, float16), got {x.dtype}")


def check_odd_kernel(k: int) -> None:
    """ECA kernels must be odd and positive so that padding (k-1)//2 keeps C channels centred."""
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"ECA k_size must be a positive odd int (1, 3, 5, ...), got {k!r}")


def check_padding(padding: str) -> None:
    if padding not in ("zero", "circular"):
        raise ValueError(f"ECA padding must be 'zero' or 'circular' (CECA), got {padding!r}")
