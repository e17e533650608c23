"""The paper's experiment rows by name: Table 2's ten attentions and Figure 4's k sweep.

A row is a named attention with the paper's own settings. Names are case-insensitive and ``-``
and ``_`` are the same character (``SE-GC2`` == ``se_gc2``):

==============  ==========  ===================================  ================================
row             layer       settings                             attention params per block (C)
==============  ==========  ===================================  ================================
vanilla         (none)                                           0
SE              se          reduction r = 16                     2*C*(C//16) + C//16 + C
SE-Var1         se_var1                                          0
SE-Var2         se_var2                                          C
SE-Var3         se_var3                                          C^2
SE-GC1          se_gc       groups = 16                          C^2 / 16
SE-GC2          se_gc       16 channels per group (C/16 groups)  16 * C
SE-GC3          se_gc       8 channels per group (C/8 groups)    8 * C
ECA-NS          eca_ns      k = 3                                k * C
ECA             eca         k = 3                                k
ECA-k3 .. k9    eca         k = 3, 5, 7, 9 (Figure 4)            k
ECA-adaptive    eca         k of Eq. 12 from C (Figure 4)        k(C)
CBAM            cbam        r = 16, 7x7 spatial conv (Table 3)   2*C*R + 2*7*7 + 2, R = round(C/16)
GC              gc          r = 8, scale fusion (Table 3)        2*C*R + 2*C + 3*R + 1, R = round(C/8)
SE-r8           se          reduction r = 8 (Table 3, MBv2)      2*C*(C//8) + C//8 + C
==============  ==========  ===================================  ================================

The paper writes SE's count as 2C^2/r; its two FC layers also have biases (C/r + C), which the
exact rule above counts. ``se_gc`` and ``ceca`` stay layer names without a row (their own
defaults); ``vanilla`` builds no attention.

k precedence inside a ResNet (:mod:`eca_jax.models.resnet`): the sweep rows (``ECA-k5``,
``ECA-adaptive``) name their k and override the model's ``k_size``; ``ECA`` and ``ECA-NS`` use
the model's ``k_size`` when the model sets one (the release's ECA-ResNets fix 3,5,5,7) and the
paper's k = 3 otherwise.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping, Optional, Union

from eca_jax.nn.context import hidden_channels
from eca_jax.nn.eca import eca_kernel_size

KRule = Union[None, int, str]   # None: not an ECA row; an odd int; "adaptive" (Eq. 12)


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment row.

    name: the paper's spelling. layer: a key of ``ATTENTION_LAYERS`` or None (vanilla).
    kwargs: the layer's settings. k: the ECA kernel rule (None for non-ECA rows).
    k_overrides_model: True for the sweep names, whose k wins over a model's own ``k_size``.
    formula: the attention (paper's notation). params_rule: the per-block count as text.
    """
    name: str
    layer: Optional[str]
    kwargs: Mapping[str, Any]
    formula: str
    params_rule: str
    k: KRule = None
    k_overrides_model: bool = False

    def block_params(self, channels: int, k: Optional[int] = None) -> int:
        """Exact attention parameters of one block with ``channels`` channels (k: the block's k)."""
        if k is None and self.k is not None:
            k = eca_kernel_size(channels) if self.k == "adaptive" else int(self.k)
        return _PARAMS[self.layer_rule](channels, k, self.kwargs)

    @property
    def layer_rule(self) -> str:
        return self.layer or "none"


def _segc_params(c: int, _k: Optional[int], kw: Mapping[str, Any]) -> int:
    groups = kw.get("groups") or c // kw["channels_per_group"]
    return c * c // groups


_PARAMS: dict[str, Callable[[int, Optional[int], Mapping[str, Any]], int]] = {
    "none": lambda c, k, kw: 0,
    "se": lambda c, k, kw: 2 * c * (c // kw["reduction"]) + c // kw["reduction"] + c,
    "se_var1": lambda c, k, kw: 0,
    "se_var2": lambda c, k, kw: c,
    "se_var3": lambda c, k, kw: c * c,
    "se_gc": _segc_params,
    "eca_ns": lambda c, k, kw: k * c,
    "eca": lambda c, k, kw: k,
}


def _cbam_params(c: int, _k: Optional[int], kw: Mapping[str, Any]) -> int:
    hidden, k = hidden_channels(c, 1 / kw["reduction"]), kw["spatial_kernel_size"]
    return 2 * c * hidden + 2 * k * k + 2


def _gc_params(c: int, _k: Optional[int], kw: Mapping[str, Any]) -> int:
    hidden = hidden_channels(c, 1 / kw["reduction"])
    return 2 * c * hidden + 2 * c + 3 * hidden + 1


_PARAMS.update(cbam=_cbam_params, gc=_gc_params)


def _eca(name: str, k: KRule, overrides: bool) -> Row:
    what = "k of Eq. 12 from C" if k == "adaptive" else f"k = {k}"
    return Row(name, "eca", {} if k == "adaptive" else {"k_size": k}, f"sigmoid(C1D_k(y)), {what}",
               "k(C)" if k == "adaptive" else "k", k=k, k_overrides_model=overrides)


TABLE2: tuple[Row, ...] = (
    Row("vanilla", None, {}, "none", "0"),
    Row("SE", "se", {"reduction": 16}, "sigmoid(W2 ReLU(W1 y)), r = 16",
        "2C(C/r) + C/r + C (paper: 2C^2/r, without the biases)"),
    Row("SE-Var1", "se_var1", {}, "sigmoid(y)", "0"),
    Row("SE-Var2", "se_var2", {}, "sigmoid(w * y)", "C"),
    Row("SE-Var3", "se_var3", {}, "sigmoid(W y), one C x C FC", "C^2"),
    Row("SE-GC1", "se_gc", {"groups": 16}, "sigmoid(GC_16(y)), 16 groups", "C^2/16"),
    Row("SE-GC2", "se_gc", {"channels_per_group": 16}, "sigmoid(GC_{C/16}(y)), C/16 groups", "16C"),
    Row("SE-GC3", "se_gc", {"channels_per_group": 8}, "sigmoid(GC_{C/8}(y)), C/8 groups", "8C"),
    Row("ECA-NS", "eca_ns", {"k_size": 3}, "band matrix (Eq. 7), k = 3", "kC", k=3),
    _eca("ECA", 3, False),
)
# Table 3's comparison set: ResNet-50 with SE, CBAM, the GC block and ECA (timm's CBAM and GC
# modules), and MobileNetV2 with SE (r = 8, before the residual) against ECA.
TABLE3: tuple[Row, ...] = (
    Row("CBAM", "cbam", {"reduction": 16, "spatial_kernel_size": 7},
        "channel: sigmoid(MLP(avg y) + MLP(max y)), r = 16; spatial: sigmoid(BN(conv7x7([mean_c, max_c])))",
        "2CR + 2*7*7 + 2, R = round(C/16)"),
    Row("GC", "gc", {"reduction": 8, "fuse": "scale"},
        "sigmoid(W2 ReLU(LN(W1 sum_hw softmax(w x) x))), r = 8 (timm's gc)",
        "2CR + 2C + 3R + 1, R = round(C/8)"),
    Row("SE-r8", "se", {"reduction": 8}, "sigmoid(W2 ReLU(W1 y)), r = 8 (MobileNetV2, Table 3)",
        "2C(C/8) + C/8 + C"),
)
KSWEEP: tuple[Row, ...] = tuple(_eca(f"ECA-k{k}", k, True) for k in (3, 5, 7, 9)) \
    + (_eca("ECA-adaptive", "adaptive", True),)
ROWS: dict[str, Row] = {row.name: row for row in TABLE2 + KSWEEP + TABLE3}


def row_key(name: str) -> str:
    """The comparison key of a name: lower case, ``-`` as ``_``."""
    return name.lower().replace("-", "_")


_BY_KEY = {row_key(name): row for name, row in ROWS.items()}


def find_row(name: str) -> Optional[Row]:
    """The row called ``name`` (case-insensitive), or None if ``name`` is no row."""
    return _BY_KEY.get(row_key(name))


def get_row(name: str) -> Row:
    """The row called ``name``; ValueError listing every row (and the closest) otherwise."""
    row = find_row(name)
    if row is None:
        close = difflib.get_close_matches(name, list(ROWS), n=3, cutoff=0.5)
        raise ValueError(f"Unknown experiment row {name!r}. Rows: {', '.join(ROWS)}"
                         + (f"; did you mean {', '.join(close)}?" if close else "."))
    return row


def row_names() -> list[str]:
    """Every row name in the paper's spelling: Table 2's order, then the k sweep."""
    return list(ROWS)
