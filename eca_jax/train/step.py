"""Pure train and eval steps (no jit here; the loop compiles them over the mesh).

BatchNorm statistics: under ``jax.jit`` the batch is one global array, so with
``bn_groups=1`` BatchNorm normalises with the mean/variance of the *global* batch (all devices,
all processes), like SyncBatchNorm. The release trained with ``nn.DataParallel`` on several
GPUs, where each GPU normalised with the statistics of its own slice; ``bn_groups=G`` splits
the batch into G groups normalised separately (vmap), and the running averages are the mean
over groups of each group's update.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from eca_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Per-example softmax cross-entropy. logits (B, K) float32, labels (B,) int."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _forward_train(apply_fn: Callable, params: Any, batch_stats: Any, images: jax.Array,
                   rng: jax.Array, bn_groups: int) -> tuple[jax.Array, Any]:
    """logits (B, K) float32 and the new batch_stats, in train mode."""

    def one(x, key):
        logits, updates = apply_fn({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": key})
        return logits.astype(jnp.float32), updates.get("batch_stats", batch_stats)

    if bn_groups == 1:
        return one(images, rng)
    groups = images.reshape((bn_groups, -1) + images.shape[1:])
    logits, stats = jax.vmap(one)(groups, jax.random.split(rng, bn_groups))
    return logits.reshape((-1,) + logits.shape[2:]), jax.tree.map(lambda s: s.mean(0), stats)


def train_step(state: TrainState, batch: Batch, *, apply_fn: Callable,
               tx: optax.GradientTransformation, label_smoothing: float = 0.0,
               bn_groups: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer micro-step. batch: image (B, H, W, 3) float32, label (B,) int32.

    Returns the new state and metrics {loss, accuracy} averaged over the global batch.
    """
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        logits, new_stats = _forward_train(apply_fn, params, state.batch_stats, batch["image"],
                                           rng, bn_groups)
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32).mean()
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, {"loss": loss, "accuracy": accuracy}


def eval_step(variables: dict[str, Any], batch: Batch, *, apply_fn: Callable
              ) -> dict[str, jax.Array]:
    """Sums over the valid examples of one batch: loss, top1, top5 (correct counts), count.

    batch may carry ``mask`` (B,) (padding of the last batch is 0); all sums are float32.
    """
    logits = apply_fn(variables, batch["image"], train=False).astype(jnp.float32)
    labels = batch["label"]
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    top1 = (topk[:, 0] == labels).astype(jnp.float32)
    top5 = (topk == labels[:, None]).any(-1).astype(jnp.float32)
    loss = cross_entropy(logits, labels)
    return {"loss": (loss * mask).sum(), "top1": (top1 * mask).sum(),
            "top5": (top5 * mask).sum(), "count": mask.sum()}


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation,
                    label_smoothing: float, bn_groups: int) -> Callable:
    return functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                             label_smoothing=label_smoothing, bn_groups=bn_groups)


def make_eval_step(apply_fn: Callable) -> Callable:
    return functools.partial(eval_step, apply_fn=apply_fn)
