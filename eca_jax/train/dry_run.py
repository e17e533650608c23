"""``python -m eca_jax.train --config ... --workdir ... --dry_run``: what a pod launch will need, without training.

Builds what the trainer builds (the same plan as ``loop.make_plan``: mesh, model, optimizer, state
shardings; then the jitted train step, lowered and compiled for the platform it runs on) but
creates no state, reads no data and trains nothing. The dataset only has to be known by name:
the sizes of ``imagenet2012`` and ``digits`` are constants here (:data:`KNOWN_DATASETS`), other
datasets must be prepared (their tfds metadata is read, no examples).

Reported (:func:`dry_run` returns a dict, :func:`format_report` the printed text):

- mesh, device and process counts; global, per-host, per-device and micro batch;
- steps per epoch and in total (as the trainer counts them: optimizer updates);
- bytes per device of the parameters, BatchNorm statistics and optimizer state under the
  config's FSDP setting (exact: the shards each device holds, from the state's shardings);
- the compiled train step's per-device memory from XLA (``compiled.memory_analysis()``):
  arguments, outputs, donated (aliased) bytes, temporaries;
- the checkpoint's size (the whole train state, uncompressed; orbax may compress it);
- input CPU cores per host at ``steps_per_second``, from the train pipeline's measured images
  per CPU-second (:data:`INPUT_IMAGES_PER_CPU_SECOND`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np



@dataclasses.dataclass(frozen=True)
class KnownSizes:
    """A dataset's split sizes and classes (the subset of ``eca_jax.data.DatasetInfo`` the plan reads)."""
    name: str
    num_classes: int
    num_train: int
    num_eval: int


# Sizes that need no prepared dataset. imagenet2012: tfds' imagenet2012 metadata (train
# 1,281,167, validation 50,000, 1,000 classes; ILSVRC2012). digits: eca_jax.data.digits'
# split of scikit-learn's 1,797 digits (1,437 train, 360 test).
KNOWN_DATASETS = {
    "imagenet2012": KnownSizes("imagenet2012", 1000, 1_281_167, 50_000),
    "digits": KnownSizes("digits", 10, 1437, 360),
}

# The ImageNet train pipeline's throughput per host core, as the trainer runs it (uint8 images,
# normalized in the step): `python experiments/bench_input.py --cores 2 --num_images 200
# --repeat 5 --steps 30 --batch_size 64` on synthetic 500x375 JPEGs (~ImageNet's mean size),
# AMD EPYC, 2 cores, nothing else running, 2026-11-30 (see the README's input-throughput section).
INPUT_IMAGES_PER_CPU_SECOND = 300.0
INPUT_BENCH_SOURCE = "experiments/bench_input.py (uint8 pipeline, synthetic 500x375 JPEGs, AMD EPYC, 2 cores)"


def dataset_sizes(config: ml_collections.ConfigDict) -> KnownSizes:
    """The config's dataset sizes: :data:`KNOWN_DATASETS`, else the prepared dataset's tfds metadata."""
    base = config.dataset.split(":")[0].split("/")[0]
    if base in KNOWN_DATASETS:
        return KNOWN_DATASETS[base]
    from eca_jax import data  # noqa: PLC0415
    try:
        info = data.dataset_info(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--dry_run: the sizes of dataset {config.dataset!r} are not known without preparing it "
                         f"(known: {sorted(KNOWN_DATASETS)}): {e}") from None
    return KnownSizes(info.name, info.num_classes, info.num_train, info.num_eval)


def _shard_elements(shape: tuple[int, ...], index: tuple[slice, ...]) -> int:
    return math.prod(len(range(*s.indices(d))) for s, d in zip(index, shape)) if shape else 1


def bytes_per_device(abstract: Any, shardings: Any) -> dict[jax.Device, int]:
    """Bytes each device holds of a tree of ShapeDtypeStructs/arrays placed with ``shardings``
    (a matching tree of shardings): the sum of its shards' sizes, replicated leaves in full."""
    totals: dict[jax.Device, int] = {}
    for leaf, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        itemsize = np.dtype(leaf.dtype).itemsize
        for device, index in sh.devices_indices_map(tuple(leaf.shape)).items():
            totals[device] = totals.get(device, 0) + _shard_elements(tuple(leaf.shape), index) * itemsize
    return totals


def global_bytes(abstract: Any) -> int:
    """Bytes of every leaf of a tree of arrays/ShapeDtypeStructs, each counted once (unsharded)."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))


def state_memory(abstract: Any, shardings: Any) -> dict[str, int]:
    """Per-device bytes (the largest over devices) of the train state's parts, and the checkpoint size.

    ``abstract``/``shardings``: a ``TrainState`` of ShapeDtypeStructs and its shardings. Keys:
    ``params``, ``batch_stats``, ``opt_state``, ``params_and_opt_state`` (per device) and
    ``checkpoint`` (the whole state once, as saved).
    """
    out = {}
    for part in ("params", "batch_stats", "opt_state"):
        per_device = bytes_per_device(getattr(abstract, part), getattr(shardings, part))
        out[part] = max(per_device.values(), default=0)
    both = bytes_per_device((abstract.params, abstract.opt_state), (shardings.params, shardings.opt_state))
    out["params_and_opt_state"] = max(both.values(), default=0)
    out["checkpoint"] = global_bytes(abstract)
    return out


def compiled_train_step(plan: Any) -> Any:
    """The trainer's jitted train step (:func:`eca_jax.train.loop.jitted_steps`), lowered and
    compiled for this platform on abstract inputs (:func:`eca_jax.train.export.abstract_inputs`)."""
    from eca_jax.train.export import abstract_inputs  # noqa: PLC0415
    from eca_jax.train.loop import jitted_steps  # noqa: PLC0415
    train_fn, _ = jitted_steps(plan)
    return train_fn.lower(*abstract_inputs(plan)["train"]).compile()


def step_memory(compiled: Any) -> dict[str, int]:
    """XLA's per-device memory of a compiled step: arguments, outputs, aliased (donated), temporaries,
    and ``total`` = arguments + outputs - aliased + temporaries (+ generated code)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    return out


def dry_run(config: ml_collections.ConfigDict, *, steps_per_second: float = 1.0, compile: bool = True) -> dict[str, Any]:
    """Everything :func:`format_report` prints, as a dict (see the module docstring); trains nothing.

    ``compile=False`` skips lowering and compiling the train step (no ``step_memory``).
    Raises ValueError/KeyError for a bad config, a batch that does not split over the mesh, or a
    dataset whose sizes are unknown.
    """
    from eca_jax.train.export import plan_without_data  # noqa: PLC0415  (the trainer's own plan)
    if not steps_per_second > 0:
        raise ValueError(f"steps_per_second must be positive, got {steps_per_second!r}")
    sizes = dataset_sizes(config)
    plan = plan_without_data(config, sizes.num_train, sizes.num_classes, "<dry run>")
    processes = jax.process_count()
    report: dict[str, Any] = {
        "model": config.model, "dataset": sizes.name, "num_train": sizes.num_train, "num_eval": sizes.num_eval,
        "platform": jax.devices()[0].platform, "device_count": jax.device_count(), "process_count": processes,
        "mesh": dict(plan.mesh.shape), "fsdp_min_size": config.fsdp_min_size,
        "global_batch": config.batch_size, "per_host_batch": config.batch_size // processes,
        "per_device_batch": plan.micro_batch // plan.mesh.size, "micro_batch": plan.micro_batch,
        "grad_accum_steps": config.grad_accum_steps, "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps, "epochs": plan.total_steps / plan.steps_per_epoch,
        "state_bytes": state_memory(plan.abstract, plan.shardings),
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(plan.abstract.params)),
    }
    images_per_host = steps_per_second * config.batch_size / processes
    report["input"] = {"steps_per_second": steps_per_second, "images_per_second_per_host": images_per_host,
                       "images_per_cpu_second": INPUT_IMAGES_PER_CPU_SECOND,
                       "cores_per_host": images_per_host / INPUT_IMAGES_PER_CPU_SECOND, "source": INPUT_BENCH_SOURCE}
    if compile:
        t0 = time.perf_counter()
        report["step_memory"] = step_memory(compiled_train_step(plan))
        report["compile_s"] = time.perf_counter() - t0
    return report


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n}"  # not reached


def format_report(r: dict[str, Any]) -> str:
    """The dry run's printed text: one ``name: value`` line per figure."""
    b, inp = r["state_bytes"], r["input"]
    lines = [
        f"dry run: {r['model']} on {r['dataset']} ({r['num_train']:,} train / {r['num_eval']:,} eval examples); "
        "nothing trained, no data read",
        f"devices: {r['device_count']} {r['platform']} in {r['process_count']} process(es); mesh {r['mesh']}",
        f"batch: global {r['global_batch']}, per host {r['per_host_batch']}, per device {r['per_device_batch']}"
        f" (micro-batch {r['micro_batch']} x {r['grad_accum_steps']} accumulation steps)",
        f"steps: {r['steps_per_epoch']:,} per epoch, {r['total_steps']:,} in total ({r['epochs']:.2f} epochs)",
        f"parameters: {r['num_params']:,}; fsdp={r['mesh']['fsdp']} (arrays under {r['fsdp_min_size']:,} elements "
        "replicated)",
        f"per device: params {_size(b['params'])}, optimizer state {_size(b['opt_state'])}, "
        f"params+optimizer {_size(b['params_and_opt_state'])}, batch_stats {_size(b['batch_stats'])}",
    ]
    m = r.get("step_memory")
    if m:
        lines.append(
            f"compiled train step per device (XLA memory_analysis, {r['platform']}): total {_size(m['total'])} = "
            f"arguments {_size(m['argument'])} + outputs {_size(m['output'])} - donated {_size(m['alias'])} + "
            f"temporaries {_size(m['temp'])}" + (f" + code {_size(m['generated_code'])}" if m["generated_code"] else "")
            + f" (compiled in {r['compile_s']:.0f} s)")
    elif "step_memory" in r:
        lines.append(f"compiled train step: no memory analysis on {r['platform']}")
    lines += [
        f"checkpoint: {_size(b['checkpoint'])} per save (whole train state, uncompressed)",
        f"input: {inp['steps_per_second']:g} steps/s = {inp['images_per_second_per_host']:,.0f} images/s per host "
        f"-> {inp['cores_per_host']:.1f} CPU cores per host at {inp['images_per_cpu_second']:.0f} images per "
        f"CPU-second ({inp['source']})",
    ]
    return "\n".join(lines)
