"""Which eca_jax model a PyTorch state dict belongs to, read from its keys and shapes alone.

What is read (never the file name, never the wrapper's ``arch`` field):

- family: ``features.*`` + ``classifier.1`` -> MobileNetV2; ``conv1*`` + ``layer<i>.<j>.*`` -> ResNet.
- ResNet: blocks per stage (``layer<i>.<j>`` counts), bottleneck vs basic (``conv3`` present),
  stage widths (``layer<i>.0.conv1`` out channels), stem (``conv1.weight`` 7x7 -> 7x7 stem, 3x3 ->
  the small 3x3 stem; ``conv1.0/.3/.6`` -> deep stem, 'deep_tiered' when ``conv1.0`` has fewer
  output channels than ``conv1.3`` (24 vs 32), stem width from ``conv1.3``), shortcut
  (``downsample.0`` conv -> strided 1x1; ``downsample.1`` conv + ``.2`` BN -> ResNet-D avg-pool),
  attention (the block attribute holding ``conv.weight`` of shape (1, 1, k) -> ECA under that name,
  ``eca`` in the release, ``se`` in timm; ``fc.0``/``fc.2`` -> SE with reduction C / hidden).
- MobileNetV2: ECA keys (``features.N.conv.{3,4}.conv.weight``) -> the release's ECA-MobileNetV2,
  none -> torchvision's; the width multiplier is found by trying the usual values when the
  channel counts are not those of width 1.0.
- k of every ECA layer from its (1, 1, k) weight. ResNets take one k per stage (every released
  and timm checkpoint has one k per stage); a file whose k changes inside a stage is refused with
  the offending keys, since the model has no per-block k. MobileNetV2 takes the release's rule
  (1 below 96 channels, else 3), one k for all blocks, or the adaptive rule.
- number of classes from ``fc.weight`` / ``classifier.1.weight``.

The structure is matched against every registered model; exactly one must match (none: the error
lists the closest models and how they differ; several: the error lists them and asks for
``arch=``). :mod:`eca_jax.checkpoints.torch_resolve` then builds it with the k the weights have and
compares its own parameter shapes key by key (strict).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import flax.linen as nn

from eca_jax.checkpoints.errors import AmbiguousArchitectureError, ConversionError, UnknownArchitectureError
from eca_jax.models import MobileNetV2, ResNet, create_model, list_models

Shapes = Mapping[str, tuple]
HEADS = {ResNet: "fc", MobileNetV2: "classifier.1"}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")
_ECA_KEY = re.compile(r"^(.*)\.conv\.weight$")


def head_prefix(module: nn.Module) -> str:
    """The PyTorch module path of the classifier: ``fc`` (ResNets) or ``classifier.1`` (MobileNetV2)."""
    for cls, prefix in HEADS.items():
        if isinstance(module, cls):
            return prefix
    raise ConversionError(f"{type(module).__name__} has no PyTorch layout in eca_jax.convert "
                          f"(supported: {', '.join(c.__name__ for c in HEADS)}).")


def eca_kernels(shapes: Shapes) -> dict[str, int]:
    """{PyTorch module path of an ECA conv, e.g. ``layer1.0.eca.conv``: k} from (1, 1, k) weights."""
    out = {}
    for key, shape in shapes.items():
        m = _ECA_KEY.match(key)
        if m and len(shape) == 3 and shape[:2] == (1, 1):
            out[key[:-len(".weight")]] = int(shape[2])
    return out


# ------------------------------------------------------------------------------------------------
# Structure read from the keys
# ------------------------------------------------------------------------------------------------

def _family(shapes: Shapes) -> str:
    resnet = "fc.weight" in shapes or any(_BLOCK.match(k) for k in shapes) or "conv1.weight" in shapes
    mobilenet = any(k.startswith(("features.", "classifier.")) for k in shapes)
    if resnet and mobilenet:
        examples = [k for k in shapes if _BLOCK.match(k) or k.startswith(("conv1", "fc."))][:2] + \
                   [k for k in shapes if k.startswith(("features.", "classifier."))][:2]
        raise AmbiguousArchitectureError(
            "Ambiguous architecture: the state dict has keys of both a ResNet (conv1/layer<i>/fc) and a "
            f"MobileNetV2 (features/classifier), e.g. {examples}. Is it two models merged? Pass arch= to "
            "choose one (then every key must fit it).")
    if mobilenet:
        return "mobilenet_v2"
    if resnet:
        return "resnet"
    raise UnknownArchitectureError(f"Unknown architecture: the keys {list(shapes)[:6]} are neither a ResNet's "
                                   "(conv1, layer1.0..., fc) nor a MobileNetV2's (features..., classifier.1).")


def _block_attention(shapes: Shapes, block: str) -> Optional[tuple]:
    """(kind, attribute name, SE reduction) of the attention inside block ``layerI.J``, or None."""
    standard = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"}
    names = {k[len(block) + 1:].split(".")[0] for k in shapes if k.startswith(block + ".")} - standard
    if not names:
        return None
    if len(names) > 1:
        raise UnknownArchitectureError(f"Block {block} has several extra submodules {sorted(names)}; "
                                       "expected at most one attention module.")
    attr = names.pop()
    if len(shapes.get(f"{block}.{attr}.conv.weight", ())) == 3:
        return ("eca", attr, None)
    fc0 = shapes.get(f"{block}.{attr}.fc.0.weight")
    if fc0 is not None and len(fc0) == 2 and fc0[0] > 0:
        return ("se", attr, fc0[1] // fc0[0])
    keys = [k for k in shapes if k.startswith(f"{block}.{attr}.")]
    raise UnknownArchitectureError(f"Block {block} has an attention module {attr!r} of unknown kind "
                                   f"(keys {keys[:4]}); known: ECA (conv.weight (1, 1, k)), SE (fc.0/fc.2).")


def describe_resnet(shapes: Shapes) -> dict:
    """The ResNet structure of a state dict: block, layers, widths, stem, stem_width, avg_down, attention."""
    blocks: dict[int, set] = {}
    for key in shapes:
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if not stages or stages != list(range(1, len(stages) + 1)):
        raise UnknownArchitectureError(f"ResNet stages must be layer1..layerN; found layers {stages}.")
    for s in stages:
        if sorted(blocks[s]) != list(range(len(blocks[s]))):
            raise UnknownArchitectureError(f"layer{s} has blocks {sorted(blocks[s])}: not numbered 0..n-1.")
    desc: dict[str, Any] = {"family": "resnet", "layers": tuple(len(blocks[s]) for s in stages)}
    desc["block"] = "bottleneck" if "layer1.0.conv3.weight" in shapes else "basic"
    try:
        desc["widths"] = tuple(int(shapes[f"layer{s}.0.conv1.weight"][0]) for s in stages)
    except KeyError as e:
        raise UnknownArchitectureError(f"ResNet block without conv1: missing {e.args[0]!r}.") from None
    if "conv1.0.weight" in shapes:
        first, second = shapes["conv1.0.weight"], shapes.get("conv1.3.weight")
        if second is None or "conv1.6.weight" not in shapes:
            raise UnknownArchitectureError("Deep stem conv1.0 without conv1.3/conv1.6.")
        desc["stem"] = "deep_tiered" if first[0] < second[0] else "deep"
        desc["stem_width"], desc["in_chans"] = int(second[0]), int(first[1])
    elif len(shapes.get("conv1.weight", ())) == 4:
        w = shapes["conv1.weight"]
        stems = {7: "conv7", 3: "conv3"}
        if w[2] not in stems:
            raise UnknownArchitectureError(f"Stem conv1.weight has a {w[2]}x{w[3]} kernel; expected 7x7 or 3x3.")
        desc["stem"], desc["stem_width"], desc["in_chans"] = stems[w[2]], int(w[0]), int(w[1])
    else:
        raise UnknownArchitectureError("ResNet without a stem: neither conv1.weight nor conv1.0.weight.")
    if any(k.endswith(".downsample.2.running_mean") for k in shapes):
        desc["avg_down"] = True
    elif any(k.endswith(".downsample.1.running_mean") for k in shapes):
        desc["avg_down"] = False
    else:
        desc["avg_down"] = None        # no projection shortcut at all: either fits
    attention = {_block_attention(shapes, f"layer{s}.{j}") for s in stages for j in range(len(blocks[s]))}
    if len(attention) > 1:
        raise UnknownArchitectureError(f"Blocks differ in their attention modules ({sorted(map(str, attention))}); "
                                       "eca_jax's ResNets put the same attention in every block.")
    kind = attention.pop()
    desc["attn"], desc["attn_scope"], desc["reduction"] = kind if kind else (None, None, None)
    fc = shapes.get("fc.weight")
    desc["num_classes"] = int(fc[0]) if fc is not None and len(fc) == 2 else None
    return desc


def describe_mobilenet_v2(shapes: Shapes) -> dict:
    """The MobileNetV2 structure: ECA or not, stem and last-block channels, classes."""
    head = shapes.get("classifier.1.weight")
    has_eca = any(re.match(r"^features\.\d+\.conv\.\d+\.conv\.weight$", k) for k in shapes)
    stem = shapes.get("features.0.0.weight")
    if stem is None or len(stem) != 4:
        raise UnknownArchitectureError("MobileNetV2 without its stem conv features.0.0.weight.")
    return {"family": "mobilenet_v2", "attn": "eca" if has_eca else None, "in_chans": int(stem[1]),
            "num_classes": int(head[0]) if head is not None and len(head) == 2 else None}


def describe(shapes: Shapes) -> dict:
    """The structure of a state dict ({key: shape}), see the module docstring."""
    return describe_resnet(shapes) if _family(shapes) == "resnet" else describe_mobilenet_v2(shapes)


def _differences(desc: dict, model: nn.Module) -> list[str]:
    """How registered ``model`` differs from the structure ``desc`` (empty: it fits)."""
    if desc["family"] == "mobilenet_v2":
        if not isinstance(model, MobileNetV2):
            return ["family"]
        return [] if (model.attn is not None) == (desc["attn"] is not None) else \
            [f"attention {model.attn} vs {desc['attn']} in the file"]
    if not isinstance(model, ResNet):
        return ["family"]
    diffs = []
    for field in ("block", "layers", "widths", "stem", "stem_width"):
        value = getattr(model, field)
        value = tuple(value) if isinstance(value, (list, tuple)) else value
        if value != desc[field]:
            diffs.append(f"{field} {value} vs {desc[field]} in the file")
    if desc["avg_down"] is not None and bool(model.avg_down) != desc["avg_down"]:
        diffs.append(f"avg_down {model.avg_down} vs {desc['avg_down']} in the file")
    model_kind = {"eca": "eca", "ceca": "eca"}.get(model.attn, model.attn)
    if model_kind != desc["attn"]:
        diffs.append(f"attention {model.attn} vs {desc['attn']} in the file")
    elif desc["attn"] is not None and model.attn_scope != desc["attn_scope"]:
        diffs.append(f"attention attribute {model.attn_scope!r} vs {desc['attn_scope']!r} in the file")
    return diffs


def match_registry(desc: dict) -> str:
    """The one registered model name whose structure is ``desc``; errors for none or several."""
    scored = []
    for name in list_models():
        scored.append((_differences(desc, create_model(name)), name))
    fits = [name for diffs, name in scored if not diffs]
    if len(fits) == 1:
        return fits[0]
    summary = {k: v for k, v in desc.items() if v is not None}
    if len(fits) > 1:
        raise AmbiguousArchitectureError(
            f"Ambiguous architecture: the state dict fits {len(fits)} registered models {fits} equally "
            f"(structure {summary}); weights cannot tell them apart (e.g. zero vs circular ECA padding). "
            "Pass arch=<name> (command line: --arch NAME).")
    close = sorted((d, n) for d, n in scored if d != ["family"])
    close.sort(key=lambda dn: len(dn[0]))
    hint = "; ".join(f"{n}: {', '.join(d)}" for d, n in close[:3])
    raise UnknownArchitectureError(f"Unknown architecture: no registered model has the structure {summary}. "
                                   f"Closest: {hint or 'none of the same family'}.")


