"""Where a PyTorch key name comes from: the one-to-one map between Flax variables and state-dict entries.

eca_jax's models name their modules after the PyTorch layout they follow, so the Flax path joined
with "." is the PyTorch module path (``("layer1.0", "eca", "conv")`` <-> ``layer1.0.eca.conv``).
What remains is renaming leaves and transposing kernels:

=====================  ===========================  ==========================================
Flax leaf              PyTorch entry                layout change
=====================  ===========================  ==========================================
Conv ``kernel``        ``weight``                   HWIO (kh, kw, in/groups, out) -> OIHW
                                                    (out, in/groups, kh, kw); depthwise
                                                    (3, 3, 1, C) <-> (C, 1, 3, 3)
ECA ``conv.kernel``    ``conv.weight``              (k, 1, 1) -> (1, 1, k), taps in order
Dense ``kernel``       ``weight``                   (in, out) -> (out, in)
Dense/BN ``bias``      ``bias``                     none
BN ``scale``           ``weight``                   none
BN stats ``mean/var``  ``running_mean/running_var``  none (collection ``batch_stats``)
(none)                 ``num_batches_tracked``      int64 scalar, written as 0 on export,
                                                    ignored on import
=====================  ===========================  ==========================================

Key ORDER follows a rule, :func:`module_sort_key`: PyTorch lists a model's entries in the order
its modules are defined, and the release, torchvision and timm define them alike (stem convs and
BatchNorms by number, then the stages ``layer1``.. ``layerN``, then ``fc``; in a block ``conv1``,
``bn1``, ``conv2``, ``bn2``, (``conv3``, ``bn3``,) the attention, ``downsample``; MobileNetV2's
``features.N`` by number, then ``classifier``). Within a module: weight, bias, running_mean,
running_var.

Every function here is pure NumPy: no torch, no jax arrays required (ShapeDtypeStructs work
wherever only shapes are needed).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from flax import traverse_util

from eca_jax.checkpoints.errors import ConversionError
from eca_jax.checkpoints.shapes import check_shapes

# Flax -> PyTorch axis permutations by kernel rank; the inverse permutations go the other way.
_TO_TORCH_AXES = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}
_KIND_BY_RANK = {4: "conv2d", 3: "conv1d", 2: "dense"}
BN_BUFFERS = ("running_mean", "running_var")
NUM_BATCHES_TRACKED = "num_batches_tracked"

# Rank of a module name among its siblings (PyTorch definition order); see module_sort_key.
_ATTENTION_NAMES = ("eca", "se", "attn")
_NAME = re.compile(r"^([a-z_]+?)(\d*)$")


def _name_rank(name: str) -> tuple:
    """Sort key of one module name among its siblings."""
    if name.isdigit():
        return (0, int(name))                       # features.3, conv1.0, downsample.1
    m = _NAME.match(name)
    base, number = (m.group(1), int(m.group(2) or 0)) if m else (name, 0)
    if base in ("conv", "bn"):
        return (1, number, 0 if base == "conv" else 1)   # conv1, bn1, conv2, bn2, ...; ECA's "conv"
    if base in _ATTENTION_NAMES:
        return (2, 0)
    if base == "downsample":
        return (3, 0)
    if base in ("layer", "features"):
        return (4, number)
    if base in ("fc", "classifier"):
        return (5, number)
    return (6, 0, name)                             # not in any eca_jax layout: last, by name


def module_sort_key(module_path: Sequence[str]) -> tuple:
    """Sort key of a Flax module path (``("layer1.0", "eca", "conv")``) in PyTorch's module order.

    The path is split into PyTorch's dotted names (``layer1``, ``0``, ``eca``, ``conv``), each ranked
    among its siblings by :func:`_name_rank`."""
    return tuple(_name_rank(part) for name in module_path for part in name.split("."))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch state-dict entry and the Flax leaf it corresponds to.

    torch_key: e.g. ``layer1.0.conv1.weight``; collection: ``params`` or ``batch_stats``;
    path: the Flax path inside the collection, e.g. ``("layer1.0", "conv1", "kernel")``;
    axes: the Flax -> PyTorch transpose (None: same layout).
    """
    torch_key: str
    collection: str
    path: tuple
    axes: Optional[tuple] = None

    def to_torch(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value)
        return value if self.axes is None else np.ascontiguousarray(value.transpose(self.axes))

    def from_torch(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value)
        return value if self.axes is None else np.ascontiguousarray(value.transpose(np.argsort(self.axes)))

    def torch_shape(self, flax_shape: Sequence[int]) -> tuple:
        return tuple(flax_shape) if self.axes is None else tuple(flax_shape[a] for a in self.axes)


def _flat(tree: Mapping[str, Any]) -> dict[tuple, Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def entries(variables: Mapping[str, Any]) -> list[Entry]:
    """The PyTorch entries of ``variables`` ({"params", "batch_stats"}: arrays or ShapeDtypeStructs).

    In PyTorch's order (:func:`module_sort_key`; within a module: weight, bias, running_mean,
    running_var). Raises ConversionError for a leaf with no PyTorch meaning.
    """
    params, stats = _flat(variables.get("params", {})), _flat(variables.get("batch_stats", {}))
    modules: dict[tuple, dict[str, tuple]] = {}
    for collection, flat in (("params", params), ("batch_stats", stats)):
        for path in flat:
            modules.setdefault(path[:-1], {})[path[-1]] = (collection, flat[path])
    order = sorted(modules, key=module_sort_key)
    out = []
    for module in order:
        leaves = modules[module]
        prefix = ".".join(module)
        names = set(leaves)
        if "scale" in names or "mean" in names:                       # BatchNorm
            if names != {"scale", "bias", "mean", "var"}:
                raise ConversionError(f"Flax BatchNorm {prefix!r} has leaves {sorted(names)}; expected "
                                      "scale and bias (params) and mean and var (batch_stats).")
            out += [Entry(f"{prefix}.weight", "params", module + ("scale",)),
                    Entry(f"{prefix}.bias", "params", module + ("bias",)),
                    Entry(f"{prefix}.running_mean", "batch_stats", module + ("mean",)),
                    Entry(f"{prefix}.running_var", "batch_stats", module + ("var",))]
            continue
        if not names <= {"kernel", "bias"} or "kernel" not in names:
            raise ConversionError(f"Flax module {prefix!r} has leaves {sorted(names)}, which have no PyTorch "
                                  "counterpart (only Conv/Dense kernels, biases and BatchNorm convert).")
        rank = len(leaves["kernel"][1].shape)
        if rank not in _TO_TORCH_AXES:
            raise ConversionError(f"Flax kernel {prefix}.kernel has rank {rank}; expected 2 (Dense), "
                                  "3 (ECA Conv1d) or 4 (Conv2d).")
        out.append(Entry(f"{prefix}.weight", "params", module + ("kernel",), _TO_TORCH_AXES[rank]))
        if "bias" in names:
            out.append(Entry(f"{prefix}.bias", "params", module + ("bias",)))
    return out


def _leaf(variables: Mapping[str, Any], entry: Entry) -> Any:
    node = variables[entry.collection]
    for name in entry.path:
        node = node[name]
    return node


def torch_shapes(variables: Mapping[str, Any]) -> dict[str, tuple]:
    """{PyTorch key: PyTorch shape} that ``variables`` (or its ShapeDtypeStructs) convert to."""
    return {e.torch_key: e.torch_shape(_leaf(variables, e).shape) for e in entries(variables)}


def state_dict_from_flax(variables: Mapping[str, Any], *, num_batches_tracked: bool = False
                         ) -> dict[str, np.ndarray]:
    """Flax ``{"params", "batch_stats"}`` -> PyTorch state dict of NumPy arrays (same dtypes).

    ``num_batches_tracked=True`` adds an int64 scalar 0 after every BatchNorm's running_var, as
    the release's and torchvision's files have (timm's published weights have none). Exact: only
    transposes, no arithmetic.
    """
    out: dict[str, np.ndarray] = {}
    for e in entries(variables):
        out[e.torch_key] = e.to_torch(np.asarray(_leaf(variables, e)))
        if num_batches_tracked and e.torch_key.endswith(".running_var"):
            out[e.torch_key[:-len("running_var")] + NUM_BATCHES_TRACKED] = np.zeros((), np.int64)
    return out


def compare_keys(found: Mapping[str, tuple], expected: Mapping[str, tuple], what: str) -> None:
    """Raises ShapeMismatchError (a ConversionError) naming the first missing, unexpected and
    mis-shaped PyTorch key; ``what`` describes the expected model."""
    check_shapes(found, expected, source="The state dict", target=what)


def flax_from_state_dict(state_dict: Mapping[str, Any], like: Mapping[str, Any], what: str = "the model",
                         allow_missing: Iterable[str] = ()) -> dict[str, dict]:
    """PyTorch state dict (NumPy arrays) -> Flax ``{"params", "batch_stats"}`` shaped like ``like``.

    ``like``: the model's variables or ``jax.eval_shape`` of its init (gives paths, shapes, dtypes).
    ``num_batches_tracked`` entries are ignored. Every other key must match (strict): the error
    names the first missing, unexpected and mis-shaped key. Keys in ``allow_missing`` may be
    absent and are left out of the result. Values are cast to ``like``'s dtypes (float32 -> float32
    is exact).
    """
    table = entries(like)
    found = {k: tuple(np.shape(v)) for k, v in state_dict.items() if not k.endswith(NUM_BATCHES_TRACKED)}
    allowed = set(allow_missing)
    expected = {e.torch_key: e.torch_shape(_leaf(like, e).shape) for e in table if e.torch_key not in allowed
                or e.torch_key in found}
    compare_keys(found, expected, what)
    flat: dict[tuple, np.ndarray] = {}
    for e in table:
        if e.torch_key not in found:
            continue
        dtype = np.dtype(_leaf(like, e).dtype)
        flat[(e.collection,) + e.path] = e.from_torch(np.asarray(state_dict[e.torch_key])).astype(dtype, copy=False)
    nested = traverse_util.unflatten_dict(flat)
    return {"params": nested.get("params", {}), "batch_stats": nested.get("batch_stats", {})}
