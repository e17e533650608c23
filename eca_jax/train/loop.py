"""``train_and_evaluate(config, workdir)``: the training loop over a device mesh.

Order of start-up: config -> dataset info -> mesh -> model/optimizer -> state (restored from
the workdir's latest checkpoint, else created sharded with jit(init, out_shardings) and
optionally initialised from ``init_from``) -> data iterator (at the restored position) ->
loop (train, log, eval, checkpoint, preemption) -> final checkpoint, eval and plot.

A "step" is one optimizer update on ``batch_size`` examples; with ``grad_accum_steps = n`` it
is n jitted micro-steps on batch_size / n examples each (optax.MultiSteps). The loop's step,
``TrainState.step``, the checkpoint numbers, the logs (metrics.csv, TensorBoard, progress) and
the learning-rate schedule all count these updates. Evaluation itself (the eval step, one pass
over the eval split, the eval input settings) is :mod:`eca_jax.evaluation`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from eca_jax._paths import absolute_path
# loop.eval_input_kwargs / loop.normalization: moved to eca_jax.evaluation, re-exported for
# tests/test_input_settings.py until it imports them from there.
from eca_jax.evaluation import eval_input_kwargs  # noqa: F401
from eca_jax.evaluation import evaluate_dataset, make_eval_step, normalization
from eca_jax.train import checkpoint as checkpointing
from eca_jax.train import init_from, reporting, sharding
from eca_jax.train.config import to_steps, validate_config
from eca_jax.train.optim import make_optimizer
from eca_jax.train.ema import init_ema
from eca_jax.train.preemption import PreemptionGuard
from eca_jax.train.recipe import recipe_from_config, train_augmentation
from eca_jax.train.state import TrainState, init_state, make_init_fn
from eca_jax.train.step import make_train_step

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}



def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """``create_model(config.model, **config.model_kwargs)`` computing in ``config.dtype``
    (parameters stay float32), with the implementation switches ``config.impl``."""
    from eca_jax.kernels import ImplOptions  # noqa: PLC0415
    from eca_jax.models import create_model  # noqa: PLC0415
    return create_model(config.model, num_classes=num_classes, dtype=DTYPES[config.dtype],
                        impl=ImplOptions.parse(config.impl), **config.model_kwargs.to_dict())


def signature(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """What identifies the model of a checkpoint, plus the config (JSON) for evaluate."""
    return {"model": config.model, "num_classes": int(num_classes),
            "model_kwargs": config.model_kwargs.to_dict(), "dataset": config.dataset,
            "image_size": config.image_size, "eval_resize_size": config.eval_resize_size,
            "config": json.loads(config.to_json())}


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
class TrainingPlan:
    """What a run trains and how, built once by :func:`make_plan` before any state exists: the
    durations in optimizer steps, batch sizes, mesh, model, optimizer and state shardings."""
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


def make_plan(config: ml_collections.ConfigDict, workdir: str, data: Any) -> TrainingPlan:
    """Dataset info, durations, mesh (with batch-size checks), model, optimizer, shardings.

    ``data``: ``eca_jax.data``, or anything with its ``dataset_info`` (the dry run and the export
    pass dataset sizes only, :func:`eca_jax.train.export.plan_without_data`)."""
    info = data.dataset_info(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir)
    num_classes = config.num_classes or info.num_classes
    steps_per_epoch = max(1, info.num_train // config.batch_size)
    total_steps = to_steps(config, "total", steps_per_epoch)
    accum = config.grad_accum_steps
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    micro = config.batch_size // accum
    sharding.check_batch_size(micro, mesh, "batch_size" if accum == 1 else
                              f"batch_size / grad_accum_steps = {config.batch_size}/{accum}")
    eval_batch = config.eval_batch_size or config.batch_size
    sharding.check_batch_size(eval_batch, mesh, "eval_batch_size")
    model = build_model(config, num_classes)
    tx, schedule = make_optimizer(config, steps_per_epoch, total_steps)
    init_fn = make_init_fn(model, tx, (1, config.image_size, config.image_size, 3),
                           ema=config.ema_decay is not None)
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(config.seed))
    return TrainingPlan(
        config, workdir, data, steps_per_epoch, total_steps,
        eval_every=to_steps(config, "eval_every", steps_per_epoch, default=steps_per_epoch),
        ckpt_every=to_steps(config, "checkpoint_every", steps_per_epoch, default=steps_per_epoch),
        micro_batch=micro, eval_batch=eval_batch, mesh=mesh, model=model, tx=tx,
        schedule=schedule, init_fn=init_fn, abstract=abstract,
        shardings=sharding.tree_shardings(abstract, mesh, config.fsdp_min_size))


def _restore_or_init(plan: TrainingPlan, checkpointer: checkpointing.Checkpointer
                     ) -> tuple[TrainState, int, Any]:
    """(state, start_step, data_state): the latest checkpoint, else a fresh sharded state."""
    config = plan.config
    step = checkpointer.latest_step()
    if step is not None:
        state, data_state = checkpointer.restore(
            step, _abstract_with_shardings(plan.abstract, plan.shardings))
        if int(jax.device_get(state.step)) != step:  # saved when it counted micro-steps
            state = state.replace(step=jax.device_put(np.asarray(step, np.int32), plan.shardings.step))
        _log(f"Resumed from {checkpointer.directory}/{step} on mesh {dict(plan.mesh.shape)}.")
        return state, step, data_state
    state = init_state(plan.init_fn, jax.random.PRNGKey(config.seed), plan.shardings)
    if config.init_from:
        state = init_from.apply(
            state, config.init_from, model_name=config.model, num_classes=plan.model.num_classes,
            reset_head=config.init_from_reset_head, log=_log,
            make_shapes=lambda n: variable_shapes(functools.partial(build_model, config),
                                                   config.image_size, n))
        if state.ema is not None:  # the average starts from the loaded weights
            state = state.replace(ema=init_ema(state.variables))
    return state, 0, None


@dataclasses.dataclass
class _Loop:
    """What the loop's helpers share: the plan, the compiled steps, the train stream and where
    metrics go, plus the train metrics summed since the last log line."""
    plan: TrainingPlan
    checkpointer: checkpointing.Checkpointer
    train_fn: Callable
    eval_fn: Callable
    batch_sharding: Any
    train_it: Any
    writer: reporting.MetricsWriter
    progress: reporting.Progress
    t_start: float
    t_log: float  # wall clock of the last log line, moved on by eval and checkpoint time
    step_log: int  # step of the last log line
    sums: Any = None  # train metrics summed over the micro-steps since the last log line
    num_sums: int = 0


def jitted_steps(plan: TrainingPlan) -> tuple[Callable, Callable]:
    """``(train_fn, eval_fn)``, the steps the loop runs (the export and the dry run lower the same):
    train (state, batch) -> (state, metrics), the state donated; eval (variables, batch) -> sums.
    uint8 images are normalised inside the step with the config's (else the model's) mean and std."""
    from eca_jax.data.on_device import normalize_images, with_input_normalization  # noqa: PLC0415
    config = plan.config
    batch_sharding, repl = sharding.batch_sharding(plan.mesh), sharding.replicated(plan.mesh)
    mean_std = normalization(config)
    apply = with_input_normalization(plan.model.apply, **mean_std)
    normalize = functools.partial(normalize_images, **mean_std)
    recipe = recipe_from_config(config, plan.model.num_classes)
    train_fn = jax.jit(
        make_train_step(apply, plan.tx, config.label_smoothing, config.bn_groups, recipe, normalize),
        in_shardings=(plan.shardings, batch_sharding), out_shardings=(plan.shardings, repl),
        donate_argnums=0)
    var_sh = {"params": plan.shardings.params, "batch_stats": plan.shardings.batch_stats}
    eval_fn = jax.jit(make_eval_step(apply), in_shardings=(var_sh, batch_sharding), out_shardings=repl)
    return train_fn, eval_fn


def _start_loop(plan: TrainingPlan, checkpointer: checkpointing.Checkpointer, start_step: int,
                data_state: Any, t_start: float) -> _Loop:
    """The train stream (at ``data_state``), the jitted train and eval steps, the writers."""
    config, is_main = plan.config, jax.process_index() == 0
    batch_sharding = sharding.batch_sharding(plan.mesh)
    train_it = plan.data.make_train_iterator(
        config.dataset, global_batch_size=plan.micro_batch, image_size=config.image_size,
        seed=config.seed, sharding=batch_sharding, data_dir=config.data_dir,
        manual_dir=config.manual_dir, augment=config.augment, state=data_state,
        **normalization(config), **train_augmentation(config),
        image_format="uint8")  # normalized in the jitted steps (apply)
    train_fn, eval_fn = jitted_steps(plan)
    writer = reporting.MetricsWriter(plan.workdir, enabled=is_main,
                                     resume_step=start_step if start_step else None)
    progress = reporting.Progress(plan.total_steps, start_step, config.progress, enabled=is_main)
    return _Loop(plan, checkpointer, train_fn, eval_fn, batch_sharding, train_it, writer,
                 progress, t_start, t_log=time.perf_counter(), step_log=start_step)


def _train_update(loop: _Loop, state: TrainState) -> TrainState:
    """One optimizer update: grad_accum_steps micro-steps, their metrics added to the sums."""
    for _ in range(loop.plan.config.grad_accum_steps):
        state, metrics = loop.train_fn(state, next(loop.train_it))
        loop.sums = metrics if loop.sums is None else jax.tree.map(jnp.add, loop.sums, metrics)
        loop.num_sums += 1
    return state


def _log_train(loop: _Loop, step: int) -> dict[str, float]:
    """Writes the mean train metrics since the last log line; returns the progress line."""
    config = loop.plan.config
    m = {k: float(v) / loop.num_sums for k, v in jax.device_get(loop.sums).items()}
    now = time.perf_counter()
    line = {"loss": m["loss"], "acc": m["accuracy"],
            "lr": float(loop.plan.schedule(max(0, step - 1))),
            "img/s": (step - loop.step_log) * config.batch_size / max(1e-9, now - loop.t_log)}
    loop.writer.write(step, {"epoch": step / loop.plan.steps_per_epoch, "train_loss": m["loss"],
                             "train_accuracy": m["accuracy"], "learning_rate": line["lr"],
                             "images_per_sec": line["img/s"], "elapsed_s": now - loop.t_start})
    loop.sums, loop.num_sums, loop.t_log, loop.step_log = None, 0, now, step
    return line


def _evaluate(loop: _Loop, state: TrainState, step: int) -> dict[str, Any]:
    """One pass over the eval split (twice with an EMA: the raw weights and their average),
    written to the metrics and the progress display. Returns the raw weights' metrics plus
    ``ema_loss``/``ema_top1``/``ema_top5`` with an EMA."""
    plan = loop.plan
    metrics = evaluate_dataset(loop.eval_fn, state.variables, plan.data, plan.config,
                               loop.batch_sharding, plan.eval_batch)
    line = (f"eval @ step {step}: top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f} "
            f"loss {metrics['loss']:.4f} ({metrics['num_examples']} examples)")
    if state.ema is not None:
        ema = evaluate_dataset(loop.eval_fn, state.ema, plan.data, plan.config,
                               loop.batch_sharding, plan.eval_batch)
        metrics.update({f"ema_{k}": ema[k] for k in ("loss", "top1", "top5")})
        line += f"; EMA top1 {ema['top1']:.4f} top5 {ema['top5']:.4f} loss {ema['loss']:.4f}"
    loop.writer.write(step, {"epoch": step / plan.steps_per_epoch,
                             **{f"eval_{k}": v for k, v in metrics.items() if k != "num_examples"},
                             "elapsed_s": time.perf_counter() - loop.t_start})
    loop.progress.message(line)
    return metrics


def _eval_and_checkpoint(loop: _Loop, state: TrainState, step: int) -> tuple[dict | None, bool]:
    """Evaluates and saves when ``step`` is due (every eval_every / ckpt_every steps, and the
    last step); returns (eval metrics or None, saved). Their time is left out of images/s."""
    plan = loop.plan
    t_pause = time.perf_counter()
    last = step == plan.total_steps
    metrics = _evaluate(loop, state, step) if step % plan.eval_every == 0 or last else None
    saved = step % plan.ckpt_every == 0 or last
    if saved:
        loop.checkpointer.save(step, state, loop.train_it.get_state(), metrics)
    loop.t_log += time.perf_counter() - t_pause
    return metrics, saved


def _train_loop(plan: TrainingPlan, checkpointer: checkpointing.Checkpointer, state: TrainState,
                start_step: int, data_state: Any, t_start: float) -> dict[str, Any]:
    """Train from start_step to total_steps: log, eval, checkpoint, stop on SIGTERM."""
    config = plan.config
    loop = _start_loop(plan, checkpointer, start_step, data_state, t_start)
    _log(f"Training {config.model} on {config.dataset}: {plan.total_steps} steps "
         f"({plan.steps_per_epoch}/epoch, batch {config.batch_size}) on {jax.device_count()} "
         f"devices, mesh {dict(plan.mesh.shape)}; workdir {plan.workdir}")
    step = start_step
    result: dict[str, Any] = {"preempted": False}
    eval_metrics: dict[str, Any] = {}
    try:
        with PreemptionGuard(sync_every=config.log_every_steps) as guard:
            if step < plan.total_steps and guard.stop_now():   # SIGTERM while starting up
                loop.progress.message(f"SIGTERM before step {step + 1}: stopped before training; "
                                      "nothing new to save. Rerun the same command to resume.")
                result["preempted"] = True
            while step < plan.total_steps and not result["preempted"]:
                state = _train_update(loop, state)
                step += 1
                line = None
                if step % config.log_every_steps == 0 or step == plan.total_steps:
                    line = _log_train(loop, step)
                    result["train_loss"] = line["loss"]
                loop.progress.update(step, line)
                evaluated, saved = _eval_and_checkpoint(loop, state, step)
                eval_metrics = evaluated or eval_metrics
                if step < plan.total_steps and guard.should_stop(step):
                    if not saved:
                        checkpointer.save(step, state, loop.train_it.get_state())
                    checkpointer.wait()
                    loop.progress.message(f"SIGTERM: saved step {step} in {checkpointer.directory}; "
                                          "rerun the same command to resume.")
                    result["preempted"] = True
                    break
        if not eval_metrics and not result["preempted"]:  # resumed at the end: evaluate anyway
            eval_metrics = evaluate_dataset(loop.eval_fn, state.variables, plan.data, config,
                                            loop.batch_sharding, plan.eval_batch)
        checkpointer.wait()
    finally:
        loop.progress.close()
        loop.writer.close()
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
            config[key] = absolute_path(config[key])
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
    workdir = absolute_path(workdir)
    config = _with_absolute_paths(config)
    os.makedirs(workdir, exist_ok=True)
    with checkpointing.workdir_lock(workdir):  # WorkdirInUseError while another trainer runs there
        plan = make_plan(config, workdir, data_module)
        checkpointer = checkpointing.Checkpointer(
            workdir, signature(config, plan.model.num_classes), keep=config.keep_checkpoints,
            keep_best=config.keep_best, async_save=config.async_checkpointing)
        try:
            state, start_step, data_state = _restore_or_init(plan, checkpointer)
            result = _train_loop(plan, checkpointer, state, start_step, data_state, t_start)
        finally:
            checkpointer.close_quietly()
    result["wall_s"] = time.perf_counter() - t_start
    if jax.process_index() == 0 and not result["preempted"]:
        result["plot"] = reporting.plot_curves(
            os.path.join(workdir, reporting.CSV_NAME), os.path.join(workdir, reporting.PNG_NAME),
            title=f"{config.model} on {config.dataset}")
        _log(f"Done: step {result['step']}, held-out top-1 {result.get('eval_top1', 0):.4f}, "
             f"{result['wall_s']:.0f} s. Curves: {result['plot']}")
    return result
