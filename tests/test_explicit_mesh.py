"""JAX's explicit sharding mode: eca_jax trains under Explicit mesh axes with the numbers of Auto ones.

``jax.make_mesh(shape, axes)`` makes Explicit axes by default (jax >= 0.7), and JAX's sharding
guide teaches ``jax.set_mesh(mesh)`` with a batch sharded over ``data``. Under Explicit axes every
array's type carries its sharding, and an op whose result sharding is ambiguous (the 1x1 conv's
weight-gradient dot contracting the sharded batch, a reshape merging a sharded axis, flax's
Dropout mask) fails to trace. These tests run the kernels, a user's own train step and the
trainer's steps on 8 CPU devices, ("data", "fsdp") = (4, 2), under Explicit and Auto axes and
without a mesh, and compare values, gradients and updated parameters.

Tolerance: relative error (norm of the difference / norm of the reference) 1e-5 in float32:
the sharded programs sum the same terms in another order (per-device partial sums, then an
all-reduce); observed differences are ~1e-7.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from eca_jax.kernels import ImplOptions, conv_general_dilated
from eca_jax.kernels.sharding import explicit_sharding, gathered
from eca_jax.models import create_model
from eca_jax.models.layers import Dropout, max_pool_3x3_s2
from eca_jax.nn.fused import batch_norm_act
from eca_jax.train import sharding
from eca_jax.train.optim import make_optimizer
from eca_jax.train.state import init_state, make_init_fn
from eca_jax.train.step import make_train_step
from eca_jax.evaluation import make_eval_step
from eca_jax.train.loop import build_model
from train_helpers import _examples, tiny_config

TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = jax.device_get(a), jax.device_get(b)
    diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    norm = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))
    return (diff / max(norm, 1e-30)) ** 0.5


def mesh_of(axis_type: AxisType, shape=(4, 2)) -> jax.sharding.Mesh:
    return jax.make_mesh(shape, ("data", "fsdp"), axis_types=(axis_type,) * 2)


# ----------------------------------------------------------------------------- kernels

def _nhwc(x_shape, k_shape):
    return jax.lax.conv_dimension_numbers(x_shape, k_shape, ("NHWC", "HWIO", "NHWC"))


def _kernels_loss(weights, x, key):
    """Every kernel with a hand-written backward, in one chain: depthwise 3x3 (shifted) -> max pool
    (shifted) -> strided 1x1 conv (dot) -> 3x3 conv on a 2x2 map (im2col) -> fused BatchNorm with
    ECA gate, residual and ReLU -> Dropout. (8, 8, 8, 8) -> scalar."""
    conv = functools.partial(conv_general_dilated, **ImplOptions().conv_kwargs())
    y = conv(x, weights["dw"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=_nhwc(x.shape, weights["dw"].shape),
             feature_group_count=x.shape[-1])
    y = max_pool_3x3_s2(y)                                                                    # (8, 4, 4, 8)
    y = conv(y, weights["pw"], (2, 2), ((0, 0), (0, 0)), dimension_numbers=_nhwc(y.shape, weights["pw"].shape))
    z = conv(y, weights["k3"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=_nhwc(y.shape, weights["k3"].shape))
    out, mean, var = batch_norm_act(z, weights["scale"], weights["bias"], y, weights["eca"], "relu")
    out = Dropout(0.25, deterministic=False).apply({}, out, rngs={"dropout": key})
    target = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return jnp.sum(out * target) + jnp.sum(mean * var)


def _kernel_inputs():
    keys = jax.random.split(jax.random.PRNGKey(0), 7)
    weights = {"dw": jax.random.normal(keys[0], (3, 3, 1, 8)), "pw": jax.random.normal(keys[1], (1, 1, 8, 16)),
               "k3": jax.random.normal(keys[2], (3, 3, 16, 16)) * 0.3,
               "scale": 1 + 0.1 * jax.random.normal(keys[3], (16,)), "bias": 0.1 * jax.random.normal(keys[4], (16,)),
               "eca": jax.random.normal(keys[5], (3,))}
    return weights, jax.random.normal(keys[6], (8, 8, 8, 8)), jax.random.PRNGKey(7)


def _run_kernels(mesh, batch_spec):
    weights, x, key = _kernel_inputs()
    fn = jax.jit(jax.value_and_grad(_kernels_loss, argnums=(0, 1)))
    if mesh is None:
        return fn(weights, x, key)
    with jax.set_mesh(mesh):
        return fn(jax.device_put(weights, P()), jax.device_put(x, P(batch_spec)), key)


def test_kernels_values_and_gradients_under_explicit_axes():
    """The kernels' forward and hand-written backward under Explicit axes (batch over "data" as in
    JAX's guide, and over both axes as in the trainer) equal the unsharded ones."""
    ref_loss, ref_grads = _run_kernels(None, None)
    assert float(jnp.abs(ref_loss)) > 1
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(ref_grads))   # every weight and x
    # 8 s on 2 cores (three compiles; 30-70 s when shared with other jobs); Auto axes: the slow tests.
    for axis_type, batch_spec in ((AxisType.Explicit, "data"), (AxisType.Explicit, ("data", "fsdp"))):
        loss, grads = _run_kernels(mesh_of(axis_type), batch_spec)
        assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss)), (axis_type, batch_spec)
        assert rel_err(grads, ref_grads) < TOL, (axis_type, batch_spec)


def test_explicit_sharding_helpers():
    mesh = mesh_of(AxisType.Explicit)
    x = jax.device_put(jnp.arange(16.0).reshape(8, 2), NamedSharding(mesh, P("data", "fsdp")))
    assert explicit_sharding(x).spec == P("data", "fsdp")
    assert explicit_sharding(jnp.ones(3)) is None                                       # no mesh
    assert explicit_sharding(jax.device_put(x, NamedSharding(mesh_of(AxisType.Auto), P("data")))) is None
    whole = jax.jit(gathered)({"w": x, "n": 3.0})
    assert whole["w"].sharding.is_fully_replicated and np.array_equal(np.asarray(whole["w"]), np.asarray(x))


# ----------------------------------------------------------------------------- the trainer's steps

def _trainer_steps(axis_type: AxisType, steps: int = 2, bn_groups: int = 1):
    """(variables, metrics, eval sums) after ``steps`` trainer steps of a tiny ECA-ResNet on a (4, 2)
    mesh of ``axis_type`` with FSDP-sharded weights (fsdp_min_size=64), BatchNorm statistics over
    ``bn_groups`` groups of the batch."""
    config = tiny_config(model_kwargs=dict(widths=(8, 8, 16), stem_width=8))
    model = build_model(config, 4)
    tx, _ = make_optimizer(config, steps_per_epoch=16, total_steps=steps)
    init_fn = make_init_fn(model, tx, (1, 8, 8, 3))
    mesh = sharding.make_mesh(4, 2, axis_type=axis_type)
    shardings = sharding.tree_shardings(jax.eval_shape(init_fn, jax.random.PRNGKey(0)), mesh, 64)
    assert any("fsdp" in tuple(s.spec) for s in jax.tree.leaves(shardings.params))
    state = init_state(init_fn, jax.random.PRNGKey(0), shardings)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    train = jax.jit(make_train_step(model.apply, tx, 0.1, bn_groups), in_shardings=(shardings, batch_sh),
                    out_shardings=(shardings, repl))
    var_sh = {"params": shardings.params, "batch_stats": shardings.batch_stats}
    evaluate = jax.jit(make_eval_step(model.apply), in_shardings=(var_sh, batch_sh), out_shardings=repl)
    metrics = []
    for i in range(steps):
        images, labels = _examples(np.arange(16 * i, 16 * (i + 1)), 8, 1)
        state, m = train(state, {"image": jax.device_put(images, batch_sh), "label": jax.device_put(labels, batch_sh)})
        metrics.append(m)
    images, labels = _examples(np.arange(100, 116), 8, 1)
    mask = (np.arange(16) < 13).astype(np.float32)
    sums = evaluate(state.variables, {k: jax.device_put(v, batch_sh) for k, v in
                                      (("image", images), ("label", labels), ("mask", mask))})
    fsdp_leaf = next(p for p, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params))
                     if "fsdp" in tuple(s.spec))
    assert fsdp_leaf.addressable_shards[0].data.size * 2 == fsdp_leaf.size   # still sharded after the steps
    return jax.device_get(state.variables), jax.device_get(metrics), jax.device_get(sums)


# 220 s measured on 2 cores under a load average of ~13 (other jobs); 6 compiles (init, train, eval x 2).
@pytest.mark.slow
@pytest.mark.parametrize("bn_groups", [1, 2])
def test_trainer_steps_equal_under_explicit_and_auto_axes(bn_groups):
    """The trainer's train step (FSDP weights gathered for the forward under Explicit axes, the
    gradient reduce-scattered back) and eval step give the Auto mesh's numbers; also with the
    release's per-group BatchNorm statistics (bn_groups=2: a vmap over groups of the sharded
    batch, which JAX's batching rules cannot type under Explicit axes; it runs with Auto axes)."""
    auto_vars, auto_metrics, auto_sums = _trainer_steps(AxisType.Auto, bn_groups=bn_groups)
    explicit_vars, explicit_metrics, explicit_sums = _trainer_steps(AxisType.Explicit, bn_groups=bn_groups)
    initial = jax.device_get(create_model("eca_resnet8_cifar", num_classes=4, widths=(8, 8, 16), stem_width=8)
                             .init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))
    assert rel_err(auto_vars["params"], initial["params"]) > 1e-3        # the steps really trained
    assert rel_err(explicit_vars, auto_vars) < TOL
    assert rel_err(explicit_metrics, auto_metrics) < TOL
    assert float(auto_sums["count"]) == 13.0 and rel_err(explicit_sums, auto_sums) < TOL


# ----------------------------------------------------------------------------- a user's own step

def _user_step(model, params, batch_stats, images, labels, key):
    """A train step as JAX's and Flax's guides write it: loss, grads, one SGD-with-momentum update."""
    tx = optax.sgd(0.1, momentum=0.9)

    def loss_fn(p):
        logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return loss, grads, optax.apply_updates(params, updates), new_stats


def _user_run(name: str, size: int, axis_type, **model_kwargs):
    model = create_model(name, num_classes=10, **model_kwargs)
    images = jax.random.normal(jax.random.PRNGKey(0), (8, size, size, 3))
    labels = jnp.arange(8) % 10
    variables = model.init(jax.random.PRNGKey(1), images, train=False)
    step = jax.jit(functools.partial(_user_step, model))
    args = (variables["params"], variables["batch_stats"], images, labels, jax.random.PRNGKey(2))
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):   # params replicated, batch over "data" (JAX's sharding guide)
        args = jax.device_put(args, (P(), P(), P("data"), P("data"), P()))
        return jax.device_get(step(*args))


# Measured on 2 cores shared with other jobs (three compiles each, now two): eca_mobilenet_v2 99 s, ecaresnet26t
# 63 s, eca_resnet50 ~150 s (98 s with two compiles).
@pytest.mark.slow
# eca_resnet50 (109 s in the CI run of 2026-11-30) left out: ecaresnet26t at 32 px has the same
# kernel paths (1x1 dots, stem max pool, im2col on the 1x1 maps of stage 4) besides ResNet-D's.
# eca_mobilenet_v2 at width_mult 0.25 (channels 4..80, the 1280-channel last conv as ever): the same
# 17 blocks, so the same kernel paths (depthwise 3x3 at strides 1 and 2, ECA gates k=1 and k=3,
# ReLU6, Dropout); 260 s at width 1.0 in the CI run of 2026-11-30, its compiles ~35% shorter at 0.25.
@pytest.mark.parametrize("name,size,model_kwargs", [("ecaresnet26t", 32, {}),
                                                    ("eca_mobilenet_v2", 32, {"width_mult": 0.25})])
def test_user_train_step_under_jax_default_explicit_mesh(name, size, model_kwargs):
    """A user's own step on ``jax.make_mesh``'s default (Explicit) mesh trains every kernel path:
    ECA-ResNet-26t (1x1 dots, deep stem, max pool, average-pool shortcut, im2col on the 1x1 maps
    of a 32 px input), ECA-MobileNetV2 (depthwise, Dropout). Loss, gradients, updated parameters
    and BatchNorm statistics equal the Auto mesh's (TOL). (Sharded against unsharded steps:
    test_train's eight devices and FSDP against one device. The unsharded run was dropped here
    for the suite's time budget; its gradients agreed only to 1e-2, since on 1x1 maps BatchNorm
    normalises over 8 values and amplifies the sharded summation order, under Explicit and Auto
    axes alike.)"""
    auto = _user_run(name, size, AxisType.Auto, **model_kwargs)
    loss, grads, params, stats = _user_run(name, size, AxisType.Explicit, **model_kwargs)
    assert jax.sharding.get_abstract_mesh().empty   # the mesh was the user's, for the step only
    assert abs(float(loss) - float(auto[0])) <= TOL * float(auto[0])
    assert rel_err(grads, auto[1]) < TOL and rel_err(params, auto[2]) < TOL and rel_err(stats, auto[3]) < TOL


# ----------------------------------------------------------------------------- the NNX twins

def _nnx_user_run(name: str, axis_type, **model_kwargs):
    """One SGD-with-momentum step of an eca_jax.nnx model as Flax's NNX guides write it
    (test_nnx.train_nnx), its state placed on a (4, 2) mesh of ``axis_type`` (replicated:
    ``eca_jax.nnx.shard_model``), the batch over "data". Returns (loss, the updated Params, the
    Params before)."""
    from flax import nnx
    import eca_jax.nnx as enx
    from test_nnx import train_nnx
    model = enx.create_model(name, rngs=nnx.Rngs(0), num_classes=10, **model_kwargs)
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    labels = jnp.arange(8) % 10
    before = jax.device_get(nnx.state(model, nnx.Param))
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
        enx.shard_model(model, mesh)
        [loss] = train_nnx(model, *jax.device_put((images, labels), P("data")), 1, mesh=mesh, model_axis=None)
        return loss, jax.device_get(nnx.state(model, nnx.Param)), before


# 26 s on 2 cores shared with a test run. eca_mobilenet_v2 at width 0.25 (106 s there) and
# ecaresnet26t passed too, bit-identical, and are left out for the suite's time budget: the NNX
# twins call the same kernels as the linen models (test_user_train_step_... above).
@pytest.mark.slow
@pytest.mark.parametrize("name,model_kwargs", [("eca_resnet8_cifar", {})])
def test_nnx_models_train_under_explicit_axes_as_under_auto(name, model_kwargs):
    """The NNX twins train under ``jax.make_mesh``'s default Explicit axes with the Auto mesh's
    numbers (measured: bit-identical)."""
    loss, params, before = _nnx_user_run(name, AxisType.Explicit, **model_kwargs)
    auto_loss, auto_params, _ = _nnx_user_run(name, AxisType.Auto, **model_kwargs)
    assert rel_err(params, before) > 1e-3                      # the step really trained
    assert abs(loss - auto_loss) <= TOL * auto_loss and rel_err(params, auto_params) < TOL
