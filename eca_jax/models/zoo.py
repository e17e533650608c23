"""Registered architectures: the ECA release, its baselines, SE-ResNet-50 and timm's ECA ResNet-D family.

Each entrypoint fixes the architecture; keyword arguments override module attributes
(``k_size``, ``attn``, ``dtype``, ``width_mult`` ...). The release's default k per stage is the one
of its published checkpoints (ECA.md), not the code's [3, 3, 3, 3] default.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from eca_jax.models.mobilenet_v2 import MobileNetV2
from eca_jax.models.registry import ModelCfg, register_model
from eca_jax.models.resnet import ResNet

BASIC, BOTTLENECK = "basic", "bottleneck"
DEPTHS = {18: (BASIC, (2, 2, 2, 2)), 34: (BASIC, (3, 4, 6, 3)), 50: (BOTTLENECK, (3, 4, 6, 3)),
          101: (BOTTLENECK, (3, 4, 23, 3)), 152: (BOTTLENECK, (3, 8, 36, 3))}
RELEASE_K = {18: (3, 5, 7, 7), 34: (3, 3, 5, 7), 50: (3, 5, 5, 7), 101: (3, 3, 5, 7), 152: (3, 3, 5, 7)}
RELEASE_TOP1 = {18: 70.92, 34: 74.21, 50: 77.42, 101: 78.65, 152: 78.92}


def _entry(module_cls: type, name: str, cfg: ModelCfg, **arch: Any):
    """Registers ``name`` as ``module_cls(**arch, **overrides)``."""
    def build(num_classes: int = 1000, **overrides: Any):
        return module_cls(num_classes=num_classes, **{**arch, **overrides})
    build.__name__ = name
    build.__doc__ = f"{name}: {module_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in arch.items())})"
    build.module_class = module_cls
    return register_model(cfg)(build)


for _depth, (_block, _layers) in DEPTHS.items():
    _k = RELEASE_K[_depth]
    _entry(ResNet, f"eca_resnet{_depth}", ModelCfg(
        torch_layout="release", eca_k=_k, top1=RELEASE_TOP1[_depth],
        weights=f"eca_resnet{_depth}_k{''.join(map(str, _k))}.pth.tar"),
        block=_block, layers=_layers, attn="eca", attn_scope="eca", k_size=_k)
    _entry(ResNet, f"resnet{_depth}", ModelCfg(torch_layout="torchvision"), block=_block, layers=_layers)

_entry(ResNet, "se_resnet50", ModelCfg(torch_layout="release"),
       block=BOTTLENECK, layers=(3, 4, 6, 3), attn="se", attn_scope="se", attn_kwargs={"reduction": 16})

_entry(MobileNetV2, "eca_mobilenet_v2", ModelCfg(
    torch_layout="release", eca_k=(1,) * 10 + (3,) * 7, top1=72.56, weights="eca_mobilenetv2_k13.pth.tar"),
    layout="release", attn="eca")
_entry(MobileNetV2, "mobilenet_v2", ModelCfg(torch_layout="torchvision"), layout="torchvision")

# timm's ECA ResNet-D family: attention scope "se", adaptive k with k >= 3, bicubic eval; input and
# test sizes and crops as timm's pretrained_cfgs (tests/reference/timm_pretrained_cfgs.json).
_timm = partial(ModelCfg, torch_layout="timm", interpolation="bicubic", test_crop_pct=0.95)
_timm_arch = dict(block=BOTTLENECK, attn="eca", attn_scope="se", k_size="adaptive", attn_kwargs={"min_size": 3})
_entry(ResNet, "ecaresnet26t", _timm(input_size=256, test_input_size=320, eca_k=(5, 5, 5, 7)),
       layers=(2, 2, 2, 2), stem="deep_tiered", stem_width=32, avg_down=True, **_timm_arch)
_entry(ResNet, "ecaresnet50d", _timm(test_input_size=288, eca_k=(5, 5, 5, 7), top1=80.63),
       layers=(3, 4, 6, 3), stem="deep", stem_width=32, avg_down=True, **_timm_arch)
_entry(ResNet, "ecaresnet50t", _timm(input_size=256, test_input_size=320, eca_k=(5, 5, 5, 7), top1=82.37),
       layers=(3, 4, 6, 3), stem="deep_tiered", stem_width=32, avg_down=True, **_timm_arch)
_entry(ResNet, "ecaresnetlight", _timm(test_input_size=288, eca_k=(5, 5, 5, 7)),
       layers=(1, 1, 11, 3), stem="conv7", stem_width=64, avg_down=True, **_timm_arch)
_entry(ResNet, "ecaresnet101d", _timm(test_input_size=288, eca_k=(5, 5, 5, 7), top1=82.18),
       layers=(3, 4, 23, 3), stem="deep", stem_width=32, avg_down=True, **_timm_arch)
_entry(ResNet, "ecaresnet269d", _timm(input_size=320, test_input_size=352, crop_pct=0.95, test_crop_pct=1.0,
                                      eca_k=(5, 5, 5, 7), top1=84.97),
       layers=(3, 30, 48, 8), stem="deep", stem_width=32, avg_down=True, **_timm_arch)

# Small ResNets for 32x32 inputs (the digits main job, tests): 3x3 stem, no pool, 3 stages of basic blocks.
_small = dict(block=BASIC, layers=(1, 1, 1), widths=(16, 32, 64), stem="conv3", stem_width=16)
_entry(ResNet, "eca_resnet8_cifar", ModelCfg(input_size=32), attn="eca", attn_scope="eca", k_size=3, **_small)
_entry(ResNet, "resnet8_cifar", ModelCfg(input_size=32), **_small)
