"""Evaluate a checkpoint: ``python -m eca_jax.evaluate --workdir DIR [--best | --step N]``,
``--checkpoint DIR/checkpoints/STEP``, or ``--checkpoint CONVERTED_DIR`` (``eca_jax.convert``'s
output, evaluated on imagenet2012 unless ``--dataset`` says otherwise).

Restores params and batch statistics only (no optimizer state), data-parallel over all
devices, on the eval split of the dataset the checkpoint was trained on (``--dataset`` and
friends override). The last line printed is a JSON object:
``{"top1", "top5", "loss", "num_examples", "step", "model", "dataset", "checkpoint", "eval_input"}``
(``eval_input``: the image_size, resize_size, interpolation, mean and std the eval pipeline used;
``step`` is null for a converted checkpoint).

Eval preprocessing: the flags (``--image_size``, ``--resize_size``/``--crop_pct``,
``--interpolation``), else the training config saved with the checkpoint (its ``eval_*``,
``mean``/``std`` keys and ``image_size``), else the model's ModelCfg (interpolation, crop,
mean/std; for a converted checkpoint also its test size: ``test_input_size`` with
``test_crop_pct``, as timm evaluates); a dataset with its own crop (digits) keeps it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (latest or --best step).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A step directory (or checkpoints dir).")
_BEST = flags.DEFINE_bool("best", False, "Use the checkpoint with the best eval top-1.")
_STEP = flags.DEFINE_integer("step", None, "Use this step.")
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


def evaluate_checkpoint(path: str, *, best: bool = False, step: int | None = None,
                        overrides: dict[str, Any] | None = None,
                        data_module: Any = None) -> dict[str, Any]:
    """Metrics of the checkpoint at ``path`` (workdir, checkpoints dir, step dir or converted dir).

    ``overrides``: config keys (``dataset``, ``image_size``, ``eval_resize_size``, ``eval_crop_pct``,
    ``eval_interpolation`` ...; None values are ignored) that win over the saved config.

    Paths (``path``, ``data_dir``/``manual_dir`` overrides) may be relative to the current
    directory. Raises FileNotFoundError (no such checkpoint), CheckpointReadError (a ValueError:
    corrupt metadata, or ``best`` without recorded eval metrics)."""
    import jax  # noqa: PLC0415

    from eca_jax.train import checkpoint as ckpt_lib  # noqa: PLC0415
    from eca_jax.train import loop  # noqa: PLC0415
    from eca_jax.train import sharding as shd  # noqa: PLC0415
    from eca_jax.train.config import make_config  # noqa: PLC0415
    from eca_jax.train.init_from import place_like  # noqa: PLC0415
    from eca_jax.train.step import make_eval_step  # noqa: PLC0415

    if data_module is None:
        from eca_jax import data as data_module  # noqa: PLC0415
    host, sig, chosen, where, step_number = _load(path, best=best, step=step)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "image_size" in overrides:  # an explicit size beats a saved eval_image_size
        chosen.pop("eval_image_size", None)
    if "eval_resize_size" in overrides or "eval_crop_pct" in overrides:
        chosen.pop("eval_resize_size", None)
        chosen.pop("eval_crop_pct", None)
    chosen.update(overrides)
    for key in ("data_dir", "manual_dir"):  # relative to the current directory
        if chosen.get(key):
            chosen[key] = ckpt_lib.absolute_path(chosen[key])
    config = make_config(**chosen)
    mesh = shd.make_mesh(-1, 1)
    batch = config.eval_batch_size or config.batch_size
    batch = -(-batch // mesh.size) * mesh.size  # round up to a multiple of the device count
    model = loop.build_model(config, int(sig["num_classes"]))
    shapes = loop.variable_shapes(lambda n: model, config.image_size, int(sig["num_classes"]))
    repl = shd.replicated(mesh)
    refs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)
    variables = jax.tree.map(place_like, host, refs)
    eval_fn = jax.jit(make_eval_step(model.apply))
    metrics = loop.evaluate(eval_fn, variables, data_module, config, shd.batch_sharding(mesh),
                            batch, with_input=True)
    settings = metrics.pop("input", None)
    return {**metrics, "step": step_number, "model": config.model, "dataset": config.dataset,
            "checkpoint": where, "eval_input": settings}


def _load(path: str, *, best: bool, step: int | None) -> tuple[dict, dict, dict, str, int | None]:
    """(host variables, signature {"model", "num_classes", ...}, config keys to reuse, resolved
    path, step or None) of a training checkpoint or a converted directory."""
    from eca_jax.convert import store  # noqa: PLC0415
    from eca_jax.train import checkpoint as ckpt_lib  # noqa: PLC0415

    if store.is_converted_dir(path):
        if best or step is not None:
            raise ValueError(f"{path} is a converted checkpoint: it has no steps (drop --best/--step).")
        host, sig = store.load_converted(path)
        chosen = {"model": sig["model"], "model_kwargs": sig.get("model_kwargs") or {},
                  "image_size": _model_test_size(sig["model"])}
        return host, sig, chosen, ckpt_lib.absolute_path(path), None
    step_dir = ckpt_lib.resolve_step_dir(path, best=best, step=step)
    sig = ckpt_lib.step_signature(step_dir)
    if not sig.get("model"):
        raise ValueError(f"{step_dir} has no model metadata; was it written by eca_jax.train?")
    saved = dict(sig.get("config") or {})
    chosen = {k: saved[k] for k in _SAVED_KEYS if k in saved}
    return ckpt_lib.load_variables(step_dir), sig, chosen, str(step_dir), int(step_dir.name)


def _model_test_size(model: str) -> int:
    """The size a model's released weights are evaluated at: ``test_input_size``, else ``input_size``."""
    from eca_jax.models import get_model_cfg  # noqa: PLC0415
    cfg = get_model_cfg(model)
    return int(cfg.test_input_size or cfg.input_size)


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
        result = evaluate_checkpoint(path, best=_BEST.value, step=_STEP.value, overrides=overrides)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
