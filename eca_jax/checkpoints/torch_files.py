"""Reading and writing PyTorch checkpoints as plain {key: NumPy array} dicts.

Reading:
- ``.safetensors``: the safetensors NumPy API (torch is not needed: timm's weights convert on a
  machine without torch). bfloat16 tensors are read through safetensors' Flax backend.
- anything else (``.pth.tar``, ``.pth``, ``.pt``, ``.bin``): ``torch.load(weights_only=True)``
  only. A pickle that would run code (custom classes, functions) is refused and never executed.
- The release's wrapper ``{"epoch", "arch", "state_dict", "best_prec1", "optimizer"}`` is
  unwrapped (also ``"model"`` / ``"state_dict_ema"``-style wrappers), the ``module.`` prefix of
  DataParallel is stripped. The wrapper's ``arch`` field is returned for information only and
  never used: it is wrong in at least one released file.

Every value comes back as float32/float64/int NumPy (bf16/fp16 upcast to float32).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Mapping, Optional, Union

import numpy as np

from eca_jax.checkpoints.errors import ConversionError, UnreadableCheckpointError, UnsafePickleError
from eca_jax.checkpoints.torch_keys import NUM_BATCHES_TRACKED

Source = Union[str, os.PathLike, Mapping[str, Any]]
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
FORMATS = ("pth", "safetensors")


def sha256(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _to_numpy(value: Any, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    elif type(value).__module__.startswith("torch"):
        import torch  # noqa: PLC0415 -- only for in-memory torch tensors / pickles
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        array = value.numpy()
    elif type(value).__module__.startswith(("jax", "jaxlib")):
        array = np.asarray(value)
    else:
        raise ConversionError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor or array")
    if array.dtype.kind == "f" and array.dtype.itemsize < 4 or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return array


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415
    try:
        return load_file(path)
    except SafetensorError as e:
        raise UnreadableCheckpointError(f"Cannot read {path}: not a valid safetensors file, truncated or "
                                        f"corrupt ({e}).") from None
    except TypeError as e:  # NumPy has no bfloat16: read through the Flax backend instead
        if "bfloat16" not in str(e):
            raise
    from safetensors import safe_open  # noqa: PLC0415
    with safe_open(path, framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in f.keys()}


ZIP_MAGIC = b"PK\x03\x04"   # torch.save's default format since PyTorch 1.6: a zip archive
PICKLE_PROTO = 0x80          # the legacy format: a pickle, which opens with PROTO and a version
PICKLE_VERSIONS = range(2, 6)   # pickle protocols 2..5


def _torch_file_kind(path: str) -> str:
    """"zip" or "pickle" from the first bytes of ``path``; raises if it can be neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UnreadableCheckpointError(f"Cannot read {path}: {e.strerror or e}.") from None
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if len(head) >= 2 and head[0] == PICKLE_PROTO and head[1] in PICKLE_VERSIONS:
        return "pickle"
    what = "an empty file" if not head else f"a file starting with {head!r}"
    raise UnreadableCheckpointError(
        f"Cannot read {path}: not a PyTorch checkpoint (torch.save writes a zip archive or a "
        f"pickle; this is {what}), or it is truncated/corrupt.")


def _read_pickle(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors of our own.

    torch's messages for a damaged file are long and ask the reader to file an issue with
    PyTorch; they are summarised here (the exception type is kept for debugging).
    """
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise ConversionError(f"Reading {path} needs PyTorch (torch.load); install torch or convert the "
                              "file to .safetensors first.") from None
    import pickle  # noqa: PLC0415
    kind = _torch_file_kind(path)
    damaged = (f"Cannot read {path}: a {'zip archive' if kind == 'zip' else 'pickle'} but not a "
               "readable PyTorch checkpoint (truncated/corrupt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if refused is not None:   # a class, function or callable: the only way a pickle runs code
            refused = refused.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            raise UnsafePickleError(
                f"Refusing {path}: torch.load(weights_only=True) refused it because its pickle holds code, "
                f"not only tensors ({refused}). Only plain state dicts convert; nothing in the file was run. "
                "If you trust the file, re-save its state_dict with torch.save(model.state_dict(), ...).") from None
        raise UnreadableCheckpointError(f"{damaged}; the unpickler stopped on an invalid opcode).") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError) as e:
        raise UnreadableCheckpointError(f"{damaged}; {type(e).__name__} in torch.load).") from None


def _unwrap(obj: Any, where: str) -> tuple[Mapping[str, Any], dict]:
    """Finds the state dict inside a wrapper dict; returns (state dict, wrapper info)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{where} holds a {type(obj).__name__}, not a state dict (a dict of tensors).")
    info: dict = {}
    for _ in range(3):  # wrappers may nest once or twice ({"model": {"state_dict": ...}})
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        info.update({k: obj[k] for k in ("arch", "epoch", "best_prec1") if k in obj and not isinstance(obj[k], Mapping)})
        obj = inner
    return obj, info


def clean_state_dict(obj: Any, where: str = "the state dict") -> tuple[dict[str, np.ndarray], dict]:
    """Unwraps, strips ``module.`` prefixes, drops ``num_batches_tracked``; values -> NumPy.

    Returns (state dict, info) where info has the wrapper's ``arch``/``epoch``/``best_prec1``
    (for display only) and ``num_batches_tracked`` (whether the source had such entries).
    """
    sd, info = _unwrap(obj, where)
    out: dict[str, np.ndarray] = {}
    info["num_batches_tracked"] = False
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ConversionError(f"{where}: state dict keys must be strings, got {key!r}")
        name = key
        while name.startswith("module."):
            name = name[len("module."):]
        if name.endswith(NUM_BATCHES_TRACKED):
            info["num_batches_tracked"] = True
            continue
        if name in out:
            raise ConversionError(f"{where}: key {name!r} appears both with and without the 'module.' prefix")
        out[name] = _to_numpy(value, key)
    if not out:
        raise ConversionError(f"{where} holds no tensors (keys: {list(sd)[:5]}).")
    return out, info


def read_state_dict(src: Source) -> tuple[dict[str, np.ndarray], dict]:
    """A file path or an in-memory dict -> (clean state dict, info).

    info: ``source`` (path or None), ``sha256`` (of the file), ``arch`` (wrapper field, unused),
    ``num_batches_tracked``, ``format`` ("safetensors", "pickle" or "memory").
    """
    if isinstance(src, Mapping):
        sd, info = clean_state_dict(src, "the in-memory state dict")
        info.update(source=None, sha256=None, format="memory")
        return sd, info
    path = os.fspath(src)
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "no such file"
        raise UnreadableCheckpointError(f"Cannot read {path}: {what}; expected a .pth.tar/.pth/.pt/.bin/"
                                        ".safetensors file.")
    is_safetensors = path.endswith(".safetensors")
    raw = _read_safetensors(path) if is_safetensors else _read_pickle(path)
    sd, info = clean_state_dict(raw, path)
    info.update(source=os.path.abspath(path), sha256=sha256(path),
                format="safetensors" if is_safetensors else "pickle")
    return sd, info


def format_for(path: Union[str, os.PathLike], format: Optional[str] = None) -> str:
    """The output format: ``format`` if given, else "safetensors" for a .safetensors name, else "pth"."""
    if format is None:
        format = "safetensors" if os.fspath(path).endswith(".safetensors") else "pth"
    if format not in FORMATS:
        raise ConversionError(f"format must be one of {FORMATS}, got {format!r}")
    return format


def write_state_dict(state_dict: Mapping[str, np.ndarray], dst: Union[str, os.PathLike],
                     format: str = "pth") -> None:
    """Writes a state dict atomically (temporary file + os.replace): nothing at ``dst`` on error.

    "pth": ``torch.save`` of an ordered dict of torch tensors (``torch.load(weights_only=True)``
    reads it); "safetensors": safetensors.numpy (no torch needed), metadata {"format": "pt"} as
    timm/transformers write it.
    """
    dst = os.fspath(dst)
    format = format_for(dst, format)
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".tmp-", dir=folder)
    os.close(fd)
    try:
        if format == "safetensors":
            from safetensors.numpy import save_file  # noqa: PLC0415
            save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp, metadata={"format": "pt"})
        else:
            import collections  # noqa: PLC0415
            import torch  # noqa: PLC0415
            torch.save(collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state_dict.items()),
                       tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> the mode of any file the user creates
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
