"""Evaluate a checkpoint: ``python -m eca_jax.evaluate --workdir DIR [--best | --step N] [--ema]``,
``--checkpoint DIR/checkpoints/STEP``, ``--checkpoint CONVERTED_DIR`` (``eca_jax.convert``'s
output) or ``--checkpoint FILE.pth.tar|.safetensors`` (PyTorch weights, converted in memory) or
``--checkpoint pretrained://NAME[.TAG]`` (published weights, :mod:`eca_jax.pretrained`); the
last two are evaluated on imagenet2012 unless ``--dataset`` says otherwise. Reading goes through
:func:`eca_jax.checkpoints.load`.

Restores params and batch statistics only (no optimizer state), data-parallel over all
devices, on the eval split of the dataset the checkpoint was trained on (``--dataset`` and
friends override). The last line printed is a JSON object:
``{"top1", "top5", "loss", "num_examples", "step", "ema", "model", "dataset", "checkpoint", "eval_input"}``
(``eval_input``: the image_size, resize_size, interpolation, mean and std the eval pipeline used;
``step`` is null for a converted checkpoint or PyTorch file).

Eval preprocessing: the flags (``--image_size``, ``--resize_size``/``--crop_pct``,
``--interpolation``), else the training config saved with the checkpoint (its ``eval_*``,
``mean``/``std`` keys and ``image_size``), else the model's ModelCfg (interpolation, crop,
mean/std; for converted or PyTorch weights also its test size: ``test_input_size`` with
``test_crop_pct``, as timm evaluates); a dataset with its own crop (digits) keeps it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (latest or --best step).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A step directory, converted directory or PyTorch file.")
_BEST = flags.DEFINE_bool("best", False, "Use the checkpoint with the best eval top-1.")
_STEP = flags.DEFINE_integer("step", None, "Use this step.")
_EMA = flags.DEFINE_bool("ema", False, "Use the run's exponential moving average of the weights "
                         "(trained with config.ema_decay).")
_DATASET = flags.DEFINE_string("dataset", None, "Override the dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "tfds manual_dir (ImageNet).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global eval batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Override the eval crop size.")
_RESIZE = flags.DEFINE_integer("resize_size", None, "Override the eval resize size.")
_CROP_PCT = flags.DEFINE_float("crop_pct", None, "Override the eval crop fraction (resize = size / crop_pct).")
_INTERPOLATION = flags.DEFINE_enum("interpolation", None, ["bilinear", "bicubic"],
                                   "Override the eval resize interpolation.")

# Keys of a training checkpoint's saved config that evaluation reuses.
_SAVED_KEYS = ("model", "model_kwargs", "dtype", "dataset", "data_dir", "manual_dir", "image_size",
               "eval_image_size", "eval_resize_size", "eval_crop_pct", "eval_interpolation", "mean",
               "std", "batch_size", "eval_batch_size")


def evaluate_checkpoint(path: str, *, best: bool = False, step: int | None = None, ema: bool = False,
                        overrides: dict[str, Any] | None = None,
                        data_module: Any = None) -> dict[str, Any]:
    """Metrics of the checkpoint at ``path`` (workdir, checkpoints dir, step dir or converted dir).

    ``overrides``: config keys (``dataset``, ``image_size``, ``eval_resize_size``, ``eval_crop_pct``,
    ``eval_interpolation`` ...; None values are ignored) that win over the saved config.

    Paths (``path``, ``data_dir``/``manual_dir`` overrides) may be relative to the current
    directory. Raises FileNotFoundError (no such checkpoint), CheckpointError (a ValueError:
    corrupt metadata, ``best`` without recorded eval metrics, variables that do not fit)."""
    import jax  # noqa: PLC0415 -- heavy imports after absl has parsed the flags
    import jax.numpy as jnp  # noqa: PLC0415

    from eca_jax.checkpoints import abstract_variables, load, place_like  # noqa: PLC0415
    from eca_jax.evaluation import evaluate_dataset, make_eval_step  # noqa: PLC0415
    from eca_jax.train import sharding  # noqa: PLC0415
    from eca_jax.train.config import make_config  # noqa: PLC0415

    if data_module is None:
        from eca_jax import data as data_module  # noqa: PLC0415
    from eca_jax import pretrained  # noqa: PLC0415
    # A pretrained spec brings the input settings of its weights (signature.input_settings).
    loaded = pretrained.load_spec(path) if pretrained.is_spec(path) else load(path, best=best, step=step, ema=ema)
    config = make_config(**_config_keys(loaded.signature, overrides or {}))
    mesh = sharding.make_mesh(-1, 1)
    batch = config.eval_batch_size or config.batch_size
    batch = -(-batch // mesh.size) * mesh.size  # round up to a multiple of the device count
    model = loaded.signature.build(dtype=jnp.dtype(config.dtype))
    replicated = sharding.replicated(mesh)
    refs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                        abstract_variables(model, config.image_size))
    variables = jax.tree.map(place_like, loaded.variables, refs)
    metrics = evaluate_dataset(jax.jit(make_eval_step(model.apply)), variables, data_module, config,
                               sharding.batch_sharding(mesh), batch, with_input=True)
    settings = metrics.pop("input", None)
    return {**metrics, "step": loaded.step, "ema": ema, "model": config.model, "dataset": config.dataset,
            "checkpoint": loaded.where, "eval_input": settings}


def _config_keys(signature: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The evaluation config: the checkpoint's saved keys (a training checkpoint's config, or a
    converted model's name and test size), then the explicit ``overrides``; data paths absolute."""
    from eca_jax._paths import absolute_path  # noqa: PLC0415

    chosen = {k: signature.config[k] for k in _SAVED_KEYS if k in signature.config}
    chosen.update(model=signature.model, model_kwargs=dict(signature.model_kwargs), **signature.input_settings)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "image_size" in overrides:  # an explicit size beats a saved eval_image_size
        chosen.pop("eval_image_size", None)
    if "eval_resize_size" in overrides or "eval_crop_pct" in overrides:
        chosen.pop("eval_resize_size", None)
        chosen.pop("eval_crop_pct", None)
    chosen.update(overrides)
    for key in ("data_dir", "manual_dir"):  # relative to the current directory
        if chosen.get(key):
            chosen[key] = absolute_path(chosen[key])
    return chosen


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    path = _CHECKPOINT.value or _WORKDIR.value
    if not path:
        raise app.UsageError("Pass --workdir or --checkpoint.")
    overrides = {"dataset": _DATASET.value, "data_dir": _DATA_DIR.value,
                 "manual_dir": _MANUAL_DIR.value, "eval_batch_size": _BATCH.value,
                 "image_size": _IMAGE_SIZE.value, "eval_resize_size": _RESIZE.value,
                 "eval_crop_pct": _CROP_PCT.value, "eval_interpolation": _INTERPOLATION.value}
    try:
        result = evaluate_checkpoint(path, best=_BEST.value, step=_STEP.value, ema=_EMA.value,
                                     overrides=overrides)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
