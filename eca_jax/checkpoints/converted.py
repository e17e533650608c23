"""Converted checkpoints on disk: an orbax checkpoint plus a metadata JSON, written atomically.

Layout of a converted directory ``DST``::

    DST/variables/        orbax StandardCheckpointer of {"params": ..., "batch_stats": ...}
    DST/eca_jax_convert.json
        {"format": "eca_jax.convert/1", "arch": "eca_resnet50", "model_kwargs": {"k_size": [...]},
         "num_classes": 1000, "eca_k": {"layer1.0.eca.conv": 3, ...}, "eca_k_per_stage": [3, 5, 5, 7],
         "torch_layout": "release", "source": "/abs/path.pth.tar", "source_sha256": "...",
         "source_arch_field": "se_resnet50", "notes": [...], "created": "2025-...Z", "eca_jax_version": "..."}

Here: :func:`save` (used by the converter), :func:`read_metadata`, :func:`read_variables`,
:func:`is_converted_dir`. To load a converted directory as a model use
:func:`eca_jax.checkpoints.load`, which also checks the variables against the rebuilt model.

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
from typing import Any, Mapping, Union

import jax
import numpy as np
import orbax.checkpoint as ocp

from eca_jax import __version__
from eca_jax._paths import absolute_path
from eca_jax.checkpoints.errors import ConversionError

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
    meta.setdefault("eca_jax_version", __version__)

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


def read_variables(path: PathLike) -> dict:
    """The stored {"params", "batch_stats"} of the converted directory ``path`` (NumPy)."""
    directory = os.path.join(absolute_path(path), VARIABLES_DIR)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(directory)
    except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types; name the directory
        raise ConversionError(f"{directory}: cannot read the converted variables ({type(e).__name__}: {e}).") from None
    return {"params": restored.get("params", {}), "batch_stats": restored.get("batch_stats", {})}
