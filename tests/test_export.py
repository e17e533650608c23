"""Lowering for TPU and GPU from a CPU host: the CPU-only kernels follow the *target* platform.

``jax.export(..., platforms=...)`` lowers for a platform without its hardware. The CPU rewrites of
:mod:`eca_jax.kernels` (depthwise convs as shifted multiply-adds, dense convs on tiny inputs as
im2col + dot, the 3x3/2 max pool as shifted maxima) are chosen with ``jax.lax.platform_dependent``
(``eca_jax.kernels.on_cpu``), so a ``tpu`` or ``cuda`` lowering holds XLA's grouped convolutions,
convolutions and ``reduce_window``/``select_and_scatter`` instead, and a ``cpu`` lowering none of them.

CI runs: the kernel chain (fast) and the trainer's train and eval steps of ECA-MobileNetV2 at
32 px, float32, on a (data=4, fsdp=2) mesh of 8 CPU devices (slow: one trace, then one export per
platform and one for all three). The full matrix (eca_resnet50, ecaresnet50d, eca_mobilenet_v2 x
float32, bfloat16 x train, eval x cpu, tpu, cuda) is ``experiments/export_check.py``.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eca_jax.kernels import ImplOptions, conv_general_dilated
from eca_jax.models.layers import max_pool_3x3_s2
from eca_jax.train import export as export_lib, loop
from eca_jax.train.config import make_config


def _chain(dw, k3, x):
    """depthwise 3x3 -> max pool 3x3/2 -> 3x3 conv on the 2x2 map; (2, 4, 4, 8) -> scalar."""
    conv = lambda a, k, groups=1: conv_general_dilated(   # noqa: E731
        a, k, (1, 1), ((1, 1), (1, 1)), feature_group_count=groups, **ImplOptions().conv_kwargs(),
        dimension_numbers=jax.lax.conv_dimension_numbers(a.shape, k.shape, ("NHWC", "HWIO", "NHWC")))
    y = max_pool_3x3_s2(conv(x, dw, x.shape[-1]))
    return jnp.sum(conv(y, k3) ** 2)


def _ops(text: str) -> dict[str, int]:
    return {"conv": len(re.findall(r"stablehlo\.convolution\b", text)),
            "grouped": sum(int(g) > 1 for g in re.findall(r"feature_group_count = (\d+)", text)),
            "pool": len(re.findall(r"stablehlo\.(?:reduce_window|select_and_scatter)\b", text))}


def test_kernel_choice_follows_the_export_platform():
    """Forward + backward of the chain: CPU lowering without XLA convolutions and pooling; TPU and
    CUDA lowerings with exactly XLA's (depthwise: forward + input-gradient grouped convs and a
    weight-gradient conv; the small-input conv: the same three; the pool: reduce_window +
    select_and_scatter); the multi-platform export runs here with the CPU's numbers."""
    args = (jnp.linspace(-1, 1, 72).reshape(3, 3, 1, 8), jnp.linspace(-1, 1, 576).reshape(3, 3, 8, 8),
            jnp.sin(jnp.arange(256.0)).reshape(2, 4, 4, 8))
    fn = jax.jit(jax.value_and_grad(_chain, argnums=(0, 1, 2)))
    counts = {p: _ops(jax.export.export(fn, platforms=(p,))(*args).mlir_module()) for p in ("cpu", "tpu", "cuda")}
    assert counts["cpu"] == {"conv": 0, "grouped": 0, "pool": 0}
    assert counts["tpu"] == counts["cuda"] == {"conv": 6, "grouped": 2, "pool": 2}
    both = jax.export.export(fn, platforms=("cpu", "tpu", "cuda"))(*args)
    assert both.platforms == ("cpu", "tpu", "cuda")
    want, got = fn(*args), both.call(*args)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_export_steps_rejects_bad_arguments():
    config = make_config(model="eca_mobilenet_v2", dataset="imagenet2012", image_size=32, batch_size=16,
                         total_epochs=1)
    with pytest.raises(ValueError, match="platforms must be among"):
        export_lib.export_steps(config, platforms=("gpu",))
    with pytest.raises(ValueError, match="steps must be among"):
        export_lib.export_steps(config, steps=("predict",))


# 176 s on 2 cores under a load average of ~13 (other jobs; ~20 s idle: experiments/export_check.py
# exports the full matrix in 101 s); the trace of the train step
# dominates (each per-platform export reuses it, ~8 s each).
@pytest.mark.slow
def test_trainer_steps_export_for_tpu_cuda_and_cpu():
    """The trainer's steps (uint8 images normalised in the step, FSDP-sharded state on data=4 x
    fsdp=2) export for each platform; the TPU/CUDA train step holds the 17 depthwise convs as XLA
    grouped convolutions (forward and input gradient: 34) and the CPU one none."""
    config = make_config(model="eca_mobilenet_v2", dataset="imagenet2012", image_size=32, batch_size=16,
                         total_epochs=1, mesh=dict(data=4, fsdp=2), fsdp_min_size=2 ** 14)
    plan = export_lib.plan_without_data(config)
    assert dict(plan.mesh.shape) == {"data": 4, "fsdp": 2}
    fns = dict(zip(("train", "eval"), loop.jitted_steps(plan)))
    inputs = export_lib.abstract_inputs(plan)
    counts = {}
    for step in ("train", "eval"):
        for platform in ("cpu", "tpu", "cuda"):
            exported = jax.export.export(fns[step], platforms=(platform,))(*inputs[step])
            assert exported.nr_devices == 8
            counts[step, platform] = export_lib.count_ops(exported)
    for step, depthwise in (("train", 34), ("eval", 17)):
        assert counts[step, "cpu"]["grouped_convolution"] == 0
        assert counts[step, "tpu"]["grouped_convolution"] == counts[step, "cuda"]["grouped_convolution"] == depthwise
        assert counts[step, "tpu"]["dot_general"] == counts[step, "cpu"]["dot_general"]   # 1x1 convs: dots everywhere
    exported = export_lib.export_steps(config, platforms=("cpu", "tpu", "cuda"), steps=("eval",))["eval"]
    assert exported.platforms == ("cpu", "tpu", "cuda") and len(exported.serialize()) > 0
