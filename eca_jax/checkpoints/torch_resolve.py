"""The model a PyTorch state dict needs: the registered architecture (from
:mod:`eca_jax.checkpoints.torch_arch`) built with the ECA kernel sizes (and MobileNetV2 width)
its weights have, then checked key by key (strict).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn

from eca_jax.checkpoints.errors import ConversionError
from eca_jax.checkpoints.signature import abstract_variables
from eca_jax.checkpoints.torch_arch import Shapes, describe, eca_kernels, head_prefix, match_registry
from eca_jax.checkpoints.torch_keys import compare_keys, torch_shapes
from eca_jax.models import MobileNetV2, ResNet, create_model, get_model_cfg
from eca_jax.models.registry import resolve_model_name

WIDTH_MULTIPLIERS = (1.0, 0.5, 0.75, 1.4, 1.3, 0.35, 0.25, 1.5, 2.0)


@dataclasses.dataclass
class Architecture:
    """A resolved model for a state dict.

    name: registered model name; kwargs: create_model overrides read from the weights (k_size,
    width_mult, ...); num_classes: of the built model; file_classes: of the file's head (None when
    headless); module: the flax Module; abstract: ``jax.eval_shape`` of its variables;
    eca_k: {PyTorch module path: k};
    layout: "release" | "torchvision" | "timm".
    """
    name: str
    kwargs: dict
    num_classes: int
    file_classes: Optional[int]
    module: nn.Module
    abstract: Any
    eca_k: dict
    layout: str

    @property
    def head(self) -> str:
        return head_prefix(self.module)




def _resnet_k(eca: Mapping[str, int], num_stages: int) -> tuple:
    per_stage = []
    for s in range(1, num_stages + 1):
        ks = {p: k for p, k in eca.items() if p.startswith(f"layer{s}.")}
        values = sorted(set(ks.values()))
        if len(values) > 1:
            first = {v: min((p for p, k in ks.items() if k == v), key=lambda p: int(p.split(".")[1])) for v in values}
            examples = ", ".join(f"{p} has k={v}" for v, p in sorted(first.items(), key=lambda vp: int(vp[1].split(".")[1])))
            raise ConversionError(
                f"ECA kernel sizes change inside stage layer{s}: {examples}. eca_jax's ResNets take one k "
                "per stage (as every released and timm checkpoint has); per-block k is not supported.")
        per_stage.append(values[0] if values else None)
    return tuple(per_stage)


def _mobilenet_k(eca: Mapping[str, int], name: str, kwargs: dict, release: Mapping[str, int]) -> Any:
    """The MobileNetV2 ``k_size`` for per-block kernel sizes ``eca``: one int, or "adaptive"."""
    blocks = sorted(eca, key=lambda p: int(p.split(".")[1]))
    ks = [eca[p] for p in blocks]
    if len(set(ks)) == 1:
        return ks[0]
    adaptive = create_model(name, **dict(kwargs, k_size="adaptive"))
    if [eca_kernels(torch_shapes(abstract_variables(adaptive))).get(p) for p in blocks] == ks:
        return "adaptive"
    raise ConversionError(f"ECA kernel sizes {dict(zip(blocks, ks))} follow neither the release's rule "
                          f"({dict(release)}), one k for all blocks, nor the adaptive rule; MobileNetV2 has no "
                          "per-block k.")


def _build(name: str, num_classes: int, kwargs: dict) -> tuple[nn.Module, Any, dict]:
    """(module, its abstract variables, its {PyTorch key: shape})."""
    module = create_model(name, num_classes=num_classes, **kwargs)
    abstract = abstract_variables(module)
    return module, abstract, torch_shapes(abstract)


def _body(shapes: Shapes, head: str) -> dict:
    return {k: v for k, v in shapes.items() if not k.startswith(head + ".")}


def _non_eca(shapes: Shapes, head: str) -> dict:
    eca = eca_kernels(shapes)
    return {k: v for k, v in _body(shapes, head).items() if k[:-len(".weight")] not in eca}


def _fit_width(name: str, shapes: Shapes, num_classes: int, kwargs: dict, head: str):
    """Tries width multipliers for a MobileNetV2 whose channel counts are not those of width 1.0.

    Returns (kwargs, built) for the first multiplier whose non-ECA shapes all fit, else (kwargs, None).
    """
    stem = shapes.get("features.0.0.weight")
    if stem is None or len(stem) != 4:
        return kwargs, None          # not a MobileNetV2 at all: the strict check names the keys
    target = _non_eca(shapes, head)
    guess = round(stem[0] / 32, 4)
    for wm in dict.fromkeys(WIDTH_MULTIPLIERS + (guess,)):
        trial = dict(kwargs, width_mult=wm) if wm != 1.0 else dict(kwargs)
        built = _build(name, num_classes, trial)
        if _non_eca(built[2], head) == target:
            return trial, built
    return kwargs, None


def resolve(shapes: Shapes, arch: Optional[str] = None, num_classes: Optional[int] = None) -> Architecture:
    """The model for a state dict of ``shapes`` ({PyTorch key: shape}, num_batches_tracked dropped).

    ``arch=None``: inferred (see module docstring). ``arch=name``: that registered model; k (and a
    MobileNetV2's width) still come from the weights, everything else must match exactly.
    ``num_classes``: of the returned model (default: the file's head); differing from the file's
    head is allowed (the head is then re-initialised by the caller), every other key is strict.
    Raises ConversionError (or a subclass) naming what does not fit.
    """
    forced = arch is not None
    if forced:
        try:
            name = resolve_model_name(arch)
        except ValueError as e:
            raise ConversionError(str(e)) from None
        probe = create_model(name)
        family = "mobilenet_v2" if isinstance(probe, MobileNetV2) else "resnet"
        kwargs: dict = {}
        file_classes = _head_classes(shapes, head_prefix(probe))
    else:
        desc = describe(shapes)
        name = match_registry(desc)
        family = desc["family"]
        kwargs = {}
        if desc.get("in_chans", 3) != 3:
            kwargs["in_chans"] = desc["in_chans"]
        probe = create_model(name)
        if desc.get("attn") == "se":
            default = dict(probe.attn_kwargs or {})
            if default.get("reduction", 16) != desc["reduction"]:
                kwargs["attn_kwargs"] = {**default, "reduction": desc["reduction"]}
        file_classes = desc["num_classes"]
    head = head_prefix(probe)
    headless_unknown = num_classes is None and file_classes is None
    if num_classes is None:
        num_classes = file_classes or probe.num_classes   # headless: checked below, then refused
    what = f"{name} ({'arch forced' if forced else 'inferred from the keys'})"
    module, abstract, expected = _build(name, num_classes, kwargs)
    eca = eca_kernels(shapes)
    if family == "mobilenet_v2" and _non_eca(expected, head) != _non_eca(shapes, head):
        kwargs, built = _fit_width(name, shapes, num_classes, kwargs, head)
        if built is not None:
            module, abstract, expected = built
    expected_eca = eca_kernels(expected)
    if eca and set(eca) == set(expected_eca) and eca != expected_eca:
        if family == "resnet":
            kwargs["k_size"] = _resnet_k(eca, len(module.layers))
        else:
            kwargs["k_size"] = _mobilenet_k(eca, name, kwargs, expected_eca)
        module, abstract, expected = _build(name, num_classes, kwargs)
    keep_head = file_classes == num_classes
    compare_keys(shapes if keep_head else _body(shapes, head), expected if keep_head else _body(expected, head), what)
    if headless_unknown:
        raise ConversionError(f"The state dict has no classifier ({head}.weight), so the number of classes "
                              "is unknown: pass num_classes (a new head is initialised).")
    return Architecture(name=name, kwargs=kwargs, num_classes=num_classes, file_classes=file_classes,
                        module=module, abstract=abstract, eca_k=eca_kernels(expected),
                        layout=get_model_cfg(name).torch_layout)


def _head_classes(shapes: Shapes, head: str) -> Optional[int]:
    w = shapes.get(f"{head}.weight")
    return int(w[0]) if w is not None and len(w) == 2 else None


def model_for(arch: Any, **kwargs: Any) -> tuple[nn.Module, str]:
    """(module, layout) for a registered name (``kwargs`` -> create_model) or a Module (layout guessed:
    a ResNet with the avg-pool shortcut follows timm, anything else the release/torchvision layout)."""
    if isinstance(arch, nn.Module):
        layout = "timm" if isinstance(arch, ResNet) and arch.avg_down else "release"
        return arch, layout
    try:
        name = resolve_model_name(arch)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    return create_model(name, **kwargs), get_model_cfg(name).torch_layout


def stage_k(eca_k: Mapping[str, int]) -> list:
    """Compact per-stage view of {module path: k}: ResNets -> [k per stage], MobileNetV2 -> [k per block]."""
    groups: dict[str, set] = {}
    for path, k in eca_k.items():
        groups.setdefault(".".join(path.split(".")[:2]) if path.startswith("features.") else path.split(".")[0],
                          set()).add(k)
    return [sorted(v)[0] if len(v) == 1 else sorted(v) for v in groups.values()]

