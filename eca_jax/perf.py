"""Opt-in CPU speed settings: XLA:CPU flag presets and glibc's huge-page malloc tunable.

Nothing here is applied at import time: call :func:`set_xla_flags` before JAX's first computation
(XLA reads ``XLA_FLAGS`` once, when the backend starts; importing jax does not start it), or pass
``--xla-preset`` to experiments/benchmark.py. Figures: experiments/PERFORMANCE.md.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

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


# --- glibc malloc: keep freed memory, back it with transparent huge pages --------------------------
# XLA:CPU allocates the temporaries of a compiled step at every execution and frees them at its end.
# With glibc's defaults, blocks that large are mmap'ed and handed back to the kernel when freed, so
# every step first-touches all of its temporary memory again, 4 KiB page by page: 284k page faults
# per eca_resnet50 training step (batch 8 at 224; 0.5 s of kernel time in a 1.7 s step), 202k per
# eca_mobilenet_v2 step. MALLOC_TUNABLES makes glibc serve every allocation from one heap that it
# never returns (no mmap, no trimming, one arena) and ask for transparent huge pages for it: no page
# faults after the first step (experiments/PERFORMANCE.md has the A/B). The cost: freed memory stays
# with the process (its RSS is the high-water mark) and threads share one malloc arena.
# glibc reads GLIBC_TUNABLES when the process starts, hence :func:`reexec_with_malloc_tunables`.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=68719476736")


def malloc_env(env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) with :data:`MALLOC_TUNABLES` appended to GLIBC_TUNABLES."""
    env = dict(os.environ if env is None else env)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), MALLOC_TUNABLES) if t)
    return env


def reexec_with_malloc_tunables() -> None:
    """Restarts this Python process (same command line) under :data:`MALLOC_TUNABLES` unless GLIBC_TUNABLES is set.

    Call first thing in a CPU script's ``if __name__ == "__main__":``. Linux with glibc only (a
    no-op elsewhere). A GLIBC_TUNABLES already in the environment is left as it is (also how the
    restarted process knows that it was restarted).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or "GLIBC_TUNABLES" in os.environ:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps "-m module" / "-c code" (sys.argv does not).
    os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), malloc_env())
