"""Tests of the independent PyTorch reference models in tests/torch_reference.py.

They pin the reference models to the published facts (key layouts of real checkpoints, exact
parameter counts) so that converter and parity tests built on them mean something.
Runtime: a few seconds on one CPU core (counts use the 'meta' device, no weights allocated).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_reference import (TORCH_MODELS, EcaGate, build, eca_kernel_size, param_count,
                             random_images, randomize_, read_state_dict_tsv, reference_dir,
                             state_dict_shapes)


def _meta(name: str, **kw) -> nn.Module:
    """Build on the meta device: shapes only, no memory, no init cost."""
    with torch.device("meta"):
        return TORCH_MODELS[name](**kw)


def _eca_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, EcaGate)
               for p in m.parameters())


def _tsv(name: str) -> dict[str, tuple[int, ...]]:
    path = reference_dir() / f"{name}_state_dict.tsv"
    if not path.exists():
        pytest.fail(f"reference listing missing: {path}")
    return read_state_dict_tsv(path)


# ---------------------------------------------------------------- key layouts of real checkpoints

# (listing, model, listing includes num_batches_tracked)
LAYOUTS = [
    ("official_eca_resnet50", "eca_resnet50", True),
    ("official_eca_mobilenet_v2", "eca_mobilenet_v2", True),
    ("timm_ecaresnet26t", "ecaresnet26t", False),
    ("timm_ecaresnet50d", "ecaresnet50d", False),
    ("timm_ecaresnetlight", "ecaresnetlight", False),
]


@pytest.mark.parametrize("listing,model_name,with_nbt", LAYOUTS)
def test_state_dict_layout_matches_reference(listing, model_name, with_nbt):
    expected = _tsv(listing)
    got = state_dict_shapes(_meta(model_name), with_num_batches_tracked=with_nbt)
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    assert not missing and not extra, f"missing {missing[:5]}..., extra {extra[:5]}..."
    bad = {k: (got[k], s) for k, s in expected.items() if got[k] != s}
    assert not bad, f"shape mismatches (got, expected): {bad}"
    assert list(got) == list(expected), "same keys, different order"


@pytest.mark.parametrize("listing,model_name,with_nbt", LAYOUTS)
def test_param_count_equals_listing(listing, model_name, with_nbt):
    """Independent count: numel of every listed tensor that is not a BN buffer."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    expected = sum(math.prod(s) for k, s in _tsv(listing).items() if not k.endswith(buffers))
    assert param_count(_meta(model_name)) == expected


def test_ceca_has_the_eca_layout():
    eca = state_dict_shapes(_meta("ecaresnet50d"))
    ceca = state_dict_shapes(_meta("ecaresnet50d", attn="ceca"))
    assert eca == ceca
    plain = state_dict_shapes(_meta("ecaresnet50d", attn=None))
    assert set(eca) - set(plain) == {k for k in eca if ".se.conv." in k}


def test_mobilenet_v2_torchvision_layout():
    sd = state_dict_shapes(_meta("mobilenet_v2"))
    assert sd["features.1.conv.0.0.weight"] == (32, 1, 3, 3)      # t == 1: dw first
    assert sd["features.1.conv.1.weight"] == (16, 32, 1, 1)
    assert sd["features.1.conv.2.weight"] == (16,)
    assert sd["features.2.conv.0.0.weight"] == (96, 16, 1, 1)     # t != 1: pw, dw, pw-linear, BN
    assert sd["features.2.conv.1.0.weight"] == (96, 1, 3, 3)
    assert sd["features.2.conv.2.weight"] == (24, 96, 1, 1)
    assert sd["features.2.conv.3.running_var"] == (24,)
    assert sd["features.18.0.weight"] == (1280, 320, 1, 1)
    assert sd["classifier.1.weight"] == (1000, 1280)
    # Same keys as the ECA release minus its gates.
    eca = state_dict_shapes(_meta("eca_mobilenet_v2"))
    assert {k: v for k, v in eca.items() if not k.endswith(".conv.weight")} == sd


def test_se_resnet50_layout():
    sd = state_dict_shapes(_meta("se_resnet50"))
    assert sd["layer1.0.se.fc.0.weight"] == (16, 256)
    assert sd["layer1.0.se.fc.0.bias"] == (16,)
    assert sd["layer4.2.se.fc.2.weight"] == (2048, 128)
    keys = list(sd)
    assert keys.index("layer1.0.bn3.running_var") < keys.index("layer1.0.se.fc.0.weight") \
        < keys.index("layer1.0.downsample.0.weight")


# ---------------------------------------------------------------- parameter counts

EXACT_COUNTS = {
    "eca_resnet18": 11_689_556, "eca_resnet34": 21_797_744, "eca_resnet50": 25_557_112,
    "eca_resnet101": 44_549_317, "eca_resnet152": 60_193_042, "eca_mobilenet_v2": 3_504_903,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "mobilenet_v2": 3_504_872,
    "ecaresnet50d": 25_576_350,
    # Measured here; 26t/light are also proven by test_param_count_equals_listing.
    "ecaresnet26t": 16_011_916, "ecaresnet50t": 25_573_814, "ecaresnetlight": 30_162_046,
    "ecaresnet101d": 44_568_563, "ecaresnet269d": 102_093_077,
    "se_resnet50": 28_088_024,
}
# Published rounded counts (ECA.md, in millions).
MILLIONS = {"ecaresnet26t": 16.01, "ecaresnet50d": 25.58, "ecaresnet50t": 25.57,
            "ecaresnetlight": 30.16, "ecaresnet101d": 44.57, "ecaresnet269d": 102.09}
ECA_COUNTS = {"eca_resnet18": 44, "eca_resnet34": 72, "eca_resnet50": 80, "eca_resnet101": 157,
              "eca_resnet152": 234, "eca_mobilenet_v2": 31}


def test_registry_is_covered():
    assert set(EXACT_COUNTS) == set(TORCH_MODELS)


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS))
def test_exact_param_count(name):
    assert param_count(_meta(name)) == EXACT_COUNTS[name]


@pytest.mark.parametrize("name", sorted(MILLIONS))
def test_published_millions(name):
    assert round(param_count(_meta(name)) / 1e6, 2) == MILLIONS[name]


@pytest.mark.parametrize("name", sorted(ECA_COUNTS))
def test_eca_param_count(name):
    model = _meta(name)
    assert _eca_params(model) == ECA_COUNTS[name]
    plain = name.replace("eca_", "")
    assert param_count(model) - param_count(_meta(plain)) == ECA_COUNTS[name]


def test_timm_kernel_sizes_are_adaptive():
    sd = state_dict_shapes(_meta("ecaresnet101d"))
    ks = {int(k[5]): v[-1] for k, v in sd.items() if k.endswith(".se.conv.weight")}
    assert ks == {1: 5, 2: 5, 3: 5, 4: 7}


def test_release_kernel_sizes_and_override():
    sd = state_dict_shapes(_meta("eca_resnet18"))
    assert [sd[f"layer{i}.0.eca.conv.weight"] for i in range(1, 5)] == \
        [(1, 1, 3), (1, 1, 5), (1, 1, 7), (1, 1, 7)]
    sd = state_dict_shapes(_meta("eca_resnet50", k_size=[3, 3, 3, 3]))
    assert sd["layer4.2.eca.conv.weight"] == (1, 1, 3)
    with pytest.raises(ValueError, match="one kernel size per stage"):
        build("eca_resnet50", k_size=[3, 5])
    with pytest.raises(ValueError, match="odd"):
        build("eca_resnet18", k_size=[3, 4, 5, 7])


@pytest.mark.parametrize("wm", [0.5, 1.4])
def test_mobilenet_width_mult(wm):
    off = _meta("eca_mobilenet_v2", width_mult=wm)
    assert off.features[0][0].out_channels == int(32 * wm)
    assert off.num_features == int(1280 * max(1.0, wm))
    tv = _meta("mobilenet_v2", width_mult=wm)
    assert tv.features[0][0].out_channels % 8 == 0 and tv.num_features % 8 == 0


# ---------------------------------------------------------------- the gate itself

def test_eca_kernel_size_formula():
    assert [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    assert eca_kernel_size(4) == 1 and eca_kernel_size(4, min_k=3) == 3
    with pytest.raises(ValueError, match="channels"):
        eca_kernel_size(0)


@pytest.mark.parametrize("circular", [False, True])
def test_eca_gate_matches_explicit_formula(circular):
    g = torch.Generator().manual_seed(0)
    k, c = 5, 11
    gate = EcaGate(k, circular=circular)
    with torch.no_grad():
        gate.conv.weight.copy_(torch.randn(1, 1, k, generator=g))
    x = torch.randn(3, c, 4, 6, generator=g)
    w = gate.conv.weight.reshape(k)
    y = x.mean(dim=(2, 3))
    logit = torch.zeros(3, c)
    for ch in range(c):              # cross-correlation, no kernel flip
        for j in range(k):
            src = ch + j - (k - 1) // 2
            if circular:
                src %= c
            if 0 <= src < c:
                logit[:, ch] += w[j] * y[:, src]
    expected = x * torch.sigmoid(logit)[:, :, None, None]
    torch.testing.assert_close(gate(x), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- randomize_ and forwards

def test_randomize_touches_everything_and_is_deterministic():
    a, b, c = (randomize_(build("eca_mobilenet_v2"), seed=s).state_dict() for s in (3, 3, 4))
    fresh = build("eca_mobilenet_v2").state_dict()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k])
        if k.endswith("num_batches_tracked"):
            assert v.item() > 0, k
            continue
        assert not torch.equal(v, fresh[k]), f"{k} not randomised"
        assert not torch.equal(v, c[k]), f"{k} ignores the seed"
        if k.endswith("running_var"):
            assert v.min() >= 0.5 and v.max() <= 2.0 and v.std() > 0.1
        if k.endswith("running_mean"):
            assert v.abs().max() > 0.1


def test_build_with_seed_equals_randomize():
    a = build("eca_resnet18", seed=7, num_classes=10).state_dict()
    b = randomize_(build("eca_resnet18", num_classes=10), seed=7).state_dict()
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_randomize_rejects_unknown_parameterised_modules():
    with pytest.raises(TypeError, match="no rule for LayerNorm"):
        randomize_(nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4)))


def test_randomize_damps_residual_branches():
    a = randomize_(build("resnet18"), seed=0)                      # default 1/sqrt(8 blocks)
    b = randomize_(build("resnet18"), seed=0, residual_gain=1.0)
    ratio = a.layer1[0].conv2.weight / b.layer1[0].conv2.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, 8 ** -0.5))
    torch.testing.assert_close(a.layer1[0].conv1.weight, b.layer1[0].conv1.weight)


def test_random_images_differ_per_image():
    x = random_images(4, (16, 24), seed=0)
    assert x.shape == (4, 3, 16, 24) and x.dtype == torch.float32
    torch.testing.assert_close(x, random_images(4, (16, 24), seed=0))
    means = x.mean(dim=(2, 3))
    assert means.std(0).min() > 0.05, "images should differ in their channel statistics"
    with pytest.raises(ValueError, match="n, H, W"):
        random_images(0, 8)


FORWARD_MODELS = ["eca_resnet18", "resnet50", "se_resnet50", "eca_mobilenet_v2",
                  "mobilenet_v2", "ecaresnet26t", "ecaresnetlight"]


@pytest.mark.parametrize("name", FORWARD_MODELS)
def test_forward_64_is_finite_and_input_dependent(name):
    model = build(name, seed=0, num_classes=10)
    assert not model.training
    with torch.no_grad():
        y = model(random_images(3, 64, seed=1))
    assert y.shape == (3, 10)
    assert torch.isfinite(y).all()
    assert y.std() > 1e-3
    across_images = y.std(dim=0).mean() / y.std(dim=1).mean()
    assert across_images > 0.02, f"logits barely depend on the image ({across_images:.2g})"
    assert y.abs().max() < 50, "activations blew up"


def test_ceca_changes_the_output():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    eca = build("ecaresnet26t", seed=0, num_classes=10)
    ceca = build("ecaresnet26t", num_classes=10, attn="ceca")
    ceca.load_state_dict(eca.state_dict())
    with torch.no_grad():
        assert not torch.allclose(eca(x), ceca(x))


def test_resnet_features_are_c2_to_c5():
    model = build("eca_resnet18", seed=0, num_classes=10)
    with torch.no_grad():
        feats = model.features(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "C2": (1, 64, 16, 16), "C3": (1, 128, 8, 8), "C4": (1, 256, 4, 4), "C5": (1, 512, 2, 2)}


# ---------------------------------------------------------------- errors

def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown torch reference model"):
        build("eca_resnet51")
    with pytest.raises(ValueError, match="attn"):
        build("ecaresnet50d", attn="se")
    bad = tmp_path / "bad.tsv"
    bad.write_text("conv1.weight\t64x3xseven\n")
    with pytest.raises(ValueError, match="unparsable shape"):
        read_state_dict_tsv(bad)
    bad.write_text("conv1.weight (64, 3)\n")
    with pytest.raises(ValueError, match="key<TAB>shape"):
        read_state_dict_tsv(bad)


def test_tsv_parser_formats(tmp_path):
    f = tmp_path / "x.tsv"
    f.write_text("# c\na\t(1, 1, 3)\nb\t(32,)\nc\t()\nd\t24x3x3x3\ne\t24\n")
    assert read_state_dict_tsv(f) == {"a": (1, 1, 3), "b": (32,), "c": (), "d": (24, 3, 3, 3),
                                      "e": (24,)}
