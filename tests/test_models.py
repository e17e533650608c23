"""The model zoo: exact parameter counts and MACs, every model jits at 224 and 193 in fp32/bf16,
bf16 logits against float32, running statistics in eval mode (against PyTorch), features, errors."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from eca_jax.models import create_model, get_model_cfg, list_models, summarize

# Exact counts: ECA.md's table (release, torchvision baselines, ecaresnet50d) and timm's modules
# for the rest of the ResNet-D family (ECA.md rounds them to 16.01M, 25.57M, 30.16M, 44.57M, 102.09M).
EXACT = {
    "eca_resnet18": (11_689_556, 44), "eca_resnet34": (21_797_744, 72), "eca_resnet50": (25_557_112, 80),
    "eca_resnet101": (44_549_317, 157), "eca_resnet152": (60_193_042, 234),
    "eca_mobilenet_v2": (3_504_903, 31), "mobilenet_v2": (3_504_872, 0),
    "resnet18": (11_689_512, 0), "resnet34": (21_797_672, 0), "resnet50": (25_557_032, 0),
    "resnet101": (44_549_160, 0), "resnet152": (60_192_808, 0),
    "ecaresnet50d": (25_576_350, 86), "ecaresnet26t": (16_011_916, 44), "ecaresnet50t": (25_573_814, 86),
    "ecaresnetlight": (30_162_046, 86), "ecaresnet101d": (44_568_563, 171), "ecaresnet269d": (102_093_077, 461),
    "se_resnet50": (28_088_024, 28_088_024 - 25_557_032),
    "eca_resnet8_cifar": (142_401, 9), "resnet8_cifar": (142_392, 0),
}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Compile without XLA's heavy optimizations: these tests check shapes and finiteness, not speed."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def test_every_registered_model_has_an_exact_count():
    assert sorted(EXACT) == list_models()


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_parameter_counts(name):
    summary = summarize(create_model(name), 224, name)
    assert (summary.params, summary.attention_params) == EXACT[name]


def test_eca_adds_only_its_kernels():
    for depth in (18, 34, 50, 101, 152):
        eca, plain = EXACT[f"eca_resnet{depth}"], EXACT[f"resnet{depth}"]
        assert eca[0] - plain[0] == eca[1]


def test_macs_resnet50_and_eca_overhead():
    plain = summarize(create_model("resnet50"))
    eca = summarize(create_model("eca_resnet50"))
    assert plain.macs == 4_089_184_256               # conv + fc MACs of ResNet-50 at 224
    # ECA adds sum over blocks of C*k: 3*256*3 + 4*512*5 + 6*1024*5 + 3*2048*7
    assert eca.macs - plain.macs == 3 * 256 * 3 + 4 * 512 * 5 + 6 * 1024 * 5 + 3 * 2048 * 7


@pytest.mark.parametrize("k_size,ks", [
    ("adaptive", (3, 5, 5, 5)),   # Eq. 12 for C = 64, 128, 256, 512 (the layer's k_size stays None)
    (3, (3, 3, 3, 3)),
])
def test_macs_of_eca_ns_count_its_per_channel_kernels(k_size, ks):
    """ECA-NS adds C*k MACs per block (one k-tap kernel per channel), adaptive k included."""
    plain = summarize(create_model("resnet18"))
    eca_ns = summarize(create_model("resnet18", attn="eca_ns", k_size=k_size))
    blocks_per_stage, widths = (2, 2, 2, 2), (64, 128, 256, 512)
    assert eca_ns.macs - plain.macs == sum(b * c * k for b, c, k in zip(blocks_per_stage, widths, ks))
    assert eca_ns.attention_params == sum(b * c * k for b, c, k in zip(blocks_per_stage, widths, ks))


def _relative_error(a, b) -> float:
    """||a - b|| / ||b|| over the whole arrays, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _random_variables(model, seed=0):
    """Random parameters and non-trivial BN statistics with the model's shapes (no init compile)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3)), train=False))
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(shapes)
    out = {}
    for path, s in flat.items():
        if path[-1] == "var":
            out[path] = rng.uniform(0.5, 2.0, s.shape)
        elif path[-1] == "mean":
            out[path] = rng.normal(0, 0.2, s.shape)
        elif path[-1] == "scale":
            out[path] = rng.uniform(0.5, 1.0, s.shape)
        elif path[-1] == "kernel":
            fan_in = int(np.prod(s.shape[:-1])) or 1
            out[path] = rng.normal(0, np.sqrt(1.0 / fan_in), s.shape)
        else:
            out[path] = rng.normal(0, 0.1, s.shape)
    return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in out.items()})


# The deeper twins (101, 152, 269 layers) have the blocks, stems and downsampling of their
# 50-layer twin; only the block counts differ, which their exact parameter counts check. They took
# 41-87 s each here (AMD EPYC, 2 cores), so this shape check covers each family once per stem.
DEEP_TWINS = {"eca_resnet101", "eca_resnet152", "resnet101", "resnet152", "ecaresnet101d", "ecaresnet269d"}


# Two compiles per model: float32 at the odd size 193 (ceil/floor of every stride-2 layer), bfloat16
# at 224. (All four pairs took twice as long; float32 at 224 runs in test_convert's parity tests.)
@pytest.mark.parametrize("name", sorted(set(EXACT) - DEEP_TWINS))
def test_every_model_jits_at_224_and_193_in_fp32_and_bf16(name):
    variables = _random_variables(create_model(name))
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
    for dtype, size in ((jnp.float32, 193), (jnp.bfloat16, 224)):
        model = create_model(name, dtype=dtype)
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x[:, :size, :size])
        assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
        assert bool(jnp.isfinite(logits).all()), (name, dtype, size)


# bf16 compute against float32 on the same float32 weights (the random PyTorch reference nets,
# logits O(1)): relative error of eval logits, measured (AMD EPYC) 3.7e-3 for eca_resnet18 and
# 7.0e-3 for eca_mobilenet_v2, i.e. 1-1.8 units of bf16 rounding (u = 2**-8 = 3.9e-3);
# bound 4u = 1.6e-2. (Train mode is not compared: through batch statistics eca_mobilenet_v2's
# random net amplifies rounding ~400x (float32 vs float64: 2.3e-5), so its bf16 train logits move
# by 25-32%; eca_resnet18's by 1.3e-2.)
BF16_LOGITS_BOUND = 4 * 2.0 ** -8


@pytest.mark.parametrize("name", ["eca_resnet18", "eca_mobilenet_v2"])
def test_bfloat16_eval_logits_close_to_float32(name):
    from eca_jax import convert
    from torch_reference import build, random_images
    module, variables = convert.from_torch(build(name, seed=1).state_dict())
    x = jnp.asarray(random_images(2, 64, seed=2).permute(0, 2, 3, 1).numpy())
    logits = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = module.clone(dtype=dtype)
        logits[dtype] = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits[jnp.bfloat16].dtype == jnp.float32
    assert np.std(np.asarray(logits[jnp.float32])) > 0.1          # logits that differ between classes
    assert _relative_error(logits[jnp.bfloat16], logits[jnp.float32]) < BF16_LOGITS_BOUND


@pytest.mark.parametrize("name,channels", [
    ("eca_resnet50", (256, 512, 1024, 2048)), ("eca_resnet18", (64, 128, 256, 512)),
    ("ecaresnet26t", (256, 512, 1024, 2048)), ("eca_mobilenet_v2", (24, 32, 96, 1280))])
def test_feature_maps(name, channels):
    model = create_model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3)), train=False))
    for size in (224, 193):
        feats = jax.eval_shape(lambda v: model.apply(v, jnp.ones((2, size, size, 3)), return_features=True), shapes)
        assert list(feats) == ["C2", "C3", "C4", "C5"]
        for (level, f), c, stride in zip(feats.items(), channels, (4, 8, 16, 32)):
            expected = -(-size // stride)     # ceil: every strided layer pads symmetrically
            assert f.shape == (2, expected, expected, c), (level, f.shape)


def test_train_mode_updates_batch_stats_and_eval_uses_them():
    """Train mode writes new running statistics; eval mode then normalises with exactly those.

    The reference is the independent PyTorch model (tests/torch_reference.py) holding the
    Flax-updated statistics (mapped back by eca_jax.convert), run in eval mode.
    """
    import torch
    from eca_jax import convert
    from torch_reference import build, random_images
    torch_model = build("eca_resnet18", seed=5)
    module, variables = convert.from_torch(torch_model.state_dict())
    x_nchw = random_images(4, 32, seed=6) * 1.5 + 0.5     # batch statistics far from the stored ones
    x = jnp.asarray(x_nchw.permute(0, 2, 3, 1).numpy())
    _, updated = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    before, after = variables["batch_stats"]["bn1"]["mean"], updated["batch_stats"]["bn1"]["mean"]
    assert float(jnp.abs(after - before).max()) > 1e-4
    new_variables = {"params": variables["params"], "batch_stats": updated["batch_stats"]}
    evaluate = jax.jit(lambda v, x: module.apply(v, x, train=False))
    old_logits, new_logits = evaluate(variables, x), evaluate(new_variables, x)
    # Eval reads the statistics: the update moves the logits (measured 0.24 relative (AMD EPYC)).
    assert _relative_error(new_logits, old_logits) > 0.1
    torch_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                 convert.to_torch_state_dict("eca_resnet18", new_variables).items()}, strict=True)
    with torch.no_grad():
        want = torch_model.eval()(x_nchw).numpy()
    # ... and exactly the updated ones: float32 parity (measured 5.2e-7 (AMD EPYC), bound ~10x).
    assert _relative_error(new_logits, want) < 5e-6


def test_release_k_defaults_and_overrides():
    def ks(model):
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3))))
        flat = traverse_util.flatten_dict(shapes["params"])
        natural = sorted(flat, key=lambda path: [int(t) if t.isdigit() else t for p in path for t in p.split(".")])
        return [flat[p].shape[0] for p in natural if p[-2:] == ("conv", "kernel") and flat[p].ndim == 3]
    k50 = ks(create_model("eca_resnet50"))
    assert k50 == [3] * 3 + [5] * 4 + [5] * 6 + [7] * 3
    assert set(ks(create_model("eca_resnet50", k_size=9))) == {9}
    assert ks(create_model("eca_resnet50", k_size="adaptive")) == [5] * 3 + [5] * 4 + [5] * 6 + [7] * 3
    assert ks(create_model("eca_resnet18", k_size="adaptive")) == [3] * 2 + [5] * 2 + [5] * 2 + [5] * 2
    assert ks(create_model("eca_mobilenet_v2")) == [1] * 10 + [3] * 7
    assert get_model_cfg("eca_resnet50").eca_k == (3, 5, 5, 7)


def test_release_init_is_fan_out_normal():
    model = create_model("resnet50")
    variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
    kernel = np.asarray(variables["params"]["layer3.0"]["conv2"]["kernel"])      # 3x3, 256 -> 256
    assert abs(kernel.std() / np.sqrt(2 / (3 * 3 * 256)) - 1) < 0.02
    assert np.all(np.asarray(variables["params"]["bn1"]["scale"]) == 1)


def test_width_multiplier_follows_the_release_rules():
    model = create_model("eca_mobilenet_v2", width_mult=0.5)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3))))
    params = shapes["params"]
    assert params["features.0.0"]["kernel"].shape == (3, 3, 3, 16)            # int(32 * 0.5)
    assert params["features.2"]["conv.2"]["kernel"].shape == (1, 1, 48, 12)   # int(24 * 0.5), hidden 8*6
    assert params["features.18.0"]["kernel"].shape == (1, 1, 160, 1280)       # last = 1280 * max(1, wm)


def test_unknown_model_lists_close_names():
    with pytest.raises(ValueError, match="eca_resnet50"):
        create_model("eca_resnet5O")


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(ValueError, match="k_size"):
        create_model("eca_resnet50", ksize=3)


@pytest.mark.parametrize("k", [4, 0, [3, 5, 5]])
def test_bad_k_size(k):
    model = create_model("eca_resnet18", k_size=k)
    with pytest.raises(ValueError, match="k_size"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3))))


@pytest.mark.parametrize("x,error,match", [
    (jnp.ones((2, 3, 32, 32)), ValueError, "NCHW"),
    (jnp.ones((32, 32, 3)), ValueError, "rank 4"),
    (jnp.ones((2, 32, 32, 1)), ValueError, "3 input channels"),
    (jnp.ones((2, 32, 32, 3), jnp.uint8), TypeError, "floating"),
])
def test_bad_inputs(x, error, match):
    for name in ("eca_resnet18", "eca_mobilenet_v2"):
        model = create_model(name)
        with pytest.raises(error, match=match):
            jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def test_unknown_attention_in_model():
    model = create_model("resnet18", attn="eca_typo")
    with pytest.raises(ValueError, match="Unknown attention"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3))))


@pytest.mark.parametrize("attn", ["se", "se_var1", "se_var2", "se_var3", "se_gc", "eca_ns", "eca", "ceca"])
def test_ablation_swaps_one_string(attn):
    model = create_model("resnet18", attn=attn, num_classes=10)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.ones((1, 32, 32, 3)))[0])
    assert out.shape == (1, 10)


def test_summary_cli():
    out = subprocess.run([sys.executable, "-m", "eca_jax.models", "eca_resnet50"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert "25,557,112" in out and "24.37 M base-1024" in out and "attention params  80" in out
    listing = subprocess.run([sys.executable, "-m", "eca_jax.models", "--list"], capture_output=True,
                             text=True, timeout=300, check=True).stdout
    assert "ecaresnet269d" in listing and "102,093,077" in listing
