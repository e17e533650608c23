"""Independent PyTorch reference models for the eca_jax tests (CPU, float32, NCHW).

Written from the facts of the project's reference notes (ECA.md) and the state-dict key listings
copied into ``tests/reference/``;
no code of the ECA-Net release, timm or torchvision is used (torchvision is not even installed).
The only contract with those projects is the ``state_dict()`` layout: every model here produces
exactly the keys (in the same order) and shapes of the corresponding published checkpoint, so the
converter can be tested against real key names without downloading anything.

Families (all logits of shape ``(N, num_classes)`` for an input of shape ``(N, 3, H, W)``):

* ``eca_resnet18/34/50/101/152`` -- the official ECA-Net release (attention attribute ``eca``,
  per-stage kernel sizes ``k_size``), and ``resnet18/34/50/101/152`` -- the same nets without ECA
  (torchvision layout).  ``se_resnet50`` -- SE block ``se.fc.{0,2}`` in the ECA position.
* ``eca_mobilenet_v2`` -- the official ECA-MobileNetV2; ``mobilenet_v2`` -- torchvision layout.
* ``ecaresnet26t/50d/50t/101d/269d`` and ``ecaresnetlight`` -- timm's ResNet-D ECA family
  (attention attribute ``se``, adaptive kernel size with a minimum of 3).

Public API: :func:`build`, :data:`TORCH_MODELS`, :func:`randomize_`, :func:`random_images`,
:func:`param_count`, :func:`eca_kernel_size`, :func:`read_state_dict_tsv`,
:func:`state_dict_shapes`, :func:`reference_dir`; modules :class:`EcaGate`, :class:`SEGate`,
:class:`ResNet`, :class:`MobileNetV2`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TORCH_MODELS",
    "build",
    "randomize_",
    "random_images",
    "param_count",
    "eca_kernel_size",
    "read_state_dict_tsv",
    "state_dict_shapes",
    "reference_dir",
    "EcaGate",
    "SEGate",
    "ResNet",
    "MobileNetV2",
]

# --------------------------------------------------------------------------------------------
# Attention gates
# --------------------------------------------------------------------------------------------


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1, min_k: int = 1) -> int:
    """Adaptive ECA kernel size (paper Eq. 12): nearest odd of ``|log2(C) + b| / gamma``.

    ``min_k=3`` reproduces timm's clamp (only matters for C < 8).
    """
    if channels < 1:
        raise ValueError(f"eca_kernel_size: channels must be >= 1, got {channels}")
    t = int(abs((math.log2(channels) + b) / gamma))
    k = t if t % 2 else t + 1
    return max(k, min_k)


class EcaGate(nn.Module):
    """Efficient Channel Attention on an NCHW tensor.

    y = mean_{H,W}(x) -> (N, C); w = sigmoid(conv1d_k(y)) with one shared (1, 1, k) kernel sliding
    over the channel axis (zero padding (k-1)//2 on both ends, or circular padding for CECA);
    returns x * w[:, :, None, None].  Key: ``conv.weight`` of shape (1, 1, k).
    """

    def __init__(self, k: int, circular: bool = False):
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ValueError(f"EcaGate: kernel size must be a positive odd int, got {k}")
        self.circular = circular
        self.pad = (k - 1) // 2
        self.conv = nn.Conv1d(1, 1, k, padding=0 if circular else self.pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, C)
        if self.circular and self.pad:
            y = F.pad(y, (self.pad, self.pad), mode="circular")
        w = torch.sigmoid(self.conv(y)).squeeze(1)  # (N, C)
        return x * w[:, :, None, None]


class SEGate(nn.Module):
    """Squeeze-and-Excitation: x * sigmoid(fc2(relu(fc1(mean_{H,W} x)))), C -> C//r -> C.

    Keys: ``fc.0.{weight,bias}`` (C//r, C), ``fc.2.{weight,bias}`` (C, C//r).
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True):
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=bias), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


# A gate factory maps (stage index 0..3, block output channels) -> nn.Module or None.
GateFactory = Callable[[int, int], "nn.Module | None"]


def _fixed_eca(k_size: Sequence[int]) -> GateFactory:
    if len(k_size) != 4:
        raise ValueError(f"k_size needs one kernel size per stage (4), got {list(k_size)}")
    return lambda stage, ch: EcaGate(int(k_size[stage]))


def _adaptive_eca(circular: bool = False) -> GateFactory:
    return lambda stage, ch: EcaGate(eca_kernel_size(ch, min_k=3), circular=circular)


# --------------------------------------------------------------------------------------------
# ResNet family
# --------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with PyTorch's symmetric padding k//2."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class BasicBlock(nn.Module):
    """3x3(stride)-BN-ReLU-3x3-BN-[gate] + shortcut, ReLU.  Attribute order = state-dict order."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None,
                 gate: nn.Module | None, gate_name: str):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.gate_name = gate_name
        if gate is not None:
            self.add_module(gate_name, gate)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        gate = getattr(self, self.gate_name, None)
        if gate is not None:
            out = gate(out)
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short)


class Bottleneck(BasicBlock):
    """1x1-BN-ReLU-3x3(stride)-BN-ReLU-1x1-BN-[gate] + shortcut, ReLU (stride on the 3x3)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None,
                 gate: nn.Module | None, gate_name: str):
        nn.Module.__init__(self)
        out = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, out, 1)
        self.bn3 = nn.BatchNorm2d(out)
        self.gate_name = gate_name
        if gate is not None:
            self.add_module(gate_name, gate)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))


def _shortcut(cin: int, cout: int, stride: int, avg_down: bool) -> nn.Module:
    """Projection shortcut: conv1x1(stride)+BN (keys .0/.1) or, ResNet-D style,
    AvgPool2d(2, stride, ceil_mode, no pad counting) | Identity, conv1x1, BN (keys .1/.2)."""
    if not avg_down:
        return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
    pool: nn.Module = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                       if stride != 1 else nn.Identity())
    return nn.Sequential(pool, _conv(cin, cout, 1), nn.BatchNorm2d(cout))


def _stem(kind: str, stem_width: int) -> tuple[nn.Module, int]:
    """Returns (conv1 module, its output channels).  'plain': 7x7/2 conv to 64.
    'deep': 3x3/2 (3->w), 3x3 (w->w), 3x3 (w->2w); 'deep_tiered': 3->3w/4, 3w/4->w, w->2w.
    Deep stems are Sequential(conv, BN, ReLU, conv, BN, ReLU, conv): keys conv1.0/1/3/4/6."""
    if kind == "plain":
        return _conv(3, 64, 7, 2), 64
    if kind not in ("deep", "deep_tiered"):
        raise ValueError(f"unknown stem {kind!r}; expected 'plain', 'deep' or 'deep_tiered'")
    c0, c1 = ((3 * stem_width // 4, stem_width) if kind == "deep_tiered"
              else (stem_width, stem_width))
    cout = 2 * stem_width
    conv1 = nn.Sequential(
        _conv(3, c0, 3, 2), nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
        _conv(c0, c1, 3), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        _conv(c1, cout, 3),
    )
    return conv1, cout


class ResNet(nn.Module):
    """ResNet (torchvision / ECA release / timm ResNet-D layouts), NCHW input -> logits.

    Args:
      block: BasicBlock or Bottleneck.  layers: blocks per stage.
      gate: factory (stage, out_channels) -> gate module or None; stored under ``gate_name``.
      stem: 'plain' | 'deep' | 'deep_tiered'; stem_width for the deep stems.
      avg_down: ResNet-D average-pool shortcut.
    """

    def __init__(self, block: type[BasicBlock], layers: Sequence[int], num_classes: int = 1000,
                 gate: GateFactory | None = None, gate_name: str = "eca", stem: str = "plain",
                 stem_width: int = 64, avg_down: bool = False):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        self.conv1, cin = _stem(stem, stem_width)
        self.bn1 = nn.BatchNorm2d(cin)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            cout = planes * block.expansion
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = (_shortcut(cin, cout, s, avg_down) if j == 0 and (s != 1 or cin != cout)
                        else None)
                g = gate(i, cout) if gate is not None else None
                blocks.append(block(cin, planes, s, down, g, gate_name))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs C2..C5 (strides 4, 8, 16, 32), NCHW."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out[f"C{i + 2}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)["C5"].mean(dim=(2, 3)))


_RESNET_LAYERS = {
    18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
# Kernel sizes of the released ECA checkpoints (k3577, k3357, k3557).
_RELEASE_K = {18: (3, 5, 7, 7), 34: (3, 3, 5, 7), 50: (3, 5, 5, 7), 101: (3, 3, 5, 7),
              152: (3, 3, 5, 7)}


def _resnet(depth: int, num_classes: int = 1000, **kw) -> ResNet:
    block, layers = _RESNET_LAYERS[depth]
    return ResNet(block, layers, num_classes=num_classes, **kw)


def _eca_resnet(depth: int) -> Callable[..., ResNet]:
    def ctor(k_size: Sequence[int] = _RELEASE_K[depth], num_classes: int = 1000) -> ResNet:
        return _resnet(depth, num_classes, gate=_fixed_eca(k_size), gate_name="eca")
    ctor.__name__ = f"eca_resnet{depth}"
    ctor.__doc__ = f"Official ECA-ResNet-{depth} (release layout, attention key ``eca``)."
    return ctor


def _plain_resnet(depth: int) -> Callable[..., ResNet]:
    def ctor(num_classes: int = 1000) -> ResNet:
        return _resnet(depth, num_classes)
    ctor.__name__ = f"resnet{depth}"
    ctor.__doc__ = f"ResNet-{depth} without attention (torchvision layout)."
    return ctor


def se_resnet50(num_classes: int = 1000, reduction: int = 16, bias: bool = True) -> ResNet:
    """ResNet-50 with an SE block (key ``se``) after bn3, before the residual add."""
    return _resnet(50, num_classes, gate=lambda s, ch: SEGate(ch, reduction, bias),
                   gate_name="se")


def _timm_gate(attn: str | None) -> GateFactory | None:
    if attn is None or attn == "none":
        return None
    if attn not in ("eca", "ceca"):
        raise ValueError(f"attn must be 'eca', 'ceca' or None, got {attn!r}")
    return _adaptive_eca(circular=attn == "ceca")


def _timm_resnet(name: str, layers: Sequence[int], stem: str,
                 stem_width: int = 32) -> Callable[..., ResNet]:
    def ctor(num_classes: int = 1000, attn: str | None = "eca") -> ResNet:
        return ResNet(Bottleneck, layers, num_classes=num_classes, gate=_timm_gate(attn),
                      gate_name="se", stem=stem, stem_width=stem_width, avg_down=True)
    ctor.__name__ = name
    ctor.__doc__ = (f"timm {name}: Bottleneck {tuple(layers)}, {stem} stem, avg-pool shortcut, "
                    f"adaptive ECA (k >= 3) under key ``se``; attn='ceca' for circular padding.")
    return ctor


# --------------------------------------------------------------------------------------------
# MobileNetV2 family
# --------------------------------------------------------------------------------------------

# (expansion t, output channels c, repeats n, first stride s)
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """Sequential(conv, BN, ReLU6): keys .0 / .1."""
    return nn.Sequential(_conv(cin, cout, k, stride, groups), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round v to the nearest multiple of divisor, never going below 90% of v."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class InvertedResidual(nn.Module):
    """MobileNetV2 block in one Sequential ``conv``: [pw expand ConvBNReLU6] (t != 1),
    dw ConvBNReLU6, pw-linear conv, BN, [ECA]; + x when stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, eca_k: int | None):
        super().__init__()
        hidden = int(round(cin * t))
        self.use_res = stride == 1 and cin == cout
        mods: list[nn.Module] = []
        if t != 1:
            mods.append(_conv_bn_relu6(cin, hidden, 1))
        mods += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                 _conv(hidden, cout, 1), nn.BatchNorm2d(cout)]
        if eca_k is not None:
            mods.append(EcaGate(eca_k))
        self.conv = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    """MobileNetV2, NCHW -> logits.  ``features.0`` stem, ``features.1..17`` blocks,
    ``features.18`` 1x1 ConvBNReLU6 to the last channel, mean pool, ``classifier`` =
    Dropout + Linear (key ``classifier.1``).

    official_eca=True: ECA release (int(c*wm) widths, last int(1280*max(1, wm)), ECA in every
    block with k = 1 if the unscaled c < 96 else 3).  Otherwise torchvision (make_divisible(8)).
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 official_eca: bool = False, dropout: float | None = None):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if official_eca:
            rnd: Callable[[float], int] = int
            dropout = 0.25 if dropout is None else dropout
        else:
            rnd = make_divisible
            dropout = 0.2 if dropout is None else dropout
        scale = lambda c: rnd(c * width_mult)  # noqa: E731
        cin = scale(32)
        last = rnd(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [_conv_bn_relu6(3, cin, 3, 2)]
        for t, c, n, s in _MBV2_SETTINGS:
            cout = scale(c)
            k = (1 if c < 96 else 3) if official_eca else None
            for j in range(n):
                feats.append(InvertedResidual(cin, cout, s if j == 0 else 1, t, k))
                cin = cout
        feats.append(_conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        self.num_features = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def eca_mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000,
                     dropout: float = 0.25) -> MobileNetV2:
    """Official ECA-MobileNetV2 (release layout, ``features.N.conv.{3,4}.conv.weight``)."""
    return MobileNetV2(num_classes, width_mult, official_eca=True, dropout=dropout)


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000,
                 dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 without attention (torchvision layout)."""
    return MobileNetV2(num_classes, width_mult, official_eca=False, dropout=dropout)


# --------------------------------------------------------------------------------------------
# Registry and helpers
# --------------------------------------------------------------------------------------------

TORCH_MODELS: dict[str, Callable[..., nn.Module]] = {}
for _d in (18, 34, 50, 101, 152):
    TORCH_MODELS[f"eca_resnet{_d}"] = _eca_resnet(_d)
    TORCH_MODELS[f"resnet{_d}"] = _plain_resnet(_d)
TORCH_MODELS.update({
    "se_resnet50": se_resnet50,
    "eca_mobilenet_v2": eca_mobilenet_v2,
    "mobilenet_v2": mobilenet_v2,
    "ecaresnet26t": _timm_resnet("ecaresnet26t", (2, 2, 2, 2), "deep_tiered"),
    "ecaresnet50d": _timm_resnet("ecaresnet50d", (3, 4, 6, 3), "deep"),
    "ecaresnet50t": _timm_resnet("ecaresnet50t", (3, 4, 6, 3), "deep_tiered"),
    "ecaresnetlight": _timm_resnet("ecaresnetlight", (1, 1, 11, 3), "plain", stem_width=64),
    "ecaresnet101d": _timm_resnet("ecaresnet101d", (3, 4, 23, 3), "deep"),
    "ecaresnet269d": _timm_resnet("ecaresnet269d", (3, 30, 48, 8), "deep"),
})


def build(name: str, seed: int | None = None, **kw) -> nn.Module:
    """Construct the reference model ``name`` (see :data:`TORCH_MODELS`) in eval mode.

    With ``seed``, the model comes back already filled by :func:`randomize_` (built on the meta
    device first, which skips PyTorch's default init: about 1 s saved on the 100M-param nets).
    ``kw`` goes to the constructor (num_classes, k_size, width_mult, attn, ...).
    """
    if name not in TORCH_MODELS:
        raise KeyError(f"unknown torch reference model {name!r}; known: {sorted(TORCH_MODELS)}")
    if seed is None:
        return TORCH_MODELS[name](**kw).eval()
    with torch.device("meta"):
        model = TORCH_MODELS[name](**kw)
    return randomize_(model.to_empty(device="cpu"), seed).eval()


def param_count(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, residual_gain: float | None = None) -> nn.Module:
    """Fill every parameter and BatchNorm buffer with random, non-trivial values, in place.

    * Conv2d weights ~ N(0, 2/fan_in) (He: nearly every conv follows a ReLU), Linear weights
      ~ N(0, 1/fan_in), all biases ~ N(0, 0.1); ECA Conv1d kernels ~ N(0, 0.5).
    * BatchNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), running_mean ~ N(0, 0.3),
      running_var ~ U(0.5, 2), num_batches_tracked ~ U{1..1000}.
    * The last conv of every ResNet residual branch is further scaled by ``residual_gain``
      (default 1/sqrt(number of residual blocks)).  Eval-mode BN with random running stats does
      not renormalise, so undamped branches grow activations geometrically with depth (plain
      ResNet-152: logits ~1e3); damped, logits stay O(1)-O(10) from ResNet-18 to ResNet-269d.

    Deterministic for a given ``seed`` and model.  Raises TypeError for a parameterised module
    type it has no rule for.  Returns ``model``.

    Tip: pooled features of i.i.d. Gaussian images barely differ between images; use
    :func:`random_images` for inputs whose logits differ clearly from one image to the next.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d):
            normal(m.weight, 0.5)
        elif isinstance(m, nn.Conv2d):
            normal(m.weight, math.sqrt(2.0 / m.weight[0].numel()))
        elif isinstance(m, nn.Linear):
            normal(m.weight, math.sqrt(1.0 / m.weight.shape[1]))
        elif isinstance(m, nn.BatchNorm2d):
            uniform(m.weight, 0.5, 1.5)
            normal(m.running_mean, 0.3)
            uniform(m.running_var, 0.5, 2.0)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1001, (1,), generator=g)))
        elif any(True for _ in m.parameters(recurse=False)):
            raise TypeError(f"randomize_: no rule for {type(m).__name__} at {name!r}")
        bias = getattr(m, "bias", None)
        if isinstance(bias, torch.Tensor):
            normal(bias, 0.1)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]  # Bottleneck included
    if blocks:
        gain = 1.0 / math.sqrt(len(blocks)) if residual_gain is None else residual_gain
        for b in blocks:
            (b.conv3 if isinstance(b, Bottleneck) else b.conv2).weight.mul_(gain)
    return model


def random_images(n: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Random float32 NCHW images (n, 3, H, W) that differ from each other in more than noise.

    Each image is a smooth random field (an 8x8 grid upsampled bilinearly) plus pixel noise,
    with its own per-channel scale (0.5..2) and offset (N(0, 0.5)), roughly like normalised
    photos.  Transpose with ``.permute(0, 2, 3, 1)`` for NHWC.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"random_images: need n, H, W >= 1, got n={n}, size={size}")
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=(h, w), mode="bilinear",
                           align_corners=False)
    x = smooth + 0.3 * torch.randn(n, 3, h, w, generator=g)
    scale = 0.5 + 1.5 * torch.rand(n, 3, 1, 1, generator=g)
    return x * scale + 0.5 * torch.randn(n, 3, 1, 1, generator=g)


# --------------------------------------------------------------------------------------------
# Reference key listings
# --------------------------------------------------------------------------------------------


def reference_dir() -> Path:
    """Folder of the ``*_state_dict.tsv`` listings: tests/reference/ inside the checkout.

    Each file's header names its source. Nothing outside the repository is read.
    """
    folder = Path(__file__).resolve().parent / "reference"
    if not any(folder.glob("*_state_dict.tsv")):
        raise FileNotFoundError(f"no *_state_dict.tsv listings in {folder}")
    return folder


def read_state_dict_tsv(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Parse a ``key<TAB>shape`` listing; '#' lines are comments.

    Shapes may be written '(A, B, C)' / '(A,)' / '()' (official listings) or 'AxBxC' / 'A'
    (timm listings).  Returns an insertion-ordered {key: shape tuple}.
    """
    out: dict[str, tuple[int, ...]] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key, shape = line.split("\t")
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected 'key<TAB>shape', got {line!r}") from None
        dims = [d for d in re.split(r"[x,()\s]+", shape) if d]
        if not all(d.isdigit() for d in dims):
            raise ValueError(f"{path}:{lineno}: unparsable shape {shape!r}")
        out[key] = tuple(int(d) for d in dims)
    return out


def state_dict_shapes(model: nn.Module, with_num_batches_tracked: bool = True
                      ) -> dict[str, tuple[int, ...]]:
    """Insertion-ordered {state-dict key: shape} of ``model``."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if with_num_batches_tracked or not k.endswith("num_batches_tracked")}
