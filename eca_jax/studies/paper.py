"""The ECA paper's own ImageNet top-1 for each row, copied to print beside our runs.

Source: Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
CVPR 2020: Table 2 (ResNet-50 ablations) and Table 3 (ECA-Net, SENet and vanilla on ResNet-50,
ResNet-101 and MobileNetV2; CBAM and GCNet on ResNet-50). The paper's GCNet row is the GCNet
authors' block; this project's "GC" row is timm's module, so its figure is only indicative. Figure 4's per-k values are only drawn in the figure, so the k-sweep rows have
no number except where a table gives the same setting (k = 3 on ResNet-50 is Table 2's ECA row;
the adaptive k is Table 3's ECA-Net). These are the paper's figures, never results of this code.
"""
from __future__ import annotations

from typing import Optional

# {backbone: {row name: (top-1 %, where in the paper)}}
PAPER_TOP1: dict[str, dict[str, tuple[float, str]]] = {
    "resnet50": {
        "vanilla": (75.20, "Table 2"),
        "SE": (76.71, "Table 2"),
        "SE-Var1": (76.00, "Table 2"),
        "SE-Var2": (77.07, "Table 2"),
        "SE-Var3": (77.42, "Table 2"),
        "SE-GC1": (76.95, "Table 2"),
        "SE-GC2": (76.98, "Table 2"),
        "SE-GC3": (76.96, "Table 2"),
        "ECA-NS": (77.35, "Table 2"),
        "ECA": (77.43, "Table 2"),
        "ECA-k3": (77.43, "Table 2, ECA k = 3"),
        "ECA-adaptive": (77.48, "Table 3, ECA-Net"),
        "CBAM": (77.34, "Table 3"),
        "GC": (77.70, "Table 3, GCNet"),
    },
    "resnet101": {
        "vanilla": (76.83, "Table 3"),
        "SE": (77.62, "Table 3"),
        "ECA-adaptive": (78.65, "Table 3, ECA-Net"),
    },
    "mobilenet_v2": {
        "vanilla": (71.64, "Table 3"),
        "SE-r8": (72.42, "Table 3, SENet r = 8"),
        "ECA": (72.56, "Table 3, ECA-Net"),
    },
}


def paper_backbone(model_name: str) -> str:
    """The paper's backbone a model's numbers are compared with: MobileNetV2, ResNet-101 for *101*,
    else ResNet-50."""
    if "mobilenet" in model_name:
        return "mobilenet_v2"
    return "resnet101" if "101" in model_name else "resnet50"


def paper_top1(row: str, backbone: str = "resnet50") -> Optional[float]:
    """The paper's ImageNet top-1 (%) of ``row`` on ``backbone``, or None if it gives none."""
    entry = PAPER_TOP1.get(backbone, {}).get(row)
    return entry[0] if entry else None
