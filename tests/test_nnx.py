"""eca_jax.nnx (native flax.nnx layers and models) against their linen twins in eca_jax.nn / eca_jax.models.

Layers: values and gradients (inputs and parameters) equal the linen layer's on the same weights
(float32 relative error < 1e-6; bfloat16 inputs < 1e-2, bf16's resolution being 2^-8).
Models: the variables round trip is exact, the logits equal linen's in eval and train mode and the
running statistics update identically; optimizer steps equal linen + optax; a step on an 8-device
mesh (a subprocess with 8 fake CPU devices) equals the single-device step.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

import eca_jax.nn as enn
import eca_jax.nnx as ennx
from eca_jax.checkpoints.errors import ShapeMismatchError
from eca_jax.checkpoints.shapes import leaf_shapes
from eca_jax.models import create_model, list_models

ROOT = pathlib.Path(__file__).resolve().parents[1]
F32_BOUND, BF16_BOUND, MODEL_BOUND = 1e-6, 1e-2, 1e-5
LAYER_CASES = [("se", {"reduction": 16}), ("se_var1", {}), ("se_var2", {}), ("se_var3", {}),
               ("se_gc", {"groups": 4}), ("eca_ns", {"k_size": 5}), ("eca", {}), ("ceca", {"k_size": 5}),
               ("eca", {"k_size": 3, "min_size": 3})]
FAST_MODELS = ["eca_resnet8_cifar", "resnet8_cifar"]


def rel(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def max_rel(tree_a, tree_b) -> float:
    """The largest per-leaf relative error between two trees of the same structure (0 when empty)."""
    flat_a = traverse_util.flatten_dict(tree_a) if isinstance(tree_a, dict) else {(): tree_a}
    flat_b = traverse_util.flatten_dict(tree_b) if isinstance(tree_b, dict) else {(): tree_b}
    assert set(flat_a) == set(flat_b), sorted(set(flat_a) ^ set(flat_b))
    return max([rel(flat_a[k], flat_b[k]) for k in flat_b] or [0.0])


def random_x(shape, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # a per-channel offset makes the pooled gate input vary across channels
    return jnp.asarray(rng.normal(size=shape) + rng.normal(size=shape[-1]) * 2.0, dtype)


def randomize(variables, seed=0):
    """Non-trivial weights: every parameter perturbed, running means ~N(0, 0.5), variances U(0.5, 2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, v in traverse_util.flatten_dict(variables).items():
        v = np.asarray(v)
        if path[0] == "batch_stats":
            v = rng.normal(0, 0.5, v.shape) if path[-1] == "mean" else rng.uniform(0.5, 2.0, v.shape)
        else:
            v = v + rng.normal(0, 0.3 if v.ndim == 1 else 0.05, v.shape)
        out[path] = jnp.asarray(v, jnp.float32)
    return traverse_util.unflatten_dict(out)


# ------------------------------------------------------------------------------------- layers
def _layer_pair(name, kw, channels=64):
    layer = ennx.make_attention(name, channels, rngs=nnx.Rngs(0), **kw)
    ennx.load_linen_variables(layer, randomize(ennx.linen_variables(layer)))
    return layer, enn.make_attention(name, **kw)


@pytest.mark.parametrize("name,kw", LAYER_CASES)
def test_layer_variables_have_the_linen_paths_and_shapes(name, kw):
    x = random_x((2, 5, 5, 64))
    layer, linen = _layer_pair(name, kw)
    expected = leaf_shapes(jax.eval_shape(linen.init, jax.random.key(0), x))
    assert leaf_shapes(ennx.linen_variables(layer)) == expected
    if name in ("eca", "ceca"):
        assert layer.conv.kernel[...].shape == (layer.k_size, 1, 1)


@pytest.mark.parametrize("dtype,bound", [(jnp.float32, F32_BOUND), (jnp.bfloat16, BF16_BOUND)])
@pytest.mark.parametrize("name,kw", LAYER_CASES)
def test_layer_values_and_gradients_equal_linen(name, kw, dtype, bound):
    x = random_x((3, 6, 5, 64), dtype=dtype)
    w = random_x(x.shape, seed=1, dtype=dtype)
    layer, linen = _layer_pair(name, kw)
    params = ennx.linen_variables(layer).get("params", {})
    y = layer(x)
    y_ref = linen.apply({"params": params}, x)
    assert y.dtype == y_ref.dtype == dtype and rel(y, y_ref) < bound

    def loss_nnx(m, x):
        return jnp.sum((m(x) * w).astype(jnp.float32))

    def loss_linen(p, x):
        return jnp.sum((linen.apply({"params": p}, x) * w).astype(jnp.float32))
    g_layer, g_x = nnx.grad(loss_nnx, argnums=(0, 1))(layer, x)
    gp_ref, gx_ref = jax.grad(loss_linen, argnums=(0, 1))(params, x)
    assert rel(g_x, gx_ref) < bound
    assert max_rel(nnx.to_pure_dict(nnx.state(g_layer, nnx.Param)) if params else {}, gp_ref) < bound


BN_CASES = [dict(act=None), dict(act="relu", residual=True), dict(act="relu", residual=True, eca=True),
            dict(act="relu6", eca=True, padding="circular"), dict(act=None, residual=True, eca=True)]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("case", BN_CASES)
def test_batch_norm_act_equals_linen(case, train):
    z, r = random_x((4, 6, 6, 32)), random_x((4, 6, 6, 32), seed=2)
    w = random_x(z.shape, seed=3)
    bn = ennx.BatchNormAct(32, momentum=0.9, use_running_average=not train, rngs=nnx.Rngs(0))
    variables = randomize(ennx.linen_variables(bn))
    ennx.load_linen_variables(bn, variables)
    linen = enn.BatchNormAct(momentum=0.9, use_running_average=not train)
    kernel = jnp.asarray([0.3, -0.6, 0.9], jnp.float32) if case.get("eca") else None
    kw = dict(act=case["act"], eca_padding=case.get("padding", "zero"))

    def loss_nnx(m, z, r, k):
        return jnp.sum(m(z, residual=r if case.get("residual") else None, eca_kernel=k, **kw) * w)

    def loss_linen(p, z, r, k):
        out, upd = linen.apply({"params": p, "batch_stats": variables["batch_stats"]}, z,
                               residual=r if case.get("residual") else None, eca_kernel=k,
                               mutable=["batch_stats"], **kw)
        return jnp.sum(out * w), upd["batch_stats"]
    (value, stats), grads_ref = jax.value_and_grad(loss_linen, argnums=(0, 1, 2, 3), has_aux=True)(
        variables["params"], z, r, kernel)
    value_nnx, grads = nnx.value_and_grad(loss_nnx, argnums=(0, 1, 2, 3))(bn, z, r, kernel)
    assert rel(value_nnx, value) < F32_BOUND
    assert max_rel(ennx.linen_variables(bn)["batch_stats"], stats) < F32_BOUND   # updated in train mode only
    assert max_rel(nnx.to_pure_dict(nnx.state(grads[0], nnx.Param)), grads_ref[0]) < F32_BOUND
    for g, g_ref in zip(grads[1:], grads_ref[1:]):
        assert (g is None) == (g_ref is None) and (g is None or rel(g, g_ref) < F32_BOUND)


@pytest.mark.parametrize("name,kw", LAYER_CASES)
def test_channel_mismatch_names_both_counts(name, kw):
    layer = ennx.make_attention(name, 64, rngs=nnx.Rngs(0), **kw)
    with pytest.raises(ValueError, match=r"64 channels, called with 32"):
        layer(random_x((2, 4, 4, 32)))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="32 channels, called with 16"):
        ennx.BatchNormAct(32)(random_x((2, 3, 3, 16)))
    with pytest.raises(ValueError, match="Unknown attention 'ecaa'.*'eca'"):
        ennx.make_attention("ecaa", 64, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="make_attention\\('se_var1'\\)"):
        ennx.make_attention("se_var1", 64, rngs=nnx.Rngs(0), k_size=3)
    with pytest.raises(ValueError, match="positive odd"):
        ennx.ECA(64, 4, rngs=nnx.Rngs(0))
    assert ennx.ECA(2048, rngs=nnx.Rngs(0)).k_size == 7 and ennx.CECA(64, 3, rngs=nnx.Rngs(0)).padding == "circular"


# ------------------------------------------------------------------------------------- models
def check_model_parity(name, size=32, batch=2, **kw):
    """Round trip, eval and train logits, running statistics; returns the measured relative errors."""
    kw.setdefault("num_classes", 10)
    if "mobilenet" in name:
        kw["dropout"] = 0.0          # train-mode logits compared without dropout's randomness
    linen = create_model(name, **kw)
    model = ennx.create_model(name, rngs=nnx.Rngs(0), **kw)
    x = random_x((batch, size, size, 3))
    assert leaf_shapes(ennx.linen_variables(model)) == leaf_shapes(
        jax.eval_shape(lambda: linen.init(jax.random.key(0), x, train=False)))
    variables = randomize(ennx.linen_variables(model))
    ennx.load_linen_variables(model, variables)
    back = ennx.linen_variables(model)
    assert max_rel(back, variables) == 0.0            # exact, and the same paths (max_rel checks them)
    forward = nnx.jit(lambda m, x: m(x))
    model.eval()
    eval_err = rel(forward(model, x), jax.jit(lambda v, x: linen.apply(v, x, train=False))(variables, x))
    model.train()
    logits = forward(model, x)
    ref, updates = jax.jit(lambda v, x: linen.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    train_err = rel(logits, ref)
    stats_err = max_rel(ennx.linen_variables(model)["batch_stats"], updates["batch_stats"])
    assert max(eval_err, train_err, stats_err) < MODEL_BOUND, (eval_err, train_err, stats_err)
    assert max_rel(ennx.linen_variables(model)["params"], variables["params"]) == 0.0
    return eval_err, train_err, stats_err


@pytest.mark.parametrize("name", FAST_MODELS)
def test_fast_models_equal_linen(name):
    print(name, check_model_parity(name, batch=3))


# Numerical parity in CI for models covering every code path of the twins: basic and bottleneck
# blocks; the 7x7, 3x3 (CIFAR) and deep (tiered) stems; strided-conv and ResNet-D shortcuts; ECA
# with per-stage and adaptive (timm) k; no attention (FAST_MODELS); MobileNetV2. SE and the other
# Table-2 layers are compared one by one above. The deeper registered models
# (34/101/152/269 layers) repeat the same blocks; all 21 were measured equal (0.0) with
# ECA_JAX_NNX_ALL_MODELS=1, which takes ~30 min on 2 cores, over the suite's budget. Every model's
# paths and shapes are checked in test_every_registered_model_has_a_native_twin.
PARITY_MODELS = ["eca_resnet18", "ecaresnet26t", "eca_mobilenet_v2"]
ALL_MODELS = os.environ.get("ECA_JAX_NNX_ALL_MODELS") == "1"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in FAST_MODELS and (ALL_MODELS or n in PARITY_MODELS)])
def test_every_model_equals_linen(name):
    print(name, check_model_parity(name, size=64 if "269" in name else 32, batch=2))


@pytest.mark.slow
def test_bfloat16_model_equals_linen():
    print(check_model_parity("eca_resnet8_cifar", dtype=jnp.bfloat16))


def test_every_registered_model_has_a_native_twin():
    """Every zoo module is a linen ResNet or MobileNetV2, the two families built natively (no bridge)."""
    from eca_jax.models import MobileNetV2, ResNet
    for name in list_models():
        assert isinstance(create_model(name, num_classes=10), (ResNet, MobileNetV2)), name
    model = nnx.eval_shape(lambda: ennx.from_linen(create_model("ecaresnet26t", num_classes=10), rngs=nnx.Rngs(0)))
    assert isinstance(model, ennx.ResNet) and isinstance(getattr(model, "layer1.0").se, ennx.ECA)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_has_the_linen_paths_and_shapes(name):
    """nnx.state of every registered model's twin == the linen variables (paths and shapes), abstractly."""
    model = nnx.eval_shape(lambda: ennx.create_model(name, rngs=nnx.Rngs(0), num_classes=10))
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    linen = jax.eval_shape(lambda x: create_model(name, num_classes=10).init(jax.random.key(0), x, train=False), x)
    twin = {"params": nnx.state(model, nnx.Param).to_pure_dict(),
            "batch_stats": nnx.state(model, nnx.BatchStat).to_pure_dict()}
    assert leaf_shapes(twin) == leaf_shapes(linen)


def test_modes_switch_batch_norm_and_dropout():
    model = nnx.eval_shape(lambda: ennx.from_linen(create_model("eca_mobilenet_v2"), rngs=nnx.Rngs(0)))
    bn = getattr(getattr(model, "features.1"), "conv.2")
    assert not bn.use_running_average and not model.dropout.deterministic
    model.eval()
    assert bn.use_running_average and model.dropout.deterministic
    model.train()
    assert not bn.use_running_average and not model.dropout.deterministic


def test_loading_another_models_variables_names_the_paths():
    target = nnx.eval_shape(lambda: ennx.from_linen(create_model("resnet8_cifar", num_classes=10), rngs=nnx.Rngs(0)))
    x = jnp.zeros((1, 32, 32, 3))
    eca_vars = jax.eval_shape(lambda: create_model("eca_resnet8_cifar", num_classes=10).init(jax.random.key(0), x))
    with pytest.raises(ShapeMismatchError, match=r"3 unexpected, first 'params/layer1.0/eca/conv/kernel'"):
        ennx.load_linen_variables(target, eca_vars)
    other = jax.eval_shape(lambda: create_model("resnet8_cifar", num_classes=100).init(jax.random.key(0), x))
    with pytest.raises(ShapeMismatchError, match=r"2 mis-shaped, first 'params/fc/(bias|kernel)'"):
        ennx.load_linen_variables(target, other)
    no_stats = {"params": other["params"]}
    with pytest.raises(ValueError, match=r"missing, first 'batch_stats/"):
        ennx.load_linen_variables(target, no_stats)


# ------------------------------------------------------------------------------------- training
def train_nnx(model, x, y, steps, mesh=None, model_axis="model"):
    """``steps`` SGD-momentum steps with nnx.Optimizer + nnx.jit; returns the losses. With a
    ``mesh`` the optimizer's state is placed like the (already placed) model's."""
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    if mesh is not None:
        ennx.shard_model(optimizer, mesh, model_axis=model_axis)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss
    return [float(step(model, optimizer, x, y)) for _ in range(steps)]


def train_linen(linen, variables, x, y, steps):
    tx = optax.sgd(0.1, momentum=0.9)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(p):
            logits, upd = linen.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), stats, opt_state
    losses = []
    for _ in range(steps):
        loss, params, stats, opt_state = step(params, stats, opt_state)
        losses.append(float(loss))
    return losses, {"params": params, "batch_stats": stats}


@pytest.mark.slow      # ~25 s on 2 busy cores (two train-step compiles)
def test_optimizer_steps_equal_linen_and_optax():
    x, y = random_x((4, 32, 32, 3)), jnp.asarray([1, 7, 3, 3])
    model = ennx.create_model("eca_resnet8_cifar", rngs=nnx.Rngs(0), num_classes=10)
    variables = randomize(ennx.linen_variables(model))
    ennx.load_linen_variables(model, variables)
    losses = train_nnx(model, x, y, steps=3)
    ref_losses, ref = train_linen(create_model("eca_resnet8_cifar", num_classes=10), variables, x, y, steps=3)
    print("optimizer steps: loss rel", rel(losses, ref_losses),
          "variables rel", max_rel(ennx.linen_variables(model), ref))
    assert rel(losses, ref_losses) < MODEL_BOUND and losses[-1] < losses[0]
    assert max_rel(ennx.linen_variables(model), ref) < MODEL_BOUND


def sharded_step_worker() -> dict:
    """Run in a subprocess with 8 CPU devices: 2 steps on a (4 data x 2 model) mesh vs one device."""
    from jax.sharding import AxisType, PartitionSpec as P
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    x, y = random_x((8, 32, 32, 3)), jnp.asarray([0, 1, 2, 3, 4, 5, 6, 7])
    single = ennx.create_model("eca_resnet8_cifar", rngs=nnx.Rngs(0), num_classes=10)
    sharded = ennx.create_model("eca_resnet8_cifar", rngs=nnx.Rngs(0), num_classes=10)
    ennx.shard_model(sharded, mesh, model_axis="model")
    kernel = getattr(sharded, "layer1.0").conv1.kernel
    assert kernel[...].sharding.spec == P(None, None, None, "model"), kernel[...].sharding
    losses = train_nnx(single, x, y, steps=2)
    sharded_losses = train_nnx(sharded, jax.device_put(x, ennx.batch_sharding(mesh, "data")),
                               jax.device_put(y, ennx.batch_sharding(mesh, "data")), steps=2, mesh=mesh)
    return {"losses": losses, "sharded_losses": sharded_losses, "spec_after": str(kernel[...].sharding.spec),
            "devices": len(kernel[...].sharding.device_set),
            "params_rel": max_rel(ennx.linen_variables(sharded), ennx.linen_variables(single))}


@pytest.mark.slow      # ~60 s: a fresh interpreter with 8 devices, two train-step compiles
def test_sharded_train_step_equals_unsharded():
    script = ("import os, sys, json; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'; "
              "os.environ['JAX_PLATFORMS'] = 'cpu'; os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1'); "
              f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]; import test_nnx; "
              "print(json.dumps(test_nnx.sharded_step_worker()))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["devices"] == 8 and "model" in result["spec_after"]
    assert rel(result["sharded_losses"], result["losses"]) < MODEL_BOUND and result["params_rel"] < MODEL_BOUND
