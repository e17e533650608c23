"""``load(name, pretrained)``: the converted weights of a published file, from the cache or fetched,
checked and converted once (see the package docstring)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Union

from eca_jax.checkpoints import Loaded, converted
from eca_jax.checkpoints import load as load_checkpoint
from eca_jax.models import ModelCfg, get_model_cfg
from eca_jax.models.registry import resolve_model_name
from eca_jax.pretrained import cache, download
from eca_jax.pretrained.convert import Verify, convert_to_cache
from eca_jax.pretrained.errors import PretrainedError
from eca_jax.pretrained.manifest import Manifest, Weights, current

# URL-like, so eca_jax._paths.absolute_path (which the trainer applies to init_from) leaves it as it is.
SPEC_PREFIX = "pretrained://"
Spec = Union[bool, str, os.PathLike]


@dataclasses.dataclass
class Pretrained(Loaded):
    """A :class:`~eca_jax.checkpoints.Loaded` plus the manifest ``entry`` and the ``model_cfg`` whose
    input settings go with these weights (the entry's ``cfg`` over the registered model's);
    ``signature.input_settings`` carries the same (image size, crop, interpolation, mean, std)."""
    entry: Optional[Weights] = None
    model_cfg: Optional[ModelCfg] = None


def is_spec(value: object) -> bool:
    """True for ``"pretrained://NAME[.TAG]"`` (what --checkpoint / init_from accept; the short
    ``"pretrained:NAME"`` too, where no path handling touches it first)."""
    return isinstance(value, str) and value.startswith("pretrained:")


def load_spec(spec: str, **kwargs) -> Pretrained:
    """``load_spec("pretrained://ecaresnet50d.miil_in1k")`` = ``load("ecaresnet50d.miil_in1k")``."""
    if not is_spec(spec):
        raise PretrainedError(f"{spec!r} is not a pretrained spec ({SPEC_PREFIX}NAME[.TAG]).")
    return load(spec[len("pretrained:"):].lstrip("/"), True, **kwargs)


def _is_path(value: object) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (os.sep in value or value.endswith((".pth", ".tar", ".pt", ".bin", ".safetensors"))
                                       or os.path.exists(value))


def _entry_for(name: str, pretrained: Spec, manifest: Manifest) -> tuple[Weights, Optional[str]]:
    """(manifest entry, a user's file path or None) for ``name`` (``model[.tag]``) and ``pretrained``."""
    model = resolve_model_name(name)
    tag = name.split(".", 1)[1] if "." in name else None
    path = None
    if _is_path(pretrained):
        path = os.path.abspath(os.path.expanduser(os.fspath(pretrained)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained={os.fspath(pretrained)!r}: no such file.")
    elif isinstance(pretrained, str):
        if tag is not None and tag != pretrained:
            raise PretrainedError(f"create_model({name!r}, pretrained={pretrained!r}): two different tags.")
        tag = pretrained
    elif pretrained is not True:
        raise PretrainedError(f"pretrained must be True, a tag or a file path, got {pretrained!r}.")
    try:
        return manifest.find(model, tag), path
    except LookupError as e:
        raise PretrainedError(str(e)) from None


def _cached(entry: Weights, digest: Optional[str]) -> Optional[str]:
    """The converted directory of ``entry`` if it is cached (and, for a user's file, made from that file)."""
    dst = cache.converted_dir(entry.name)
    if not converted.is_converted_dir(dst):
        return None
    if digest is not None:
        with open(os.path.join(dst, converted.METADATA_FILE)) as f:
            if json.load(f).get("source_sha256") != digest:
                return None
    return dst


def load(name: str, pretrained: Spec = True, *, manifest: Optional[Manifest] = None, verify: Optional[Verify] = None,
         progress: bool = True, verify_size: int = 128) -> Pretrained:
    """The published weights of ``name`` (``model`` or ``model.tag``) as a :class:`Pretrained`.

    pretrained: True (the model's default tag), a tag (``"tv2_in1k"``), or the path of the file
    itself (a release ``.pth.tar`` downloaded by hand; checked: architecture and k from its shapes,
    size and hash when published). manifest: another :class:`Manifest` (tests, mirrors; default: the
    built-in one with ``$ECA_JAX_PRETRAINED_MANIFEST``'s entries first). verify:
    --verify's check (``eca_jax.convert.verify.verify``) run once, before caching.
    Raises PretrainedError (NotCachedError, IntegrityError), FileNotFoundError, ValueError (unknown model).
    """
    entry, path = _entry_for(name, pretrained, manifest or current())
    digest = None
    if path is not None:
        digest = download.check(path, entry, quarantine=False) if (entry.size or entry.sha256) else download.sha256(path)
    dst = _cached(entry, digest)
    if dst is None:
        quarantine = path is None
        if path is None:
            path, digest = download.fetch(entry, progress)
        dst = convert_to_cache(path, digest, entry, verify=verify, progress=progress, verify_size=verify_size,
                               quarantine=quarantine)
    return _with_settings(load_checkpoint(dst), entry)


def model_cfg_for(entry: Weights) -> ModelCfg:
    """The registered model's ModelCfg with the input settings of ``entry``'s weights."""
    return dataclasses.replace(get_model_cfg(entry.model), **dict(entry.cfg), top1=entry.top1, weights=entry.filename)


def _with_settings(loaded: Loaded, entry: Weights) -> Pretrained:
    cfg = model_cfg_for(entry)
    size = cfg.test_input_size or cfg.input_size
    crop = cfg.test_crop_pct if cfg.test_input_size and cfg.test_crop_pct else cfg.crop_pct
    settings = {"image_size": size, "eval_crop_pct": crop, "eval_interpolation": cfg.interpolation,
                "mean": list(cfg.mean), "std": list(cfg.std)}
    signature = dataclasses.replace(loaded.signature, input_settings=settings)
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(Loaded)}
    return Pretrained(**{**fields, "signature": signature}, entry=entry, model_cfg=cfg)
