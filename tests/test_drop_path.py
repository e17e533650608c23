"""Stochastic depth (timm's ``drop_path``) in the ResNets and MobileNetV2, dropout before the ResNet classifier.

DropPath: identity at eval (bit-exact) and at rate 0 (no RNG drawn); in training each example is
either exactly 0 or exactly x / (1 - rate); the dropped fraction over many examples and the mean
over many keys match the rate and x within stated binomial bounds; the same bits under an Explicit
mesh as without one. Models: the per-block rates are timm's linear rule (read from the module
trees, linen and nnx), DropPath sits after the attention and before the shortcut add, eval output
and parameter counts do not change, train output does and depends on the dropout key; nnx agrees
with linen at eval with the rates set.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

import eca_jax.nnx as ennx
from eca_jax.kernels import ImplOptions
from eca_jax.models import create_model, summarize
from eca_jax.models.layers import DropPath, drop_path, drop_path_rates
from eca_jax.models.mobilenet_v2 import InvertedResidual
from eca_jax.models.resnet import ResidualBlock
from eca_jax.nnx.blocks import DropPath as NnxDropPath, make_drop_path
from test_models import EXACT

RATE = 0.3
SIGMAS = 5   # binomial bounds at 5 standard deviations: a false failure has probability < 1e-6


def random_x(shape, seed=0, dtype=jnp.float32):
    """Normal values shifted away from 0 (so x / (1 - rate) and 0 are told apart everywhere)."""
    x = np.random.default_rng(seed).normal(size=shape)
    return jnp.asarray(x + np.sign(x) * 0.5, dtype)


def dropped_examples(out) -> np.ndarray:
    """(B,) bool: which examples of out (B, ...) are entirely 0."""
    return np.all(np.asarray(out, np.float32).reshape(out.shape[0], -1) == 0, axis=1)


# ----------------------------------------------------------------------------- DropPath itself

def test_identity_at_eval_and_at_rate_zero():
    x = random_x((6, 4, 4, 5))
    assert DropPath(RATE).apply({}, x, deterministic=True) is x
    # rate 0 in training: x itself, and no RNG drawn (apply without rngs would fail on make_rng)
    assert DropPath(0.0).apply({}, x, deterministic=False) is x
    assert drop_path(x, 0.0, None) is x
    layer = NnxDropPath(RATE, rngs=nnx.Rngs(0))
    layer.eval()
    assert layer(x) is x
    assert make_drop_path(0.0, nnx.Rngs(0)) is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_each_example_is_zero_or_scaled_exactly(dtype):
    x = random_x((64, 3, 3, 4), dtype=dtype)
    out = DropPath(RATE).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(7)})
    assert out.dtype == dtype and out.shape == x.shape
    dropped = dropped_examples(out)
    assert 0 < dropped.sum() < len(dropped)          # both outcomes occur (64 examples at rate 0.3)
    scaled = np.asarray(x / (1 - RATE), np.float32)
    np.testing.assert_array_equal(np.asarray(out, np.float32)[~dropped], scaled[~dropped])


def test_fraction_dropped_matches_the_rate():
    n = 20_000
    x = random_x((n, 1, 1, 2))
    for out in (DropPath(RATE).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}),
                NnxDropPath(RATE, rngs=nnx.Rngs(dropout=2))(x)):
        fraction = dropped_examples(out).mean()
        bound = SIGMAS * math.sqrt(RATE * (1 - RATE) / n)   # ~0.016
        assert abs(fraction - RATE) < bound, (fraction, bound)


def test_mean_over_keys_is_x():
    keys, x = 4000, random_x((8, 2, 2, 3))
    outs = jax.vmap(lambda k: drop_path(x, RATE, k))(jax.random.split(jax.random.key(3), keys))
    mean = np.asarray(outs.mean(axis=0))
    # each example's mean is x * (kept count / keys) / (1 - rate): relative std sqrt(rate / ((1 - rate) keys))
    rel_sigma = math.sqrt(RATE / ((1 - RATE) * keys))   # ~0.010
    np.testing.assert_array_less(np.abs(mean - np.asarray(x)), SIGMAS * rel_sigma * np.abs(np.asarray(x)))


def test_rate_one_zeroes_and_bad_rates_are_named():
    x = random_x((4, 2, 2, 3))
    np.testing.assert_array_equal(drop_path(x, 1.0, jax.random.key(0)), np.zeros(x.shape))
    for bad in (-0.1, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match="drop_path_rate"):
            drop_path_rates(4, bad)
        with pytest.raises(ValueError, match="DropPath rate"):
            DropPath(bad).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(ValueError, match="num_blocks"):
        drop_path_rates(0, RATE)
    with pytest.raises(ValueError, match="ResNet drop_path_rate"):
        create_model("resnet8_cifar", drop_path_rate=2.0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="ResNet drop_rate"):
        create_model("resnet8_cifar", drop_rate=-0.5).init(jax.random.key(0), x)


def test_explicit_mesh_gives_the_same_bits_sharded_like_the_batch():
    x, key = random_x((16, 3, 3, 4)), jax.random.key(5)
    linen = jax.jit(lambda v, k: DropPath(RATE).apply({}, v, deterministic=False, rngs={"dropout": k}))
    nnx_call = nnx.jit(lambda layer, v: layer(v))
    reference, reference_linen = drop_path(x, RATE, key), linen(x, key)   # no mesh
    assert 0 < dropped_examples(reference).sum() < 16
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(x, P("data"))
        out = linen(sharded, key)
        assert jax.typeof(out).sharding.spec[0] == "data"
        np.testing.assert_array_equal(out, reference_linen)
        np.testing.assert_array_equal(jax.jit(lambda v, k: drop_path(v, RATE, k))(sharded, key), reference)
        out_nnx = nnx_call(NnxDropPath(RATE, rngs=nnx.Rngs(0)), sharded)
        assert jax.typeof(out_nnx).sharding.spec[0] == "data"
    np.testing.assert_array_equal(out_nnx, nnx_call(NnxDropPath(RATE, rngs=nnx.Rngs(0)), x))


# ----------------------------------------------------------------------------- per-block rates

def linen_block_rates(model, size=32) -> dict:
    """{block scope name: drop_path_rate} of every residual block, read while tracing a train-mode init."""
    rates = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (ResidualBlock, InvertedResidual)) and context.method_name == "__call__":
            rates[context.module.name] = context.module.drop_path_rate
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                          jnp.zeros((2, size, size, 3)), train=True))
    return rates


@pytest.mark.parametrize("name, num_blocks", [("resnet50", 16), ("ecaresnet26t", 8)])
def test_resnet_blocks_follow_the_linear_rule(name, num_blocks):
    model = create_model(name, drop_path_rate=RATE)
    rates = linen_block_rates(model)
    expected = [RATE * i / (num_blocks - 1) for i in range(num_blocks)]   # timm: dpr * i / (N - 1)
    assert len(rates) == num_blocks
    np.testing.assert_allclose(list(rates.values()), expected, rtol=1e-12, atol=0)
    assert list(rates.values()) == list(drop_path_rates(num_blocks, RATE))
    twin = nnx.eval_shape(lambda: ennx.from_linen(model, rngs=nnx.Rngs(0)))
    nnx_rates = [0.0 if getattr(twin, block).drop_path is None else getattr(twin, block).drop_path.rate
                 for block in rates]
    assert nnx_rates == list(rates.values())


def test_mobilenet_v2_follows_timms_builder_rule():
    model = create_model("mobilenet_v2", drop_path_rate=RATE)
    rates = linen_block_rates(model)
    assert list(rates.values()) == pytest.approx([RATE * i / 17 for i in range(17)], rel=1e-12, abs=0)
    twin = nnx.eval_shape(lambda: ennx.from_linen(model, rngs=nnx.Rngs(0)))
    blocks = [getattr(twin, name) for name in rates]
    assert sum(block.identity for block in blocks) == 10    # the 10 blocks with a skip: only they drop
    assert [block.drop_path.rate if block.identity else None for block in blocks] == \
        [rate if block.identity else None for block, rate in zip(blocks, rates.values())]
    assert all(block.drop_path is None for block in blocks if not block.identity)


# ----------------------------------------------------------------------------- where it sits in a block

def capture_drop_path(block, variables, x, key):
    """(block output, DropPath input, DropPath output) of one jitted train-mode call."""
    def run(variables, x, key):
        seen = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, DropPath):
                seen["in"], seen["out"] = args[0], out
            return out

        with nn.intercept_methods(record):
            out, _ = block.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        return out, seen["in"], seen["out"]
    return jax.jit(run)(variables, x, key)


def train_apply(module, variables, x, key=None):
    """A jitted train-mode call's output (the "dropout" stream from ``key`` when given)."""
    rngs = {} if key is None else {"dropout": key}
    return jax.jit(lambda v, y: module.apply(v, y, train=True, rngs=rngs, mutable=["batch_stats"])[0])(variables, x)


@pytest.mark.parametrize("fused", [True, False])
def test_residual_block_drops_after_attention_before_the_add(fused):
    impl = ImplOptions(fused_block_tail=fused)
    x = jax.nn.relu(random_x((16, 6, 6, 8)))             # identity shortcut: the block's input
    plain = ResidualBlock("basic", 8, attn="eca", attn_kwargs={"k_size": 3}, impl=impl)
    variables = jax.jit(plain.init)(jax.random.key(0), x)
    reference = train_apply(plain, variables, x)
    block = plain.clone(drop_path_rate=0.5)
    out, branch, dropped_branch = capture_drop_path(block, variables, x, jax.random.key(2))
    # the branch DropPath sees is attention(bn(conv(...))): adding x and ReLU gives the plain block
    np.testing.assert_allclose(jax.nn.relu(branch + x), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, jax.nn.relu(dropped_branch + x))
    dropped = dropped_examples(dropped_branch)
    assert 0 < dropped.sum() < len(dropped)
    np.testing.assert_array_equal(np.asarray(out)[dropped], np.asarray(jax.nn.relu(x))[dropped])


def test_mobilenet_block_drops_only_with_a_skip():
    x = random_x((16, 4, 4, 8))
    skip = InvertedResidual(8, 16, 1, expand=True, attn="eca", attn_kwargs={"k_size": 3})
    variables = jax.jit(skip.init)(jax.random.key(0), x)
    reference = train_apply(skip, variables, x)
    out, branch, dropped_branch = capture_drop_path(skip.clone(drop_path_rate=0.5), variables, x, jax.random.key(1))
    np.testing.assert_allclose(branch + x, reference, rtol=1e-5, atol=1e-5)
    dropped = dropped_examples(dropped_branch)
    assert 0 < dropped.sum() < len(dropped)
    np.testing.assert_array_equal(np.asarray(out)[dropped], np.asarray(x)[dropped])
    strided = InvertedResidual(8, 16, 2, expand=True)   # no skip: no stochastic depth (as timm)
    variables = jax.jit(strided.init)(jax.random.key(0), x)
    np.testing.assert_array_equal(train_apply(strided.clone(drop_path_rate=0.5), variables, x, jax.random.key(1)),
                                  train_apply(strided, variables, x))


# ----------------------------------------------------------------------------- whole models

@pytest.fixture(scope="module")
def small_resnet():
    """eca_resnet8_cifar (3 blocks: rates 0, RATE / 2, RATE), its variables and an 8x8 batch."""
    x = random_x((8, 8, 8, 3))
    variables = jax.jit(create_model("eca_resnet8_cifar", num_classes=5).init)(jax.random.key(0), x)
    return variables, x


@functools.lru_cache(maxsize=None)
def _compiled(train, drop_path_rate=0.0, drop_rate=0.0):
    """One jitted apply per configuration (the dropout key is an argument: no recompiling per key)."""
    model = create_model("eca_resnet8_cifar", num_classes=5, drop_path_rate=drop_path_rate, drop_rate=drop_rate)
    if not train:
        return jax.jit(lambda v, y, key: (model.apply(v, y), None))
    if drop_path_rate == drop_rate == 0.0:    # no "dropout" stream at all
        return jax.jit(lambda v, y, key: model.apply(v, y, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, y, key: model.apply(v, y, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))


def _logits(variables, x, train, key=None, **rates):
    """(logits, updated batch_stats or None) of eca_resnet8_cifar with ``rates``."""
    return _compiled(train, **rates)(variables, x, jax.random.key(0) if key is None else key)


def test_eval_unchanged_and_rates_zero_need_no_key(small_resnet):
    variables, x = small_resnet
    plain, _ = _logits(variables, x, train=False)
    with_rates, _ = _logits(variables, x, train=False, drop_path_rate=RATE, drop_rate=0.5)
    np.testing.assert_array_equal(with_rates, plain)
    _logits(variables, x, train=True)          # rates 0 in training: no "dropout" stream needed


def test_train_output_depends_on_the_rates_and_the_key(small_resnet):
    variables, x = small_resnet
    plain, plain_stats = _logits(variables, x, train=True)
    first, _ = _logits(variables, x, True, jax.random.key(1), drop_path_rate=0.5)
    again, _ = _logits(variables, x, True, jax.random.key(1), drop_path_rate=0.5)
    other, _ = _logits(variables, x, True, jax.random.key(2), drop_path_rate=0.5)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - other).max() > 1e-3
    # dropout before the classifier: logits change, the backbone (its batch statistics) does not
    head, head_stats = _logits(variables, x, True, jax.random.key(1), drop_rate=0.5)
    assert np.abs(head - plain).max() > 1e-3
    jax.tree.map(np.testing.assert_array_equal, head_stats, plain_stats)


@pytest.mark.parametrize("name", ["eca_resnet50", "ecaresnet50d"])
def test_parameter_counts_unchanged(name):
    model = create_model(name, drop_path_rate=RATE, drop_rate=0.5)
    summary = summarize(model, 224, name)
    assert (summary.params, summary.attention_params) == EXACT[name]
    shapes = lambda m: jax.eval_shape(lambda: m.init(  # noqa: E731
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros((2, 32, 32, 3)), train=True))
    assert jax.tree.structure(shapes(model)) == jax.tree.structure(shapes(create_model(name)))


def test_nnx_twin_agrees_at_eval_and_drops_in_training(small_resnet):
    variables, x = small_resnet
    rates = dict(drop_path_rate=RATE, drop_rate=0.5)
    linen, _ = _logits(variables, x, train=False, **rates)
    model = ennx.create_model("eca_resnet8_cifar", num_classes=5, rngs=nnx.Rngs(0), **rates)
    ennx.load_linen_variables(model, variables)
    forward = nnx.jit(lambda m, y: m(y))
    model.eval()
    np.testing.assert_array_equal(forward(model, x), linen)
    model.train()
    first, second = forward(model, x), forward(model, x)    # the "dropout" streams advance
    assert np.abs(first - second).max() > 1e-3
    assert getattr(model, "layer1.0").drop_path is None     # block 0: rate 0, no stream
    plain = nnx.eval_shape(lambda: ennx.from_linen(create_model("eca_resnet8_cifar"), rngs=nnx.Rngs(0)))
    assert jax.tree.leaves(nnx.state(model, nnx.RngState))
    assert not jax.tree.leaves(nnx.state(plain, nnx.RngState))   # rates 0: state as before
