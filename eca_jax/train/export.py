"""The trainer's jitted train and eval steps, exported with ``jax.export`` for TPU, GPU and CPU.

Lowering for a platform needs no hardware of it: from a CPU host (with enough CPU devices for
the mesh, e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=8``)

    from eca_jax.train.config import make_config
    from eca_jax.train.export import export_steps
    config = make_config(model="eca_resnet50", dataset="imagenet2012", image_size=224,
                         batch_size=64, mesh=dict(data=4, fsdp=2), dtype="bfloat16")
    exported = export_steps(config, platforms=("tpu", "cuda"))  # {"train": Exported, "eval": ...}
    text = exported["train"].mlir_module()   # StableHLO; exported["eval"].serialize() for a blob
    # (serializing the train step needs optax's state types registered with jax.export first)

shows before a pod is booked that the steps lower for its platform (shapes, shardings, dtypes,
collectives), and gives the StableHLO to inspect. The steps are those the loop runs
(:func:`eca_jax.train.loop.jitted_steps`): uint8 ``(B, H, W, 3)`` images normalised inside the step, the state
sharded over the ("data", "fsdp") mesh, donated. Backend-specific kernels follow the *target*
platform (:func:`eca_jax.kernels.on_cpu`): a ``tpu`` export holds XLA's convolutions and pooling,
a ``cpu`` one the CPU rewrites; a multi-platform export holds both, and the platform that loads
it picks its own before compiling. An export is specialised to the config's shapes and to the
mesh's device count (8 devices for data=4 x fsdp=2): call it on a mesh of that size.
"""

from __future__ import annotations

import re
import types
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from eca_jax.train import sharding

PLATFORMS = ("cpu", "tpu", "cuda")


class _SizesOnly:
    """Stands in for ``eca_jax.data`` in :func:`eca_jax.train.loop.make_plan`: the dataset's sizes,
    nothing read."""

    def __init__(self, num_classes: int, num_train: int):
        self.info = types.SimpleNamespace(num_classes=num_classes, num_train=num_train)

    def dataset_info(self, *_: Any, **__: Any) -> Any:
        return self.info


def plan_without_data(config: ml_collections.ConfigDict, num_train: int = 1_281_167,
                      num_classes: int | None = None, workdir: str = "<no workdir>") -> Any:
    """The trainer's own plan (:func:`eca_jax.train.loop.make_plan`: mesh, model, optimizer, state
    shardings) for ``config`` without a dataset: ``num_classes`` (default ``config.num_classes``,
    else 1000) classes, ``num_train`` training examples (ImageNet's by default; only the
    learning-rate schedule and the step counts depend on it)."""
    from eca_jax.train.config import validate_config  # noqa: PLC0415
    from eca_jax.train.loop import make_plan  # noqa: PLC0415  (the trainer's plan, not a copy)
    validate_config(config)
    return make_plan(config, workdir, _SizesOnly(num_classes or config.num_classes or 1000, num_train))


def abstract_inputs(plan: Any) -> dict[str, tuple[Any, Any]]:
    """``{"train": (state, batch), "eval": (variables, batch)}`` as sharded ShapeDtypeStructs.

    Batches: image uint8 (B, S, S, 3), label int32 (B,), eval also mask float32 (B,); B is the
    micro batch (train) or the eval batch, S ``config.image_size`` (eval: ``eval_image_size`` if set).
    """
    config, batch_sh = plan.config, sharding.batch_sharding(plan.mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         plan.abstract, plan.shardings)

    def batch(size: int, image_size: int, mask: bool) -> dict[str, jax.ShapeDtypeStruct]:
        out = {"image": jax.ShapeDtypeStruct((size, image_size, image_size, 3), jnp.uint8, sharding=batch_sh),
               "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batch_sh)}
        if mask:
            out["mask"] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=batch_sh)
        return out

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_size = config.eval_image_size or config.image_size
    return {"train": (state, batch(plan.micro_batch, config.image_size, False)),
            "eval": (variables, batch(plan.eval_batch, eval_size, True))}


def export_steps(config: ml_collections.ConfigDict, platforms: Sequence[str] = PLATFORMS,
                 steps: Sequence[str] = ("train", "eval"), num_train: int = 1_281_167
                 ) -> dict[str, jax.export.Exported]:
    """``{step: jax.export.Exported}`` of the trainer's ``steps`` lowered for ``platforms`` at once.

    Raises ValueError for an unknown platform or step (and whatever the plan raises for a bad
    config, e.g. a batch that does not split over the mesh's devices).
    """
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"export_steps: platforms must be among {PLATFORMS}, got {tuple(platforms)}")
    unknown = [s for s in steps if s not in ("train", "eval")]
    if unknown or not steps:
        raise ValueError(f"export_steps: steps must be among ('train', 'eval'), got {tuple(steps)}")
    from eca_jax.train.loop import jitted_steps  # noqa: PLC0415
    plan = plan_without_data(config, num_train)
    fns = dict(zip(("train", "eval"), jitted_steps(plan)))
    inputs = abstract_inputs(plan)
    return {s: jax.export.export(fns[s], platforms=tuple(platforms))(*inputs[s]) for s in steps}


# StableHLO ops that tell the CPU rewrites (eca_jax.kernels) from XLA's own convolutions/pooling.
_OPS = {"convolution": r"stablehlo\.convolution\b", "dot_general": r"stablehlo\.dot_general\b",
        "reduce_window": r"stablehlo\.reduce_window\b", "select_and_scatter": r"stablehlo\.select_and_scatter\b",
        "case": r"stablehlo\.case\b"}


def count_ops(exported: jax.export.Exported) -> dict[str, int]:
    """How many of each op in :data:`_OPS` the exported module's text holds, plus
    ``grouped_convolution``: convolutions with ``feature_group_count`` > 1 (XLA's depthwise convs)."""
    text = exported.mlir_module()
    out = {name: len(re.findall(pattern, text)) for name, pattern in _OPS.items()}
    out["grouped_convolution"] = sum(int(g) > 1 for g in re.findall(r"feature_group_count = (\d+)", text))
    return out
