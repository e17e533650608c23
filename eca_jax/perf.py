"""Opt-in XLA:CPU flag presets for speed.

Nothing here is applied at import time: call :func:`set_xla_flags` before JAX's first computation
(XLA reads ``XLA_FLAGS`` once, when the backend starts; importing jax does not start it), or pass
``--xla-preset`` to experiments/benchmark.py. Figures: experiments/PERFORMANCE.md.
"""
from __future__ import annotations

import os
import sys

# No XLA:CPU flag set beat XLA's defaults on the benchmarks (jaxlib 0.10.2; experiments/PERFORMANCE.md
# lists the ones tried), so "none" is the only preset; add measured ones here.
PRESETS: dict[str, str] = {
    "none": "",
}


def xla_preset_flags(name: str) -> str:
    """The XLA_FLAGS string of preset ``name`` (ValueError naming the presets if unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown XLA preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # private, but the only way to ask without starting a backend
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: True)())


def set_xla_flags(preset: str = "none") -> str:
    """Appends preset ``preset`` to ``XLA_FLAGS``; must run before JAX starts its backend. Returns the flags."""
    if _backend_started():
        raise RuntimeError("set_xla_flags must run before JAX's first computation (XLA reads XLA_FLAGS once)")
    flags = xla_preset_flags(preset)
    if flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    return flags
