"""Converted checkpoints on disk: an orbax checkpoint plus a metadata JSON, written atomically.

Layout of a converted directory ``DST``::

    DST/variables/        orbax StandardCheckpointer of {"params": ..., "batch_stats": ...}
    DST/eca_jax_convert.json
        {"format": "eca_jax.convert/1", "arch": "eca_resnet50", "model_kwargs": {"k_size": [...]},
         "num_classes": 1000, "eca_k": {"layer1.0.eca.conv": 3, ...}, "eca_k_per_stage": [3, 5, 5, 7],
         "torch_layout": "release", "source": "/abs/path.pth.tar", "source_sha256": "...",
         "source_arch_field": "se_resnet50", "notes": [...], "created": "2025-...Z", "eca_jax_version": "..."}

Stable API (the trainer's ``init_from`` uses it):

- :func:`load` (``DST`` -> module, variables, metadata): ``create_model(arch, num_classes, **model_kwargs)``
  rebuilds the module; the variables are checked against it leaf by leaf.
- :func:`load_converted` (``DST`` -> NumPy variables, signature {"model", "num_classes", "model_kwargs"}).
- :func:`is_converted_dir`.

Paths may be relative to the current directory (orbax itself only takes absolute ones).

Writing goes to ``DST.tmp-XXXX`` beside ``DST`` and is renamed to ``DST`` only when complete
(``os.replace``), so a failed or killed conversion leaves nothing at ``DST``.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from eca_jax.convert.mapping import ConversionError
from eca_jax._paths import absolute_path

METADATA_FILE = "eca_jax_convert.json"
VARIABLES_DIR = "variables"
FORMAT = "eca_jax.convert/1"
PathLike = Union[str, os.PathLike]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def is_converted_dir(path: PathLike) -> bool:
    """True if ``path`` is a directory written by ``eca_jax.convert``."""
    return os.path.isfile(os.path.join(os.fspath(path), METADATA_FILE))


def check_destination(dst: PathLike, overwrite: bool = False) -> str:
    """Absolute ``dst``; raises ConversionError if it exists (and ``overwrite`` is False)."""
    dst = os.path.abspath(os.fspath(dst))
    if os.path.lexists(dst) and not overwrite:
        raise ConversionError(f"{dst} already exists; choose another destination or pass --overwrite.")
    return dst


def atomic_directory_write(dst: PathLike, write, overwrite: bool = False) -> str:
    """Calls ``write(tmp_dir)`` on a fresh sibling directory of ``dst`` and renames it to ``dst``.

    On any exception the temporary directory is removed and nothing is left at ``dst``.
    With ``overwrite``, an existing ``dst`` is replaced only after ``write`` succeeded.
    """
    dst = check_destination(dst, overwrite)
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=parent)
    old = None
    try:
        write(tmp)
        if os.path.lexists(dst):
            old = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".old-", dir=parent)
            os.rmdir(old)
            os.replace(dst, old)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(dst):
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
    return dst


def save(dst: PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any], *,
         overwrite: bool = False) -> str:
    """Writes ``variables`` ({"params", "batch_stats"}) and ``metadata`` (must hold "arch" and
    "num_classes") to the converted directory ``dst``, atomically. Returns the absolute path."""
    for field in ("arch", "num_classes"):
        if field not in metadata:
            raise ConversionError(f"converted-checkpoint metadata needs {field!r}")
    host = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})
    meta = {"format": FORMAT, "model_kwargs": {}, **_jsonable(dict(metadata))}
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        from eca_jax import __version__  # noqa: PLC0415
        meta.setdefault("eca_jax_version", __version__)
    except ImportError:
        pass

    def write(tmp: str) -> None:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, VARIABLES_DIR), host)
            checkpointer.wait_until_finished()
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    return atomic_directory_write(dst, write, overwrite)


def read_metadata(path: PathLike) -> dict:
    """The metadata JSON of a converted directory (ConversionError if it is not one, or if the
    JSON is corrupt)."""
    path = absolute_path(path)
    if not is_converted_dir(path):
        raise ConversionError(f"{path} is not a directory written by eca_jax.convert (no {METADATA_FILE}).")
    file = os.path.join(path, METADATA_FILE)
    with open(file) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{file}: corrupt metadata, not valid JSON ({e}).") from None
    if not isinstance(meta, dict):
        raise ConversionError(f"{file}: corrupt metadata, expected a JSON object, found {type(meta).__name__}.")
    if meta.get("format") != FORMAT:
        raise ConversionError(f"{path}: unknown converted-checkpoint format {meta.get('format')!r} "
                              f"(this eca_jax reads {FORMAT!r}).")
    return meta


def _restore(path: PathLike) -> dict:
    """The stored {"params", "batch_stats"} of the converted directory ``path`` (NumPy)."""
    directory = os.path.join(absolute_path(path), VARIABLES_DIR)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory)
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types; name the directory
        raise ConversionError(f"{directory}: cannot read the converted variables ({type(e).__name__}: {e}).") from None
    return {"params": restored.get("params", {}), "batch_stats": restored.get("batch_stats", {})}


def load_converted(path: PathLike) -> tuple[dict, dict]:
    """(variables as NumPy {"params", "batch_stats"}, signature {"model", "num_classes", "model_kwargs"}).

    For the trainer's ``init_from``: the signature's "model" is the registered name.
    """
    meta = read_metadata(path)
    signature = {"model": meta["arch"], "num_classes": meta["num_classes"], "model_kwargs": meta.get("model_kwargs", {})}
    return _restore(path), signature


def model_from_metadata(meta: Mapping[str, Any]) -> nn.Module:
    """``create_model(meta["arch"], num_classes=..., **meta["model_kwargs"])`` (lists -> tuples)."""
    from eca_jax.models import create_model  # noqa: PLC0415
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (meta.get("model_kwargs") or {}).items()}
    return create_model(meta["arch"], num_classes=meta["num_classes"], **kwargs)


def load(path: PathLike) -> tuple[nn.Module, dict, dict]:
    """A converted directory -> (flax module, variables as jax arrays, metadata dict).

    The variables are checked against the rebuilt module (every path and shape); the error names
    the first leaf that differs.
    """
    from eca_jax.convert.arch import abstract_variables  # noqa: PLC0415
    meta = read_metadata(path)
    module = model_from_metadata(meta)
    variables = _restore(path)
    abstract, _ = abstract_variables(module, getattr(module, "in_chans", 3))
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract).items()}
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(variables).items()}
    if want != got:
        diff = next((k for k in want if got.get(k) != want[k]), None) or next(k for k in got if k not in want)
        raise ConversionError(f"{os.fspath(path)}: stored variables do not fit {meta['arch']} "
                              f"{meta.get('model_kwargs') or ''}: {'/'.join(diff)} is {got.get(diff)} in the "
                              f"checkpoint, {want.get(diff)} in the model.")
    return module, jax.tree.map(jnp.asarray, variables), meta


def metadata_for(converted: Any, source_path: Optional[str] = None) -> dict:
    """Metadata of a :class:`~eca_jax.convert.api.Converted` result for :func:`save`."""
    from eca_jax.convert.arch import stage_k  # noqa: PLC0415
    arch, source = converted.arch, converted.source
    return {"arch": arch.name, "model_kwargs": arch.kwargs, "num_classes": arch.num_classes,
            "eca_k": arch.eca_k, "eca_k_per_stage": stage_k(arch.eca_k), "torch_layout": arch.layout,
            "source": source.get("source") or source_path, "source_sha256": source.get("sha256"),
            "source_arch_field": source.get("arch"), "notes": list(converted.notes)}


def load_any(path: PathLike, arch: Optional[str] = None) -> tuple[nn.Module, dict, str]:
    """(module, variables, model name) from any checkpoint eca_jax understands.

    ``path``: a directory written by ``eca_jax.convert``; a training workdir, its ``checkpoints``
    directory or one step (through the trainer's ``init_from.load``); or a PyTorch file
    (``.pth.tar``/``.pth``/``.pt``/``.bin``/``.safetensors``, through ``from_torch`` with ``arch``).
    Relative paths are taken from the current directory.
    """
    path = absolute_path(path)
    if is_converted_dir(path):
        module, variables, meta = load(path)
        return module, variables, meta["arch"]
    if os.path.isdir(path):
        from eca_jax.train import init_from  # noqa: PLC0415
        try:
            variables, signature = init_from.load(path)
        except Exception as e:  # noqa: BLE001 -- orbax/etils raise many types; name the path instead
            raise ConversionError(f"{path}: neither a converted checkpoint ({METADATA_FILE}) nor a training "
                                  f"checkpoint eca_jax can read ({type(e).__name__}: {e}).") from None
        meta = {"arch": signature.get("model"), "num_classes": signature.get("num_classes"),
                "model_kwargs": signature.get("model_kwargs") or {}}
        if not meta["arch"]:
            raise ConversionError(f"{path}: the checkpoint does not name its model.")
        return model_from_metadata(meta), jax.tree.map(jnp.asarray, variables), meta["arch"]
    from eca_jax.convert.api import convert  # noqa: PLC0415
    converted = convert(path, arch)
    return converted.module, converted.variables, converted.arch.name
