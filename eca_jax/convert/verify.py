"""``--verify``: run the PyTorch state dict (functional forward) and the Flax model on one random
batch and report the relative error of the logits, ``||flax - torch|| / ||torch||`` (Frobenius
norms over the whole (N, num_classes) batch)."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np


def random_batch(n: int, size: int, in_chans: int = 3, seed: int = 0) -> np.ndarray:
    """Float32 NHWC images that differ clearly from each other (smooth fields + noise, per-image
    channel scales and offsets, roughly like normalised photos), not pure i.i.d. noise."""
    rng = np.random.default_rng(seed)
    coarse = jnp.asarray(rng.standard_normal((n, 8, 8, in_chans)), jnp.float32)
    smooth = np.asarray(jax.image.resize(coarse, (n, size, size, in_chans), "bilinear"))
    x = smooth + 0.3 * rng.standard_normal((n, size, size, in_chans))
    x = x * rng.uniform(0.5, 2.0, (n, 1, 1, in_chans)) + 0.5 * rng.standard_normal((n, 1, 1, in_chans))
    return x.astype(np.float32)


def relative_error(a: Any, b: Any) -> float:
    """``||a - b|| / ||b||`` in float64 (b is the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def verify(module: nn.Module, variables: Mapping[str, Any], state_dict: Mapping[str, Any],
           size: int = 224, batch: int = 2, seed: int = 0) -> dict:
    """Logits of both frameworks on one batch -> {"rel_err", "max_abs", "size", "batch", "top1_agree"}."""
    import torch  # noqa: PLC0415 -- only --verify needs torch
    from eca_jax.convert.torch_forward import forward  # noqa: PLC0415
    x = random_batch(batch, size, getattr(module, "in_chans", 3), seed)
    with jax.default_matmul_precision("highest"):
        flax_logits = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))
    torch_logits = forward(module, state_dict, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    return {"rel_err": relative_error(flax_logits, torch_logits),
            "max_abs": float(np.max(np.abs(flax_logits - torch_logits))), "size": size, "batch": batch,
            "top1_agree": bool(np.all(flax_logits.argmax(-1) == torch_logits.argmax(-1)))}
