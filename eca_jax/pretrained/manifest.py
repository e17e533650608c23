"""Every published weight file of the registered models: where it comes from, what it is, how to feed it.

Facts only, copied from their sources (no code):

- timm's ECA ResNet-D weights: ``timm/models/resnet.py`` ``default_cfgs`` (pretrained tags, hub ids
  ``timm/<model>.<tag>``, input settings, ``license='apache-2.0'``) and ``results/results-imagenet.csv``
  (top-1), huggingface/pytorch-image-models @ aa4b5850 (2026-08-08). The hub serves each file's
  SHA-256 (its LFS etag); it is checked on download.
- torchvision's ResNet and MobileNetV2 ImageNet weights: ``torchvision/models/resnet.py`` and
  ``mobilenetv2.py`` (``*_Weights.IMAGENET1K_V1/V2``: URL, acc@1, resize 232 for V2); the 8 hex
  digits in each file name are the start of its SHA-256 (checked). Licence: torchvision's, BSD-3-Clause.
- The authors' release: BangguWu/ECANet README (@01195a7: Baidu links with extract codes, top-1)
  and LICENSE (MIT); k lists from the file names (ECA.md). ResNet-18/34 files are named in ECA.md
  but have no link in that README. Sizes and hashes are not published.

``top1`` is as the source reports it, at ``top1_size`` (timm: the pretrained cfg's test size).
``cfg`` holds the :class:`eca_jax.models.ModelCfg` fields (input settings) that differ from the
registered model's for these weights. ImageNet's own terms apply to all ImageNet-trained weights
(timm's README says so); the licence column is the source's.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional

HUB, URL, MANUAL = "hub", "url", "manual"
SOURCES = (HUB, URL, MANUAL)
TIMM = "huggingface/pytorch-image-models timm/models/resnet.py, results/results-imagenet.csv"
TORCHVISION = "pytorch/vision torchvision/models/resnet.py, mobilenetv2.py"
RELEASE = "BangguWu/ECANet README.md (Baidu links, extract codes)"


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weight file.

    model / tag: the registered model and the weight's tag (``model.tag`` names it);
    source: "hub" (huggingface_hub: ``repo_id`` + ``filename``), "url" (plain HTTP(S) ``url``) or
    "manual" (``url`` is a page a person must open: cloud drive; ``note`` says how);
    filename: the file's name (kept in the cache under it); sha256 / sha256_prefix: the full hash or
    the published prefix (torchvision), None when unknown; size: bytes, None when unknown;
    licence, top1 (percent, as reported), top1_size; cfg: ModelCfg input-setting overrides;
    eca_k: the k list the file must have (per stage; None: not checked); origin: where the facts come from.
    """
    model: str
    tag: str
    source: str
    filename: str
    licence: str
    origin: str
    repo_id: Optional[str] = None
    url: Optional[str] = None
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    size: Optional[int] = None
    top1: Optional[float] = None
    top1_size: Optional[int] = None
    cfg: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eca_k: Optional[tuple] = None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def where(self) -> str:
        """Human-readable origin of the file (hub page or URL)."""
        if self.source == HUB:
            return f"the Hugging Face hub, repo {self.repo_id}, file {self.filename}"
        return self.url or "(no public link)"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Weights {self.name}: source must be one of {SOURCES}, got {self.source!r}")
        if self.source == HUB and not self.repo_id:
            raise ValueError(f"Weights {self.name}: a hub entry needs repo_id")
        if self.source == URL and not self.url:
            raise ValueError(f"Weights {self.name}: a url entry needs url")


def _timm(model: str, tag: str, top1: float, top1_size: int, **cfg: Any) -> Weights:
    return Weights(model, tag, HUB, "model.safetensors", "apache-2.0", TIMM, repo_id=f"timm/{model}.{tag}",
                   top1=top1, top1_size=top1_size, cfg=dict(interpolation="bicubic", **cfg), eca_k=(5, 5, 5, 7))


def _tv(model: str, tag: str, file: str, top1: float, **cfg: Any) -> Weights:
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return Weights(model, tag, URL, file, "BSD-3-Clause", TORCHVISION, url=f"https://download.pytorch.org/models/{file}",
                   sha256_prefix=prefix, top1=top1, top1_size=224, cfg=dict(interpolation="bilinear", **cfg))


def _release(model: str, file: str, top1: float, url: Optional[str], code: Optional[str], k: tuple) -> Weights:
    how = (f"open {url} (Baidu pan, extract code {code}) and download {file}" if url else
           f"{file} is named by the release (ECA.md) but its README has no public link; ask the authors")
    return Weights(model, "release", MANUAL, file, "MIT", RELEASE, url=url, top1=top1, top1_size=224,
                   cfg=dict(interpolation="bilinear", crop_pct=0.875), eca_k=k, note=how)


_TV2 = dict(crop_pct=224 / 232)   # torchvision IMAGENET1K_V2: resize 232, crop 224
_TIMM_R = dict(crop_pct=0.95, test_input_size=288, test_crop_pct=1.0)   # timm's _rcfg (ResNet strikes back)

ENTRIES: tuple[Weights, ...] = (
    # timm (first entry of a model = its default tag, timm's order)
    _timm("ecaresnet26t", "ra2_in1k", 79.900, 320, input_size=256, test_input_size=320, test_crop_pct=0.95),
    _timm("ecaresnetlight", "miil_in1k", 81.430, 288, test_input_size=288, test_crop_pct=0.95),
    _timm("ecaresnet50d", "miil_in1k", 81.648, 288, test_input_size=288, test_crop_pct=0.95),
    _timm("ecaresnet50t", "ra2_in1k", 82.370, 320, input_size=256, test_input_size=320, test_crop_pct=0.95),
    _timm("ecaresnet50t", "a1_in1k", 82.110, 288, **_TIMM_R),
    _timm("ecaresnet50t", "a2_in1k", 81.682, 288, **_TIMM_R),
    _timm("ecaresnet50t", "a3_in1k", 79.548, 224, input_size=160, crop_pct=0.95, test_input_size=224,
          test_crop_pct=0.95),
    _timm("ecaresnet101d", "miil_in1k", 83.006, 288, test_input_size=288, test_crop_pct=0.95),
    _timm("ecaresnet269d", "ra2_in1k", 84.968, 352, input_size=320, crop_pct=0.95, test_input_size=352,
          test_crop_pct=1.0),
    # torchvision (IMAGENET1K_V1 = tv_in1k, IMAGENET1K_V2 = tv2_in1k, timm's names for them)
    _tv("resnet18", "tv_in1k", "resnet18-f37072fd.pth", 69.758),
    _tv("resnet34", "tv_in1k", "resnet34-b627a593.pth", 73.314),
    _tv("resnet50", "tv2_in1k", "resnet50-11ad3fa6.pth", 80.858, **_TV2),
    _tv("resnet50", "tv_in1k", "resnet50-0676ba61.pth", 76.130),
    _tv("resnet101", "tv2_in1k", "resnet101-cd907fc2.pth", 81.886, **_TV2),
    _tv("resnet101", "tv_in1k", "resnet101-63fe2227.pth", 77.374),
    _tv("resnet152", "tv2_in1k", "resnet152-f82ba261.pth", 82.284, **_TV2),
    _tv("resnet152", "tv_in1k", "resnet152-394f9c45.pth", 78.312),
    _tv("mobilenet_v2", "tv2_in1k", "mobilenet_v2-7ebf99e0.pth", 72.154, **_TV2),
    _tv("mobilenet_v2", "tv_in1k", "mobilenet_v2-b0353104.pth", 71.878),
    # the authors' release (cloud drive: downloaded by a person)
    _release("eca_resnet18", "eca_resnet18_k3577.pth.tar", 70.92, None, None, (3, 5, 7, 7)),
    _release("eca_resnet34", "eca_resnet34_k3357.pth.tar", 74.21, None, None, (3, 3, 5, 7)),
    _release("eca_resnet50", "eca_resnet50_k3557.pth.tar", 77.48, "https://pan.baidu.com/s/1pcn6ZfZUAYKycZ6FMr4F2Q",
             "7qo9", (3, 5, 5, 7)),
    _release("eca_resnet101", "eca_resnet101_k3357.pth.tar", 78.65, "https://pan.baidu.com/s/1Cx8dt5RrQlf-Q6BZ82QSDg",
             "mvg2", (3, 3, 5, 7)),
    _release("eca_resnet152", "eca_resnet152_k3357.pth.tar", 78.92, "https://pan.baidu.com/s/1H2rbU1ngMOLU6y4R753r-Q",
             "ysh9", (3, 3, 5, 7)),
    _release("eca_mobilenet_v2", "eca_mobilenetv2_k13.pth.tar", 72.56, "https://pan.baidu.com/s/143B03YTGE2ogkPoCj3IorQ",
             "atpt", None),
)


class Manifest:
    """A set of :class:`Weights`, looked up by model and tag (the first entry of a model is its default).

    ``Manifest(extra)`` puts ``extra`` entries before the built-in ones (same name: replaced), which is
    how a test or a mirror points at other files: ``eca_jax.create_model(name, pretrained=True,
    manifest=Manifest([dataclasses.replace(entry, url=...)]))``.
    """

    def __init__(self, extra: Iterable[Weights] = (), *, builtin: bool = True):
        extra = tuple(extra)
        names = {w.name for w in extra}
        self.entries = extra + tuple(w for w in (ENTRIES if builtin else ()) if w.name not in names)

    def for_model(self, model: str) -> list[Weights]:
        return [w for w in self.entries if w.model == model]

    def find(self, model: str, tag: Optional[str] = None) -> Weights:
        """The entry of ``model`` with ``tag`` (None: the default); LookupError naming the known tags."""
        found = self.for_model(model)
        if not found:
            raise LookupError(f"No published weights for {model!r} in the manifest; models with weights: "
                              f"{', '.join(sorted({w.model for w in self.entries}))}.")
        if tag is None:
            return found[0]
        for w in found:
            if w.tag == tag:
                return w
        raise LookupError(f"{model!r} has no weights tagged {tag!r}; its tags: {', '.join(w.tag for w in found)}.")


DEFAULT = Manifest()
ENV = "ECA_JAX_PRETRAINED_MANIFEST"


def from_json(path: str) -> list[Weights]:
    """Entries from a JSON list of objects with :class:`Weights`' fields (``eca_k`` as a list)."""
    with open(path) as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV}={path}: not valid JSON ({e}).") from None
    if not isinstance(items, list):
        raise ValueError(f"{ENV}={path}: expected a JSON list of weight entries.")
    fields = {f.name for f in dataclasses.fields(Weights)}
    out = []
    for item in items:
        unknown = sorted(set(item) - fields)
        if unknown:
            raise ValueError(f"{ENV}={path}: unknown field(s) {unknown} in {item.get('model')}.{item.get('tag')}; "
                             f"known: {sorted(fields)}.")
        out.append(Weights(**{**item, "eca_k": tuple(item["eca_k"]) if item.get("eca_k") else None}))
    return out


def current() -> Manifest:
    """The built-in manifest, with the entries of ``$ECA_JAX_PRETRAINED_MANIFEST`` (a JSON file; a
    mirror's URLs, or a test's stand-ins) put first when it is set. Read at each call."""
    path = os.environ.get(ENV)
    return Manifest(from_json(path)) if path else DEFAULT
