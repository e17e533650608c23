"""A minimal functional PyTorch forward pass over a state dict, for ``--verify``.

It runs the PyTorch side of a conversion with ``torch.nn.functional`` ops only (no model classes
from the release, timm or torchvision), driven by the architecture of the eca_jax module
(``ResNet`` / ``MobileNetV2`` attributes) and the state-dict keys. Eval mode, NCHW, float32:

- conv: ``F.conv2d`` with PyTorch's symmetric ``padding = k // 2``; BN: ``F.batch_norm`` with the
  running statistics, eps 1e-5; max pool 3x3/2 padding 1; ResNet-D shortcut
  ``F.avg_pool2d(2, 2, ceil_mode=True, count_include_pad=False)``;
- ECA: mean over H, W -> ``F.conv1d`` with the (1, 1, k) weight, zero padding (k - 1) // 2
  (circular for CECA) -> sigmoid gate; SE: two ``F.linear`` with ReLU, sigmoid gate.

Not a training implementation: no batch statistics, no dropout.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from eca_jax.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTINGS, MobileNetV2
from eca_jax.models.resnet import ResNet

BN_EPS = 1e-5
Tensors = Mapping[str, torch.Tensor]


def _conv(sd: Tensors, prefix: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    w = sd[f"{prefix}.weight"]
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(x, w, sd.get(f"{prefix}.bias"), stride=stride, padding=w.shape[-1] // 2, groups=groups)


def _bn(sd: Tensors, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=BN_EPS)


def _eca(sd: Tensors, prefix: str, x: torch.Tensor, circular: bool = False) -> torch.Tensor:
    w = sd[f"{prefix}.conv.weight"]                       # (1, 1, k)
    pad = (w.shape[-1] - 1) // 2
    y = x.mean(dim=(2, 3)).unsqueeze(1)                   # (N, 1, C)
    if circular and pad:
        y = F.conv1d(F.pad(y, (pad, pad), mode="circular"), w)
    else:
        y = F.conv1d(y, w, padding=pad)
    return x * torch.sigmoid(y).squeeze(1)[:, :, None, None]


def _se(sd: Tensors, prefix: str, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(F.linear(x.mean(dim=(2, 3)), sd[f"{prefix}.fc.0.weight"], sd.get(f"{prefix}.fc.0.bias")))
    y = F.linear(y, sd[f"{prefix}.fc.2.weight"], sd.get(f"{prefix}.fc.2.bias"))
    return x * torch.sigmoid(y)[:, :, None, None]


def _attention(model: ResNet, sd: Tensors, prefix: str, y: torch.Tensor) -> torch.Tensor:
    if model.attn is None:
        return y
    where = f"{prefix}.{model.attn_scope}"
    if model.attn in ("eca", "ceca"):
        return _eca(sd, where, y, circular=model.attn == "ceca")
    if model.attn == "se":
        return _se(sd, where, y)
    raise NotImplementedError(f"torch_forward: attention {model.attn!r} has no PyTorch layout")


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2, 1)


def resnet_forward(model: ResNet, sd: Tensors, x: torch.Tensor) -> torch.Tensor:
    """Logits of a ResNet state dict ``sd`` for NCHW ``x``, structure from the eca_jax ``model``."""
    if model.stem in ("conv7", "conv3"):
        x = F.relu(_bn(sd, "bn1", _conv(sd, "conv1", x, 2 if model.stem == "conv7" else 1)))
        x = _max_pool(x) if model.stem == "conv7" else x
    else:
        x = F.relu(_bn(sd, "conv1.1", _conv(sd, "conv1.0", x, 2)))
        x = F.relu(_bn(sd, "conv1.4", _conv(sd, "conv1.3", x)))
        x = _max_pool(F.relu(_bn(sd, "bn1", _conv(sd, "conv1.6", x))))
    for stage, blocks in enumerate(model.layers, start=1):
        for index in range(blocks):
            p = f"layer{stage}.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            if model.block == "bottleneck":
                y = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x)))
                y = F.relu(_bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", y, stride)))
                y = _bn(sd, f"{p}.bn3", _conv(sd, f"{p}.conv3", y))
            else:
                y = F.relu(_bn(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x, stride)))
                y = _bn(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", y))
            y = _attention(model, sd, p, y)
            if f"{p}.downsample.0.weight" in sd:
                shortcut = _bn(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", x, stride))
            elif f"{p}.downsample.1.weight" in sd:
                pooled = x if stride == 1 else F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
                shortcut = _bn(sd, f"{p}.downsample.2", _conv(sd, f"{p}.downsample.1", pooled))
            else:
                shortcut = x
            x = F.relu(y + shortcut)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def mobilenet_v2_forward(model: MobileNetV2, sd: Tensors, x: torch.Tensor) -> torch.Tensor:
    """Logits of a MobileNetV2 state dict (release or torchvision layout) for NCHW ``x``."""
    x = F.relu6(_bn(sd, "features.0.1", _conv(sd, "features.0.0", x, 2)))
    index = 1
    for t, _, n, s in INVERTED_RESIDUAL_SETTINGS:
        for repeat in range(n):
            p, stride = f"features.{index}.conv", s if repeat == 0 else 1
            y, i = x, 0
            if t != 1:
                y, i = F.relu6(_bn(sd, f"{p}.0.1", _conv(sd, f"{p}.0.0", y))), 1
            y = F.relu6(_bn(sd, f"{p}.{i}.1", _conv(sd, f"{p}.{i}.0", y, stride)))
            y = _bn(sd, f"{p}.{i + 2}", _conv(sd, f"{p}.{i + 1}", y))
            if f"{p}.{i + 3}.conv.weight" in sd:
                y = _eca(sd, f"{p}.{i + 3}", y)
            x = x + y if stride == 1 and x.shape[1] == y.shape[1] else y
            index += 1
    x = F.relu6(_bn(sd, f"features.{index}.1", _conv(sd, f"features.{index}.0", x)))
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


@torch.no_grad()
def forward(model, state_dict: Mapping[str, object], x_nchw: torch.Tensor) -> torch.Tensor:
    """Logits (N, num_classes) of the PyTorch state dict for the eca_jax architecture ``model``.

    ``state_dict`` values may be NumPy arrays or tensors (cast to float32); ``x_nchw`` float32.
    """
    sd = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}
    if isinstance(model, ResNet):
        return resnet_forward(model, sd, x_nchw.float())
    if isinstance(model, MobileNetV2):
        return mobilenet_v2_forward(model, sd, x_nchw.float())
    raise NotImplementedError(f"torch_forward: no PyTorch forward for {type(model).__name__}")
