"""RandAugment settings in timm's notation (``"rand-m9-mstd0.5-inc1"``): parsed and checked in plain Python.

No TensorFlow here: the trainer's config validator calls ``parse_randaugment`` before any data is
read. The TensorFlow ops that apply a ``RandAugmentSpec`` to an image are in
:mod:`eca_jax.data.randaugment_ops`.

The string (timm's ``rand_augment_transform``): ``rand`` then ``-``-separated ``<key><value>`` parts,
in any order:

- ``m``: magnitude (default 10), on timm's scale where 10 (``LEVEL_DENOM``) is the full range of
  every op's argument (e.g. rotate 30 degrees);
- ``n``: ops per image (default 2), chosen uniformly with replacement;
- ``mstd``: std of the gaussian noise added to the magnitude each time an op runs (default 0: fixed
  magnitude); ``inf`` (or above 100, as timm) draws the magnitude uniformly from [0, m];
- ``mmax``: the magnitude is clipped to [0, mmax] after the noise (default 10);
- ``inc``: 1 uses the "increasing" op set, whose severity grows with the magnitude (default 0);
- ``p``: probability that each chosen op is applied (default 0.5).

Differences from timm, all on input timm would accept silently: unknown keys, missing values and
empty parts are errors here (timm skips parts without a digit); ``inc0`` means off (timm's
``bool("0")`` is True); ``m`` may be fractional.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Optional

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is the full range of every op's argument

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (same order).
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_HAS_INCREASING = ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness")
RANDAUGMENT_INCREASING_OPS = tuple(f"{n}Increasing" if n in _HAS_INCREASING else n for n in RANDAUGMENT_OPS)

RANDAUGMENT_KEYS = ("m", "n", "mstd", "mmax", "inc", "p")
_PART = re.compile(r"([a-z]+?)((?:inf|[-+.\d]).*)?")  # shortest letters, then a value starting like a number


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    """One RandAugment setting (timm's meaning of each field; see the module docstring).

    ``ops``: the op names to choose from; empty means timm's full set for ``increasing``
    (``RANDAUGMENT_INCREASING_OPS`` or ``RANDAUGMENT_OPS``), and it is filled in on construction.
    Raises ValueError naming the field when a value is out of range.
    """

    num_layers: int = 2
    magnitude: float = LEVEL_DENOM
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False
    prob: float = 0.5
    ops: tuple[str, ...] = ()

    def __post_init__(self):
        checks = {
            "num_layers": isinstance(self.num_layers, int) and self.num_layers >= 0,
            "magnitude": math.isfinite(self.magnitude) and self.magnitude >= 0,
            "magnitude_std": self.magnitude_std >= 0,  # inf allowed: uniform in [0, magnitude]
            "magnitude_max": math.isfinite(self.magnitude_max) and self.magnitude_max > 0,
            "prob": 0.0 <= self.prob <= 1.0,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"RandAugment {field} out of range: {getattr(self, field)!r}")
        available = RANDAUGMENT_INCREASING_OPS if self.increasing else RANDAUGMENT_OPS
        ops = tuple(self.ops) or available
        unknown = [name for name in ops if name not in available]
        if unknown:
            raise ValueError(f"unknown RandAugment op(s) {unknown} for increasing={self.increasing}; "
                             f"valid names: {', '.join(available)}")
        object.__setattr__(self, "ops", ops)


def _resolve_op_names(names: Iterable[str], available: tuple[str, ...], what: str) -> list[str]:
    """Names as given (``"Posterize"`` also names ``"PosterizeIncreasing"``) -> names in ``available``."""
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        matches = [op for op in available if name in (op, op.removesuffix("Increasing"))]
        if not matches:
            valid = sorted(set(available) | {op.removesuffix("Increasing") for op in available})
            raise ValueError(f"unknown RandAugment op {name!r} in {what}; valid names: {', '.join(valid)}")
        out += matches
    return out


def _number(key: str, text: str, part: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or (math.isinf(value) and key != "mstd"):
        raise ValueError(f"bad value {text!r} for RandAugment key {key!r} in part {part!r} of {spec!r}")
    return value


def _parse_parts(spec: str) -> dict[str, float]:
    """``"rand-m9-mstd0.5"`` -> ``{"m": 9.0, "mstd": 0.5}``; ValueError naming the bad part."""
    if not isinstance(spec, str):
        raise ValueError(f"RandAugment spec must be a string like 'rand-m9-mstd0.5-inc1', got {spec!r}")
    head, *parts = spec.strip().split("-")
    if head != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand' (e.g. 'rand-m9-mstd0.5-inc1'), got {spec!r}")
    values: dict[str, float] = {}
    for part in parts:
        if not part:
            raise ValueError(f"empty part in RandAugment spec {spec!r} (two '-' in a row or one at the end)")
        match = _PART.fullmatch(part)
        key = match.group(1) if match else part
        if key not in RANDAUGMENT_KEYS:
            raise ValueError(f"unknown RandAugment key {key!r} in {spec!r}; valid keys: {', '.join(RANDAUGMENT_KEYS)}")
        if match.group(2) is None:
            raise ValueError(f"RandAugment key {key!r} has no value in {spec!r} (e.g. 'm9')")
        if key in values:
            raise ValueError(f"RandAugment key {key!r} given twice in {spec!r}")
        values[key] = _number(key, match.group(2), part, spec)
    for key in ("n", "inc", "mmax"):
        if key in values and values[key] != int(values[key]):
            raise ValueError(f"RandAugment key {key!r} takes an integer, got {values[key]!r} in {spec!r}")
    if values.get("inc", 0) not in (0, 1):
        raise ValueError(f"RandAugment key 'inc' takes 0 or 1, got {values['inc']!r} in {spec!r}")
    return values


def parse_randaugment(spec: str, *, ops: Optional[Iterable[str]] = None,
                      exclude: Optional[Iterable[str]] = None) -> RandAugmentSpec:
    """timm's RandAugment string -> ``RandAugmentSpec``, with an optional op subset.

    ``ops``: choose only these ops; ``exclude``: leave these out. Names are timm's
    (``RANDAUGMENT_OPS``); a base name such as ``"Posterize"`` also names its increasing variant.
    Raises ValueError naming the bad part, key or op name (with the valid ones).
    """
    values = _parse_parts(spec)
    mstd = values.get("mstd", 0.0)
    increasing = bool(values.get("inc", 0))
    available = RANDAUGMENT_INCREASING_OPS if increasing else RANDAUGMENT_OPS
    chosen = _resolve_op_names(ops, available, "ops") if ops is not None else list(available)
    dropped = set(_resolve_op_names(exclude, available, "exclude")) if exclude is not None else set()
    chosen = [name for name in chosen if name not in dropped]
    if not chosen:
        raise ValueError(f"RandAugment {spec!r}: no ops left to choose from (ops={ops!r}, exclude={exclude!r})")
    return RandAugmentSpec(num_layers=int(values.get("n", 2)), magnitude=values.get("m", LEVEL_DENOM),
                           magnitude_std=math.inf if mstd > 100 else mstd,
                           magnitude_max=values.get("mmax", LEVEL_DENOM), increasing=increasing,
                           prob=values.get("p", 0.5), ops=tuple(chosen))
