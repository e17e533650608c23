"""Evaluation shared by the trainer (``eca_jax.train``) and the CLI (``eca_jax.evaluate``).

- :func:`cross_entropy`: the per-example loss (train and eval);
- :func:`eval_step` / :func:`make_eval_step`: the pure per-batch sums (jit them over a mesh);
- :func:`evaluate_dataset`: one pass over a dataset's eval split -> loss, top-1, top-5;
- :func:`eval_input_kwargs` / :func:`normalization`: how a training config's images are prepared
  (its explicit keys, else the model's ``ModelCfg``).

Layering: this module sits above ``eca_jax.models`` and ``eca_jax.data`` and below
``eca_jax.train`` and ``eca_jax.evaluate``; it imports neither of the latter (nor the converter).
The data module is passed in (anything with the ``eca_jax.data`` API); ``eca_jax.models`` and
``eca_jax.data.transforms`` are imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from eca_jax.kernels.sharding import gathered

Batch = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Per-example softmax cross-entropy. logits (B, K) float32, labels (B,) int."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def eval_step(variables: dict[str, Any], batch: Batch, *, apply_fn: Callable
              ) -> dict[str, jax.Array]:
    """Sums over the valid examples of one batch: loss, top1, top5 (correct counts), count.

    batch may carry ``mask`` (B,) (padding of the last batch is 0); all sums are float32.
    """
    # gathered: FSDP-sharded weights whole under Explicit mesh axes (unchanged under Auto).
    logits = apply_fn(gathered(variables), batch["image"], train=False).astype(jnp.float32)
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


def make_eval_step(apply_fn: Callable) -> Callable:
    """``eval_step`` with the model's ``apply`` bound: ``fn(variables, batch) -> sums``."""
    return functools.partial(eval_step, apply_fn=apply_fn)


def normalization(config: Any) -> dict[str, tuple[float, ...]]:
    """``{"mean", "std"}`` for the train and eval pipelines: the config's, else the model's,
    else ImageNet's (``eca_jax.data.transforms.resolve_normalization``)."""
    from eca_jax.data.transforms import resolve_normalization  # noqa: PLC0415
    from eca_jax.models import get_model_cfg  # noqa: PLC0415
    mean, std = resolve_normalization(config.mean, config.std, get_model_cfg(config.model))
    return {"mean": mean, "std": std}


def eval_input_kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments of ``make_eval_iterator`` for ``config``: its explicit eval settings
    (``eval_image_size`` else ``image_size``, ``eval_resize_size``, ``eval_crop_pct``,
    ``eval_interpolation``, ``mean``/``std``; None where unset) plus the model's ModelCfg, which
    supplies what is unset (the dataset's own crop, digits' 1.0, wins over the model's; see
    ``eca_jax.data.transforms.resolve_eval_settings``)."""
    from eca_jax.models import get_model_cfg  # noqa: PLC0415
    return {"image_size": config.eval_image_size or config.image_size,
            "resize_size": config.eval_resize_size, "crop_pct": config.eval_crop_pct,
            "interpolation": config.eval_interpolation, "mean": config.mean, "std": config.std,
            "model_cfg": get_model_cfg(config.model)}


def evaluate_dataset(eval_fn: Callable, variables: Any, data: Any, config: Any, sharding: Any,
                     batch_size: int, *, with_input: bool = False) -> dict[str, Any]:
    """One pass over the eval split of ``config.dataset``: mean loss, top-1, top-5 and the number
    of examples.

    ``eval_fn(variables, batch)``: a (jitted) :func:`make_eval_step`; ``data``: anything with the
    ``eca_jax.data`` API; ``sharding``: the batch sharding; ``batch_size``: global. The eval images
    are prepared as :func:`eval_input_kwargs` says. ``with_input`` adds ``"input"``: what the
    pipeline resolved (image_size, resize_size, interpolation, mean, std), when its iterator says
    (``settings``). Raises ValueError when the split yields no batches."""
    sums = None
    iterator = data.make_eval_iterator(
        config.dataset, global_batch_size=batch_size, sharding=sharding, data_dir=config.data_dir,
        manual_dir=config.manual_dir, **eval_input_kwargs(config))
    settings = getattr(iterator, "settings", None)
    for batch in iterator:
        out = eval_fn(variables, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError(f"The eval split of {config.dataset!r} yielded no batches.")
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(1.0, sums["count"])
    metrics = {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n,
               "num_examples": int(sums["count"])}
    if with_input and dataclasses.is_dataclass(settings):
        metrics["input"] = dataclasses.asdict(settings)
    return metrics
