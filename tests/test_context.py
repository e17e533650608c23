"""Table 3's other attentions (eca_jax.nn.context): CBAM and the GC block, as timm builds them.

Parameter counts: timm's own modules (timm 1.0.31, ``timm.layers.create_attn.get_attn("cbam")(C)``,
``get_attn("gc")(C)``, counted with ``sum(p.numel() for p in m.parameters())`` on 2026-11-30)
for the channel counts below; summed over ResNet-50's 16 blocks (3 x 256, 4 x 512, 6 x 1024,
3 x 2048) they are timm's CBAM / GC ResNet-50 attention parameters. Numerics: a PyTorch module
written here from the same definition (timm's key layout), with random weights and random
BatchNorm statistics, on random inputs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util

import eca_jax.nn as enn
from eca_jax.models import create_model
from eca_jax.models.summary import summarize

TIMM_COUNTS = {
    "cbam": {16: 132, 24: 196, 32: 228, 64: 612, 96: 1252, 128: 2148, 160: 3300, 256: 8292, 320: 12900,
             512: 32868, 1024: 131172, 2048: 524388},
    "gc": {16: 103, 24: 202, 32: 333, 64: 1177, 96: 2533, 128: 4401, 160: 6781, 256: 16993, 320: 26361,
           512: 66753, 1024: 264577, 2048: 1053441},
}
TIMM_RESNET50 = {"cbam": 2_516_544, "gc": 5_065_776, "se": 2_530_992}   # the same command, summed over blocks


class TorchCBAM(torch.nn.Module):
    """CBAM in timm's layout: channel.fc1/fc2 (1x1, no bias), spatial.conv.conv (7x7) + spatial.conv.bn."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.channel = torch.nn.Module()
        self.channel.fc1 = torch.nn.Conv2d(c, hidden, 1, bias=False)
        self.channel.fc2 = torch.nn.Conv2d(hidden, c, 1, bias=False)
        self.spatial = torch.nn.Module()
        self.spatial.conv = torch.nn.Module()
        self.spatial.conv.conv = torch.nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.spatial.conv.bn = torch.nn.BatchNorm2d(1)

    def forward(self, x):
        mlp = lambda y: self.channel.fc2(F.relu(self.channel.fc1(y)))   # noqa: E731
        x = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial.conv.bn(self.spatial.conv.conv(maps)))


class TorchGC(torch.nn.Module):
    """The GC block in timm's layout: conv_attn, mlp_<fuse>.fc1 / .norm (LayerNorm over channels) / .fc2."""

    def __init__(self, c: int, hidden: int, fuse: str):
        super().__init__()
        self.fuse = fuse
        self.conv_attn = torch.nn.Conv2d(c, 1, 1)
        mlp = torch.nn.Module()
        mlp.fc1, mlp.norm, mlp.fc2 = torch.nn.Conv2d(c, hidden, 1), torch.nn.LayerNorm(hidden, eps=1e-6), \
            torch.nn.Conv2d(hidden, c, 1)
        setattr(self, f"mlp_{fuse}", mlp)

    def forward(self, x):
        n, c, h, w = x.shape
        weights = torch.softmax(self.conv_attn(x).reshape(n, 1, h * w), -1)
        context = (x.reshape(n, c, h * w) * weights).sum(-1)[:, :, None, None]
        mlp = getattr(self, f"mlp_{self.fuse}")
        y = mlp.fc2(F.relu(mlp.norm(mlp.fc1(context).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)))
        return x * torch.sigmoid(y) if self.fuse == "scale" else x + y


def _randomize(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)


def _flax_variables(abstract, state_dict) -> dict:
    """timm-layout PyTorch tensors into the Flax tree (dotted module paths; 1x1 convs as Dense)."""
    names = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    out = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        tensor = state_dict[f"{path[1]}.{names[path[2]]}"].numpy()
        if path[2] == "kernel":
            tensor = tensor.transpose(2, 3, 1, 0) if leaf.ndim == 4 else tensor[:, :, 0, 0].T
        assert tensor.shape == leaf.shape, path
        out[path] = jnp.asarray(tensor)
    return traverse_util.unflatten_dict(out)


def _random_nchw(shape, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("name", ["cbam", "gc"])
@pytest.mark.parametrize("channels", sorted(TIMM_COUNTS["cbam"]))
def test_parameter_counts_equal_timm(name, channels):
    x = jax.ShapeDtypeStruct((1, 3, 3, channels), jnp.float32)
    params = jax.eval_shape(lambda: enn.make_attention(name).init(jax.random.key(0), jnp.zeros(x.shape)))["params"]
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == TIMM_COUNTS[name][channels]


@pytest.mark.parametrize("row,layer", [("CBAM", "cbam"), ("GC", "gc"), ("SE", "se")])
def test_resnet50_attention_params_equal_timm(row, layer):
    assert summarize(create_model("resnet50", attn=row), 224).attention_params == TIMM_RESNET50[layer]


@pytest.mark.parametrize("kind", ["cbam", "gc-scale", "gc-add"])
def test_eval_matches_pytorch(kind):
    channels = 48
    if kind == "cbam":
        torch_module, layer = TorchCBAM(channels, 3), enn.make_attention("cbam")
    else:
        fuse = kind.split("-")[1]
        torch_module, layer = TorchGC(channels, 6, fuse), enn.make_attention("gc", fuse=fuse)
    _randomize(torch_module.eval(), seed=1)
    x = _random_nchw((2, channels, 6, 5))
    abstract = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.zeros((2, 6, 5, channels))))
    variables = _flax_variables(abstract, torch_module.state_dict())
    got = np.asarray(layer.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = torch_module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cbam_trains_its_batchnorm_like_pytorch():
    """In training CBAM's spatial BatchNorm normalises with the batch and updates its statistics."""
    channels = 32
    torch_module, layer = TorchCBAM(channels, 2), enn.make_attention("cbam", train=True)
    _randomize(torch_module.train(), seed=2)
    x = _random_nchw((4, channels, 5, 5), seed=3)
    abstract = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.zeros((4, 5, 5, channels))))
    variables = _flax_variables(abstract, torch_module.state_dict())
    got, updates = layer.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), mutable=["batch_stats"])
    want = torch_module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-5)
    new_mean = updates["batch_stats"]["spatial.conv.bn"]["mean"]
    np.testing.assert_allclose(np.asarray(new_mean), torch_module.spatial.conv.bn.running_mean.numpy(), rtol=1e-5)


def test_resnet_block_passes_train_to_cbam():
    """A ResNet with CBAM updates the attention's BatchNorm statistics in training, not in eval."""
    model = create_model("resnet8_cifar", attn="CBAM")
    x = jnp.asarray(_random_nchw((4, 16, 16, 3), seed=4))
    variables = model.init(jax.random.key(0), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["layer1.0"]["eca"]["spatial.conv.bn"]["mean"]
    after = updates["batch_stats"]["layer1.0"]["eca"]["spatial.conv.bn"]["mean"]
    assert not np.allclose(before, after)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (4, 1000) and bool(jnp.isfinite(logits).all())


def test_bad_fuse_is_an_error():
    with pytest.raises(ValueError, match="fuse must be 'scale' or 'add'"):
        enn.make_attention("gc", fuse="mul").init(jax.random.key(0), jnp.ones((1, 2, 2, 16)))
