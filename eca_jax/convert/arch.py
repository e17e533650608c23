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
``arch=``). Finally the chosen model's own parameter shapes are compared key by key (strict).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.convert.mapping import ConversionError, compare_keys, torch_shapes
from eca_jax.models import MobileNetV2, ResNet, create_model, get_model_cfg, list_models
from eca_jax.models.registry import resolve_model_name

Shapes = Mapping[str, tuple]
HEADS = {ResNet: "fc", MobileNetV2: "classifier.1"}
WIDTH_MULTIPLIERS = (1.0, 0.5, 0.75, 1.4, 1.3, 0.35, 0.25, 1.5, 2.0)
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")
_ECA_KEY = re.compile(r"^(.*)\.conv\.weight$")


class AmbiguousArchitectureError(ConversionError):
    """The keys and shapes fit several registered models (or none cleanly); pass ``arch=``."""


class UnknownArchitectureError(ConversionError):
    """The keys and shapes fit no registered model."""


@dataclasses.dataclass
class Architecture:
    """A resolved model for a state dict.

    name: registered model name; kwargs: create_model overrides read from the weights (k_size,
    width_mult, ...); num_classes: of the built model; file_classes: of the file's head (None when
    headless); module: the flax Module; abstract: ``jax.eval_shape`` of its variables; order:
    Flax module paths in PyTorch's definition order; eca_k: {PyTorch module path: k};
    layout: "release" | "torchvision" | "timm".
    """
    name: str
    kwargs: dict
    num_classes: int
    file_classes: Optional[int]
    module: nn.Module
    abstract: Any
    order: list
    eca_k: dict
    layout: str

    @property
    def head(self) -> str:
        return head_prefix(self.module)


def head_prefix(module: nn.Module) -> str:
    """The PyTorch module path of the classifier: ``fc`` (ResNets) or ``classifier.1`` (MobileNetV2)."""
    for cls, prefix in HEADS.items():
        if isinstance(module, cls):
            return prefix
    raise ConversionError(f"{type(module).__name__} has no PyTorch layout in eca_jax.convert "
                          f"(supported: {', '.join(c.__name__ for c in HEADS)}).")


def abstract_variables(module: nn.Module, in_chans: int = 3, size: int = 64) -> tuple[Any, list]:
    """(``jax.eval_shape`` of ``module.init``, Flax module paths in call order). Nothing is computed.

    The call order of the modules is the definition order of their PyTorch counterparts, so it
    orders an exported state dict exactly like the release's / timm's files.
    """
    order: list = []
    seen: set = set()

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            path = tuple(context.module.path)
            if path not in seen:
                seen.add(path)
                order.append(path)
        return next_fun(*args, **kwargs)

    def init():
        with nn.intercept_methods(interceptor):
            return module.init(jax.random.key(0), jnp.zeros((1, size, size, in_chans), jnp.float32), train=False)

    return jax.eval_shape(init), order


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
    desc["attn"], desc["attn_name"], desc["reduction"] = kind if kind else (None, None, None)
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
    elif desc["attn"] is not None and model.attn_name != desc["attn_name"]:
        diffs.append(f"attention attribute {model.attn_name!r} vs {desc['attn_name']!r} in the file")
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


# ------------------------------------------------------------------------------------------------
# Building the model with the k (and width) the weights have
# ------------------------------------------------------------------------------------------------

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
    if [eca_kernels(torch_shapes(abstract_variables(adaptive)[0])).get(p) for p in blocks] == ks:
        return "adaptive"
    raise ConversionError(f"ECA kernel sizes {dict(zip(blocks, ks))} follow neither the release's rule "
                          f"({dict(release)}), one k for all blocks, nor the adaptive rule; MobileNetV2 has no "
                          "per-block k.")


def _build(name: str, num_classes: int, kwargs: dict) -> tuple[nn.Module, Any, list, dict]:
    module = create_model(name, num_classes=num_classes, **kwargs)
    abstract, order = abstract_variables(module, getattr(module, "in_chans", 3))
    return module, abstract, order, torch_shapes(abstract, order)


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
        if _non_eca(built[3], head) == target:
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
    module, abstract, order, expected = _build(name, num_classes, kwargs)
    eca = eca_kernels(shapes)
    if family == "mobilenet_v2" and _non_eca(expected, head) != _non_eca(shapes, head):
        kwargs, built = _fit_width(name, shapes, num_classes, kwargs, head)
        if built is not None:
            module, abstract, order, expected = built
    expected_eca = eca_kernels(expected)
    if eca and set(eca) == set(expected_eca) and eca != expected_eca:
        if family == "resnet":
            kwargs["k_size"] = _resnet_k(eca, len(module.layers))
        else:
            kwargs["k_size"] = _mobilenet_k(eca, name, kwargs, expected_eca)
        module, abstract, order, expected = _build(name, num_classes, kwargs)
    keep_head = file_classes == num_classes
    compare_keys(shapes if keep_head else _body(shapes, head), expected if keep_head else _body(expected, head), what)
    if headless_unknown:
        raise ConversionError(f"The state dict has no classifier ({head}.weight), so the number of classes "
                              "is unknown: pass num_classes (a new head is initialised).")
    return Architecture(name=name, kwargs=kwargs, num_classes=num_classes, file_classes=file_classes,
                        module=module, abstract=abstract, order=order, eca_k=eca_kernels(expected),
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

