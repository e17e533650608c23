"""Throughput of a whole model on this machine: img/s of jitted inference passes and training steps.

The variables are random with the model's shapes (``jax.eval_shape``, no init compile); speed does
not depend on their values. The median of ``repeats`` timed passes after one warm-up pass.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from flax import traverse_util


def random_variables(model: nn.Module, size: int, in_chans: int = 3, seed: int = 0) -> dict[str, Any]:
    """Finite random variables shaped like ``model.init`` on a (1, size, size, in_chans) batch:
    small normal kernels, BatchNorm variances 1, everything else 0."""
    x = jax.ShapeDtypeStruct((1, size, size, in_chans), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        if path[-1] in ("var", "scale"):
            value = np.ones(leaf.shape)
        elif path[-1] in ("mean", "bias"):
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(0.0, 0.05, leaf.shape)
        out[path] = jnp.asarray(value, leaf.dtype)
    return traverse_util.unflatten_dict(out)


def images_per_sec(model: nn.Module, batch: int = 8, size: int = 224, repeats: int = 5,
                   in_chans: int = 3) -> float:
    """Median inference img/s of ``model`` on (batch, size, size, in_chans) float32 inputs."""
    if batch < 1 or repeats < 1:
        raise ValueError(f"images_per_sec: batch and repeats must be >= 1, got {batch}, {repeats}")
    variables = random_variables(model, size, in_chans)
    x = jax.random.normal(jax.random.key(1), (batch, size, size, in_chans), jnp.float32)
    forward = jax.jit(lambda v, images: model.apply(v, images, train=False))
    forward(variables, x).block_until_ready()          # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(variables, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def train_images_per_sec(model: nn.Module, batch: int = 8, size: int = 224, repeats: int = 5,
                         in_chans: int = 3) -> float:
    """Median training img/s: forward + backward of a cross-entropy loss with BatchNorm statistics
    updated (``train=True``), no optimizer, on (batch, size, size, in_chans) float32 inputs."""
    if batch < 1 or repeats < 1:
        raise ValueError(f"train_images_per_sec: batch and repeats must be >= 1, got {batch}, {repeats}")
    variables = random_variables(model, size, in_chans)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    x = jax.random.normal(jax.random.key(1), (batch, size, size, in_chans), jnp.float32)

    def loss(p, s, images):
        logits, updates = model.apply({"params": p, **s}, images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(0)})
        return -jnp.mean(jax.nn.log_softmax(logits)[:, 0]), updates

    step = jax.jit(jax.grad(loss, has_aux=True))
    jax.block_until_ready(step(params, state, x))          # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, state, x))
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
