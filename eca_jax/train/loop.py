"""``train_and_evaluate(config, workdir)``: the training loop over a device mesh.

Order of start-up: config -> dataset info -> mesh -> model/optimizer -> state (restored from
the workdir's latest checkpoint, else created sharded with jit(init, out_shardings) and
optionally initialised from ``init_from``) -> data iterator (at the restored position) ->
loop (train, log, eval, checkpoint, preemption) -> final checkpoint, eval and plot.

A "step" is one optimizer update on ``batch_size`` examples; with ``grad_accum_steps = n`` it
is n jitted micro-steps on batch_size / n examples each (optax.MultiSteps).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from eca_jax.train import checkpoint as ckpt_lib
from eca_jax.train import init_from as init_lib
from eca_jax.train import reporting
from eca_jax.train import sharding as shd
from eca_jax.train.config import to_steps, validate_config
from eca_jax.train.optim import make_optimizer
from eca_jax.train.preemption import PreemptionGuard
from eca_jax.train.state import TrainState, init_state, make_init_fn
from eca_jax.train.step import make_eval_step, make_train_step

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """``create_model(config.model, **config.model_kwargs)`` computing in ``config.dtype``
    (parameters stay float32)."""
    from eca_jax.models import create_model  # noqa: PLC0415
    return create_model(config.model, num_classes=num_classes, dtype=DTYPES[config.dtype],
                        **config.model_kwargs.to_dict())


def signature(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """What identifies the model of a checkpoint, plus the config (JSON) for evaluate."""
    return {"model": config.model, "num_classes": int(num_classes),
            "model_kwargs": config.model_kwargs.to_dict(), "dataset": config.dataset,
            "image_size": config.image_size, "eval_resize_size": config.eval_resize_size,
            "config": json.loads(config.to_json())}


def _channels(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def normalization(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"mean", "std"}`` for the train and eval pipelines: the config's, else the model's."""
    from eca_jax.models import get_model_cfg  # noqa: PLC0415
    cfg = get_model_cfg(config.model)
    return {"mean": _channels(config.mean) or cfg.mean, "std": _channels(config.std) or cfg.std}


def eval_input_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of ``make_eval_iterator`` for ``config``: its explicit eval settings
    (``eval_image_size`` else ``image_size``, ``eval_resize_size``, ``eval_crop_pct``,
    ``eval_interpolation``, ``mean``/``std``; None where unset) plus the model's ModelCfg, which
    supplies what is unset (the dataset's own crop, digits' 1.0, wins over the model's; see
    ``eca_jax.data.transforms.resolve_eval_settings``)."""
    from eca_jax.models import get_model_cfg  # noqa: PLC0415
    return {"image_size": config.eval_image_size or config.image_size,
            "resize_size": config.eval_resize_size, "crop_pct": config.eval_crop_pct,
            "interpolation": config.eval_interpolation, "mean": _channels(config.mean),
            "std": _channels(config.std), "model_cfg": get_model_cfg(config.model)}


def evaluate(eval_fn, variables, data, config, sharding, batch_size: int, *,
             with_input: bool = False) -> dict[str, Any]:
    """One pass over the eval split: mean loss, top-1, top-5 and the number of examples.

    The eval images are prepared as :func:`eval_input_kwargs` says. ``with_input`` adds
    ``"input"``: what the pipeline resolved (image_size, resize_size, interpolation, mean, std),
    when its iterator says (``settings``)."""
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


def _abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def variable_shapes(model_fn, image_size: int, num_classes: int) -> dict[str, Any]:
    """{"params", "batch_stats"} as ShapeDtypeStructs of ``model_fn(num_classes)`` (no compute)."""
    model = model_fn(num_classes)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    v = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, built once by :func:`_setup`."""
    config: ml_collections.ConfigDict
    workdir: str
    data: Any
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    ckpt_every: int
    micro_batch: int
    eval_batch: int
    mesh: Any
    model: Any
    tx: Any
    schedule: Any
    init_fn: Any
    abstract: Any
    shardings: Any


def _setup(config: ml_collections.ConfigDict, workdir: str, data: Any) -> _Run:
    """Dataset info, durations, mesh (with batch-size checks), model, optimizer, shardings."""
    info = data.dataset_info(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir)
    num_classes = config.num_classes or info.num_classes
    spe = max(1, info.num_train // config.batch_size)
    total_steps = to_steps(config, "total", spe)
    accum = config.grad_accum_steps
    mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp)
    micro = config.batch_size // accum
    shd.check_batch_size(micro, mesh, "batch_size" if accum == 1 else
                         f"batch_size / grad_accum_steps = {config.batch_size}/{accum}")
    eval_batch = config.eval_batch_size or config.batch_size
    shd.check_batch_size(eval_batch, mesh, "eval_batch_size")
    model = build_model(config, num_classes)
    tx, schedule = make_optimizer(config, spe, total_steps)
    init_fn = make_init_fn(model, tx, (1, config.image_size, config.image_size, 3))
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
    return _Run(config, workdir, data, spe, total_steps,
                to_steps(config, "eval_every", spe, default=spe),
                to_steps(config, "checkpoint_every", spe, default=spe), micro, eval_batch, mesh,
                model, tx, schedule, init_fn, abstract,
                shd.tree_shardings(abstract, mesh, config.fsdp_min_size))


def _restore_or_init(run: _Run, ckpt: ckpt_lib.Checkpointer) -> tuple[TrainState, int, Any]:
    """(state, start_step, data_state): the latest checkpoint, else a fresh sharded state."""
    config = run.config
    step = ckpt.latest_step()
    if step is not None:
        state, data_state = ckpt.restore(step, _abstract_with_shardings(run.abstract, run.shardings))
        _log(f"Resumed from {ckpt.directory}/{step} on mesh {dict(run.mesh.shape)}.")
        return state, step, data_state
    state = init_state(run.init_fn, jax.random.PRNGKey(config.seed), run.shardings)
    if config.init_from:
        state = init_lib.apply(
            state, config.init_from, model_name=config.model, num_classes=run.model.num_classes,
            reset_head=config.init_from_reset_head, log=_log,
            make_shapes=lambda n: variable_shapes(functools.partial(build_model, config),
                                                   config.image_size, n))
    return state, 0, None


def _train_loop(run: _Run, ckpt: ckpt_lib.Checkpointer, state: TrainState, start_step: int,
                data_state: Any, t_start: float) -> dict[str, Any]:
    """Train from start_step to total_steps: log, eval, checkpoint, stop on SIGTERM."""
    config, data, is_main = run.config, run.data, jax.process_index() == 0
    batch_sh, repl = shd.batch_sharding(run.mesh), shd.replicated(run.mesh)
    train_it = data.make_train_iterator(
        config.dataset, global_batch_size=run.micro_batch, image_size=config.image_size,
        seed=config.seed, sharding=batch_sh, data_dir=config.data_dir,
        manual_dir=config.manual_dir, augment=config.augment, state=data_state,
        **normalization(config))
    train_fn = jax.jit(
        make_train_step(run.model.apply, run.tx, config.label_smoothing, config.bn_groups),
        in_shardings=(run.shardings, batch_sh), out_shardings=(run.shardings, repl),
        donate_argnums=0)
    var_sh = {"params": run.shardings.params, "batch_stats": run.shardings.batch_stats}
    eval_fn = jax.jit(make_eval_step(run.model.apply), in_shardings=(var_sh, batch_sh),
                      out_shardings=repl)
    writer = reporting.MetricsWriter(run.workdir, enabled=is_main,
                                     resume_step=start_step if start_step else None)
    progress = reporting.Progress(run.total_steps, start_step, config.progress, enabled=is_main)
    _log(f"Training {config.model} on {config.dataset}: {run.total_steps} steps "
         f"({run.steps_per_epoch}/epoch, batch {config.batch_size}) on {jax.device_count()} "
         f"devices, mesh {dict(run.mesh.shape)}; workdir {run.workdir}")
    step, total, spe = start_step, run.total_steps, run.steps_per_epoch
    sums, n_sums, t_log, s_log = None, 0, time.perf_counter(), start_step
    result: dict[str, Any] = {"preempted": False}
    eval_metrics: dict[str, Any] = {}
    try:
        with PreemptionGuard(sync_every=config.log_every_steps) as guard:
            while step < total:
                for _ in range(config.grad_accum_steps):
                    state, metrics = train_fn(state, next(train_it))
                    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
                    n_sums += 1
                step += 1
                line = None
                if step % config.log_every_steps == 0 or step == total:
                    m = {k: float(v) / n_sums for k, v in jax.device_get(sums).items()}
                    now = time.perf_counter()
                    line = {"loss": m["loss"], "acc": m["accuracy"],
                            "lr": float(run.schedule(max(0, step - 1))),
                            "img/s": (step - s_log) * config.batch_size / max(1e-9, now - t_log)}
                    writer.write(step, {"epoch": step / spe, "train_loss": m["loss"],
                                        "train_accuracy": m["accuracy"], "learning_rate": line["lr"],
                                        "images_per_sec": line["img/s"], "elapsed_s": now - t_start})
                    sums, n_sums, t_log, s_log = None, 0, now, step
                    result["train_loss"] = m["loss"]
                progress.update(step, line)
                eval_now = step % run.eval_every == 0 or step == total
                t_pause = time.perf_counter()  # eval and checkpoint time is left out of images/s
                if eval_now:
                    eval_metrics = evaluate(eval_fn, state.variables, data, config, batch_sh,
                                            run.eval_batch)
                    writer.write(step, {"epoch": step / spe, "eval_loss": eval_metrics["loss"],
                                        "eval_top1": eval_metrics["top1"],
                                        "eval_top5": eval_metrics["top5"],
                                        "elapsed_s": time.perf_counter() - t_start})
                    progress.message(f"eval @ step {step}: top1 {eval_metrics['top1']:.4f} top5 "
                                     f"{eval_metrics['top5']:.4f} loss {eval_metrics['loss']:.4f} "
                                     f"({eval_metrics['num_examples']} examples)")
                saved = step % run.ckpt_every == 0 or step == total
                if saved:
                    ckpt.save(step, state, train_it.get_state(), eval_metrics if eval_now else None)
                t_log += time.perf_counter() - t_pause
                if step < total and guard.should_stop(step):
                    if not saved:
                        ckpt.save(step, state, train_it.get_state())
                    ckpt.wait()
                    progress.message(f"SIGTERM: saved step {step} in {ckpt.directory}; rerun the same "
                                     "command to resume.")
                    result["preempted"] = True
                    break
        if not eval_metrics and not result["preempted"]:  # resumed at the end: evaluate anyway
            eval_metrics = evaluate(eval_fn, state.variables, data, config, batch_sh, run.eval_batch)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
    result.update(step=step, **{f"eval_{k}": v for k, v in eval_metrics.items()
                                if k != "num_examples"},
                  num_examples=eval_metrics.get("num_examples"))
    return result


def _with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose user paths (init_from, data_dir, manual_dir) are absolute, so
    they mean the same from any directory (the config is stored with every checkpoint)."""
    config = config.copy_and_resolve_references()
    for key in ("init_from", "data_dir", "manual_dir"):
        if config.get(key):
            config[key] = ckpt_lib.absolute_path(config[key])
    return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data_module: Any = None) -> dict[str, Any]:
    """Trains (or resumes) in ``workdir``; returns the final metrics.

    Returns a dict with step, train_loss, eval_{loss,top1,top5}, num_examples, wall_s,
    preempted (True when stopped by SIGTERM after saving), plot (the PNG's path). Raises
    CheckpointMismatchError (workdir / init_from of another model), CheckpointSaveError (a
    save failed; earlier checkpoints stay usable), WorkdirInUseError (another live trainer uses
    ``workdir``), ValueError/KeyError (bad config).
    ``data_module``: anything with the ``eca_jax.data`` API (default: eca_jax.data).
    """
    t_start = time.perf_counter()
    validate_config(config)
    if data_module is None:
        from eca_jax import data as data_module  # noqa: PLC0415
    workdir = ckpt_lib.absolute_path(workdir)
    config = _with_absolute_paths(config)
    os.makedirs(workdir, exist_ok=True)
    with ckpt_lib.workdir_lock(workdir):  # WorkdirInUseError while another trainer runs there
        run = _setup(config, workdir, data_module)
        ckpt = ckpt_lib.Checkpointer(workdir, signature(config, run.model.num_classes),
                                     keep=config.keep_checkpoints, keep_best=config.keep_best,
                                     async_save=config.async_checkpointing)
        try:
            state, start_step, data_state = _restore_or_init(run, ckpt)
            result = _train_loop(run, ckpt, state, start_step, data_state, t_start)
        finally:
            ckpt.close_quietly()
    result["wall_s"] = time.perf_counter() - t_start
    if jax.process_index() == 0 and not result["preempted"]:
        result["plot"] = reporting.plot_curves(
            os.path.join(workdir, reporting.CSV_NAME), os.path.join(workdir, reporting.PNG_NAME),
            title=f"{config.model} on {config.dataset}")
        _log(f"Done: step {result['step']}, held-out top-1 {result.get('eval_top1', 0):.4f}, "
             f"{result['wall_s']:.0f} s. Curves: {result['plot']}")
    return result
