"""eca_jax.nn against independent NumPy references: ECA, CECA and every Table-2 layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

import eca_jax.nn as enn


# ---------------------------------------------------------------- NumPy references (loops, no shortcuts)
def np_gap(x):
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_shared_conv1d(y, taps, circular):
    """z[n, c] = sum_i taps[i] * y[n, c + i - p] (zero outside [0, C) or wrapped modulo C)."""
    n, channels = y.shape
    k = len(taps)
    p = (k - 1) // 2
    z = np.zeros_like(y)
    for c in range(channels):
        for i in range(k):
            src = c + i - p
            if circular:
                z[:, c] += taps[i] * y[:, src % channels]
            elif 0 <= src < channels:
                z[:, c] += taps[i] * y[:, src]
    return z


def np_per_channel_conv1d(y, kernel):
    channels, k = kernel.shape
    p = (k - 1) // 2
    z = np.zeros_like(y)
    for c in range(channels):
        for i in range(k):
            if 0 <= c + i - p < channels:
                z[:, c] += kernel[c, i] * y[:, c + i - p]
    return z


def gate(x, z):
    return x * np_sigmoid(z)[:, None, None, :]


def random_x(shape, seed=0):
    rng = np.random.default_rng(seed)
    # A per-channel offset makes the pooled vector vary across channels (a pure-noise input pools to ~0).
    return (rng.normal(size=shape) + rng.normal(size=shape[-1]) * 2.0).astype(np.float32)


def params_of(variables):
    return traverse_util.flatten_dict(variables["params"], sep=".")


def n_params(variables):
    return sum(v.size for v in params_of(variables).values())


# ---------------------------------------------------------------- kernel size
@pytest.mark.parametrize("channels,k", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7),
                                        (16, 3), (32, 3), (96, 3), (4, 1), (2, 1), (8, 3)])
def test_eca_kernel_size_matches_eq12_table(channels, k):
    assert enn.eca_kernel_size(channels) == k


def test_eca_kernel_size_timm_minimum():
    assert enn.eca_kernel_size(4, min_size=3) == 3
    assert enn.eca_kernel_size(2048, min_size=3) == 7


@pytest.mark.parametrize("bad", [0, -4, 3.0])
def test_eca_kernel_size_rejects_bad_channels(bad):
    with pytest.raises(ValueError, match="channels"):
        enn.eca_kernel_size(bad)


# ---------------------------------------------------------------- ECA / CECA
@pytest.mark.parametrize("padding", ["zero", "circular"])
@pytest.mark.parametrize("channels", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
def test_eca_matches_numpy(channels, k, padding):
    x = random_x((3, 5, 7, channels), seed=channels * 10 + k)
    layer = enn.ECA(k_size=k, padding=padding)
    variables = layer.init(jax.random.key(k), x)
    taps = np.asarray(params_of(variables)["conv.kernel"]).reshape(-1)
    assert params_of(variables)["conv.kernel"].shape == (k, 1, 1)
    assert n_params(variables) == k
    taps = taps + np.linspace(-0.5, 0.5, k, dtype=np.float32)     # not the init distribution's symmetry
    variables = {"params": {"conv": {"kernel": jnp.asarray(taps.reshape(k, 1, 1))}}}
    want = gate(x, np_shared_conv1d(np_gap(x), taps, padding == "circular"))
    got = layer.apply(variables, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # the pure function is the same computation
    np.testing.assert_allclose(np.asarray(enn.eca_gate(x, jnp.asarray(taps), padding)), want, rtol=1e-5, atol=1e-6)


def test_eca_is_not_a_flipped_convolution():
    x = random_x((2, 3, 3, 6))
    taps = np.array([1.0, 0.0, -2.0], np.float32)         # asymmetric: a flip would change the result
    want = gate(x, np_shared_conv1d(np_gap(x), taps, False))
    flipped = gate(x, np_shared_conv1d(np_gap(x), taps[::-1], False))
    got = np.asarray(enn.eca_gate(x, jnp.asarray(taps)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - flipped).max() > 1e-3


def test_eca_adaptive_k_from_channels():
    x = random_x((1, 2, 2, 256))
    variables = enn.ECA().init(jax.random.key(0), x)
    assert params_of(variables)["conv.kernel"].shape == (5, 1, 1)
    variables = enn.ECA(min_size=3).init(jax.random.key(0), random_x((1, 2, 2, 4)))
    assert params_of(variables)["conv.kernel"].shape == (3, 1, 1)


@pytest.mark.parametrize("shape", [(2, 9, 4), (2, 5, 6, 8), (1, 3, 4, 5, 8)])
def test_eca_any_number_of_spatial_axes(shape):
    x = random_x(shape)
    taps = np.array([0.3, -0.7, 1.1], np.float32)
    pooled = x.reshape(shape[0], -1, shape[-1]).mean(1)
    z = np_sigmoid(np_shared_conv1d(pooled, taps, False))
    want = x * z.reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
    np.testing.assert_allclose(np.asarray(enn.eca_gate(x, jnp.asarray(taps))), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bf16: the gate accumulates in float32
BF16_U = 2.0 ** -8                  # bf16 unit roundoff (8 significant bits)
CANCEL_TAPS = np.array([-1.0, 2.0, -1.0]) * 2 ** 10   # sum 0: a common offset of the channels cancels


def bf16_cancellation_input(shape=(2, 64, 64, 16), seed=0):
    """bf16-exact x (as float32): 1.0, except a fraction p[n, c] < 0.45 of the pixels at 1 + 2**-7.

    1 + 2**-7 is bf16's next value after 1, so the spatial mean 1 + p * 2**-7 falls between two
    bf16 values and rounds to 1.0 (for every channel) in bf16: the differences between channels,
    all the zero-sum CANCEL_TAPS see (-> logits in about [-6, 6]; the two edge channels, zero
    padded, saturate), survive only a float32 (or wider) pooling and 1-D conv.
    """
    rng = np.random.default_rng(seed)
    n, c = shape[0], shape[-1]
    p = rng.uniform(0.0, 0.45, (n, c))
    x = np.where(rng.uniform(size=shape) < p[:, None, None, :], 1 + 2 ** -7, 1.0).astype(np.float32)
    assert np.array_equal(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), x)
    return x


def reference_gate(u, taps):
    """float64 ECA on float64 ``u``: u * sigmoid(conv1d(mean_{H,W} u)), zero padding."""
    u = np.asarray(u, np.float64)
    return gate(u, np_shared_conv1d(np_gap(u), np.asarray(taps, np.float64), False))


def max_relative_error(got, want):
    """Largest elementwise |got - want| / |want| (``want`` has no zeros here)."""
    return float(np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want)))


def peak_relative_error(got, want):
    """Largest |got - want| over the largest |want| (for outputs that cross zero)."""
    got = np.asarray(got, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_eca_bfloat16_pooling_and_conv_accumulate_in_float32():
    """bf16 in, bf16 out, and within two bf16 roundings (the gate, then x * gate) of float64.

    Measured 5.1e-3 = 1.3u (AMD EPYC); bound 2u = 7.8e-3. The same gate with its pooled vector or
    its 1-D conv held in bf16 (what the bound must catch) is off by 2.0e2 (20,000%), ~5e4 u.
    """
    x = bf16_cancellation_input()
    xb, taps = jnp.asarray(x, jnp.bfloat16), jnp.asarray(CANCEL_TAPS, jnp.float32)
    want = reference_gate(x, CANCEL_TAPS)
    got = enn.eca_gate(xb, taps)
    assert got.dtype == jnp.bfloat16
    assert max_relative_error(got, want) < 2 * BF16_U
    layer = enn.ECA(k_size=3).apply({"params": {"conv": {"kernel": taps.reshape(3, 1, 1)}}}, xb)
    assert max_relative_error(layer, want) < 2 * BF16_U
    # The test can fail: pooling into bf16, or a bf16 conv, loses every channel difference.
    pooled_bf16 = jnp.mean(xb, axis=(1, 2))                                        # a bf16 mean
    assert max_relative_error(enn.apply_gate(xb, enn.channel_conv1d(pooled_bf16.astype(jnp.float32), taps)),
                              want) > 100 * BF16_U
    conv_bf16 = enn.channel_conv1d(enn.global_avg_pool(xb).astype(jnp.bfloat16), taps.astype(jnp.bfloat16))
    assert max_relative_error(enn.apply_gate(xb, conv_bf16), want) > 100 * BF16_U


def test_fused_batch_norm_gate_bfloat16_accumulates_in_float32():
    """The fused BatchNorm + ECA op (what the models run) on the same bf16 input, both modes.

    Bound 2u = 7.8e-3 for both. Eval (given statistics 0 / 1, one bf16 rounding of the output):
    measured 3.4e-3 = 0.9u (AMD EPYC). Train (batch statistics): measured 3.2e-3 = 0.8u of the
    largest output (outputs cross zero here).
    """
    from eca_jax.nn.fused import batch_norm_act, batch_norm_act_inference
    x = bf16_cancellation_input(seed=1)
    xb, channels, eps = jnp.asarray(x, jnp.bfloat16), x.shape[-1], 1e-5
    ones, zeros = jnp.ones(channels), jnp.zeros(channels)
    got = batch_norm_act_inference(xb, ones, zeros, zeros, ones, kernel=jnp.asarray(CANCEL_TAPS, jnp.float32))
    assert got.dtype == jnp.bfloat16
    assert max_relative_error(got, reference_gate(x / np.sqrt(1 + eps), CANCEL_TAPS)) < 2 * BF16_U
    # Train: BN itself removes the per-channel mean; the gate then sees (spatial mean - batch mean) / std.
    taps = CANCEL_TAPS / 2 ** 7                                                    # logits in about [-6, 6]
    got = batch_norm_act(xb, ones, zeros, None, jnp.asarray(taps, jnp.float32))[0]
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    want = reference_gate((x64 - mean) / np.sqrt(var + eps), taps)
    assert peak_relative_error(got, want) < 2 * BF16_U


@pytest.mark.parametrize("k", [0, 2, 4, -3])
def test_eca_rejects_even_or_nonpositive_k(k):
    with pytest.raises(ValueError, match="odd"):
        enn.ECA(k_size=k).init(jax.random.key(0), random_x((1, 2, 2, 8)))


def test_eca_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding"):
        enn.ECA(k_size=3, padding="reflect").init(jax.random.key(0), random_x((1, 2, 2, 8)))


def test_eca_rejects_wrong_rank_and_dtype():
    with pytest.raises(ValueError, match="spatial"):
        enn.ECA(k_size=3).init(jax.random.key(0), jnp.ones((2, 8)))
    with pytest.raises(TypeError, match="floating"):
        enn.ECA(k_size=3).init(jax.random.key(0), jnp.ones((1, 2, 2, 8), jnp.int32))


# ---------------------------------------------------------------- Table-2 family
def _apply_with_params(layer, x, seed=1):
    """Init, then replace every parameter with random values (so biases etc. are non-trivial)."""
    variables = layer.init(jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(0, 0.5, p.shape), jnp.float32),
                                    variables["params"])
    return {"params": params}, np.asarray(layer.apply({"params": params}, x))


@pytest.mark.parametrize("channels", [16, 64])
def test_se_matches_numpy(channels):
    x = random_x((2, 4, 4, channels))
    variables, got = _apply_with_params(enn.make_attention("se", reduction=4), x)
    p = {k: np.asarray(v) for k, v in params_of(variables).items()}
    hidden = np.maximum(np_gap(x) @ p["fc.0.kernel"] + p["fc.0.bias"], 0)
    want = gate(x, hidden @ p["fc.2.kernel"] + p["fc.2.bias"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    h = channels // 4
    assert n_params(variables) == 2 * channels * h + h + channels


def test_se_var1_has_no_parameters():
    x = random_x((2, 3, 3, 8))
    layer = enn.make_attention("se_var1")
    assert jax.tree_util.tree_leaves(layer.init(jax.random.key(0), x)) == []
    np.testing.assert_allclose(np.asarray(layer.apply({}, x)), gate(x, np_gap(x)), rtol=1e-5, atol=1e-6)


def test_se_var2_matches_numpy():
    x = random_x((2, 3, 3, 12))
    variables, got = _apply_with_params(enn.make_attention("se_var2"), x)
    w = np.asarray(params_of(variables)["weight"])
    np.testing.assert_allclose(got, gate(x, np_gap(x) * w), rtol=1e-5, atol=1e-6)
    assert n_params(variables) == 12


def test_se_var3_matches_numpy():
    x = random_x((2, 3, 3, 12))
    variables, got = _apply_with_params(enn.make_attention("se_var3"), x)
    w = np.asarray(params_of(variables)["fc.kernel"])
    np.testing.assert_allclose(got, gate(x, np_gap(x) @ w), rtol=1e-5, atol=1e-5)
    assert n_params(variables) == 12 * 12


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_se_gc_matches_numpy(groups):
    channels = 12
    x = random_x((2, 3, 3, channels))
    variables, got = _apply_with_params(enn.make_attention("se_gc", groups=groups), x)
    kernel = np.asarray(params_of(variables)["kernel"])
    size = channels // groups
    dense = np.zeros((channels, channels), np.float32)       # block-diagonal full matrix
    for g in range(groups):
        dense[g * size:(g + 1) * size, g * size:(g + 1) * size] = kernel[g]
    np.testing.assert_allclose(got, gate(x, np_gap(x) @ dense), rtol=1e-5, atol=1e-5)
    assert n_params(variables) == channels * channels // groups


def test_se_gc_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match="divide"):
        enn.make_attention("se_gc", groups=5).init(jax.random.key(0), random_x((1, 2, 2, 12)))


@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("channels", [4, 16])
def test_eca_ns_matches_numpy(channels, k):
    x = random_x((2, 3, 3, channels))
    variables, got = _apply_with_params(enn.make_attention("eca_ns", k_size=k), x)
    kernel = np.asarray(params_of(variables)["kernel"])
    assert kernel.shape == (channels, k)
    np.testing.assert_allclose(got, gate(x, np_per_channel_conv1d(np_gap(x), kernel)), rtol=1e-5, atol=1e-5)
    assert n_params(variables) == channels * k


def test_ceca_is_circular_eca():
    x = random_x((2, 3, 3, 8))
    layer = enn.make_attention("ceca", k_size=5)
    variables, got = _apply_with_params(layer, x)
    taps = np.asarray(params_of(variables)["conv.kernel"]).reshape(-1)
    np.testing.assert_allclose(got, gate(x, np_shared_conv1d(np_gap(x), taps, True)), rtol=1e-5, atol=1e-5)
    zero = gate(x, np_shared_conv1d(np_gap(x), taps, False))
    assert np.abs(got - zero).max() > 1e-4      # the wrap-around really changes the edge channels


def test_make_attention_none_and_unknown():
    assert enn.make_attention(None) is None
    with pytest.raises(ValueError, match="se_var2"):
        enn.make_attention("se_var")
    with pytest.raises(TypeError, match="reduction"):
        enn.make_attention("eca", reduction=4)


@pytest.mark.parametrize("name", sorted(enn.ATTENTION_LAYERS))
def test_every_attention_layer_preserves_shape_and_dtype(name):
    x = jnp.asarray(random_x((2, 5, 5, 16)), jnp.bfloat16)
    layer = enn.make_attention(name)
    variables = layer.init(jax.random.key(0), x)
    out = layer.apply(variables, x)
    assert out.shape == x.shape and out.dtype == jnp.bfloat16
    assert bool(jnp.isfinite(out.astype(jnp.float32)).all())


# ---------------------------------------------------------------- nnx
def test_eca_from_nnx_equals_linen():
    x = random_x((2, 4, 4, 32))
    module = enn.ECA(k_size=5)
    layer = enn.to_nnx(module, x, rngs=nnx.Rngs(3))
    assert isinstance(layer, nnx.Module)
    _, state = nnx.split(layer)
    kernel = jax.tree_util.tree_leaves(state)[0]
    kernel = getattr(kernel, "value", kernel)
    assert kernel.shape == (5, 1, 1)
    want = module.apply({"params": {"conv": {"kernel": kernel}}}, x)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), rtol=1e-6)


def test_nnx_model_composes_eca():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.eca = enn.to_nnx(enn.ECA(k_size=3), jnp.ones((1, 4, 4, 8)), rngs=rngs)

        def __call__(self, x):
            return self.eca(self.conv(x))

    net = Net(nnx.Rngs(0))
    y = net(jnp.asarray(random_x((2, 4, 4, 3))))
    assert y.shape == (2, 4, 4, 8) and bool(jnp.isfinite(y).all())


# ---------------------------------------------------------------- the paper's rows (eca_jax.nn.rows)
@pytest.mark.parametrize("size", [2, 3, 6, 12])
def test_se_gc_with_channels_per_group_matches_numpy(size):
    """SE-GC given its group size (SE-GC2: 16 channels per group, SE-GC3: 8): G = C / size."""
    channels = 12
    x = random_x((2, 3, 3, channels))
    variables, got = _apply_with_params(enn.make_attention("se_gc", channels_per_group=size), x)
    kernel = np.asarray(params_of(variables)["kernel"])
    groups = channels // size
    assert kernel.shape == (groups, size, size)
    dense = np.zeros((channels, channels), np.float32)
    for g in range(groups):
        dense[g * size:(g + 1) * size, g * size:(g + 1) * size] = kernel[g]
    np.testing.assert_allclose(got, gate(x, np_gap(x) @ dense), rtol=1e-5, atol=1e-5)
    assert n_params(variables) == channels * size


@pytest.mark.parametrize("row,channels,groups", [("SE-GC1", 32, 16), ("SE-GC2", 32, 2), ("SE-GC3", 32, 4),
                                                 ("se_gc2", 64, 4), ("Se-Gc3", 64, 8)])
def test_se_gc_rows_resolve_their_groups_from_c(row, channels, groups):
    layer = enn.make_attention(row)
    variables = layer.init(jax.random.key(0), random_x((1, 2, 2, channels)))
    assert params_of(variables)["kernel"].shape == (groups, channels // groups, channels // groups)


def test_se_gc_group_size_not_dividing_c_names_c():
    with pytest.raises(ValueError, match=r"channels_per_group=5 must divide the channel count C=12"):
        enn.make_attention("se_gc", channels_per_group=5).init(jax.random.key(0), random_x((1, 2, 2, 12)))


@pytest.mark.parametrize("name", enn.row_names())
def test_every_row_builds_by_any_spelling(name):
    for spelling in (name, name.lower(), name.upper().replace("-", "_")):
        layer = enn.make_attention(spelling)
        if name == "vanilla":
            assert layer is None
            continue
        x = random_x((1, 2, 2, 32))
        variables = layer.init(jax.random.key(0), x)
        count = n_params(variables) if "params" in variables else 0     # SE-Var1 has none
        assert count == enn.get_row(name).block_params(32)
