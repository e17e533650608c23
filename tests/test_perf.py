"""eca_jax.perf: XLA flag presets and the glibc malloc tunables (pure environment handling)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eca_jax import perf


def test_malloc_env_appends_to_existing_tunables_and_leaves_the_input_alone():
    env = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "PATH": "/bin"}
    out = perf.malloc_env(env)
    assert out["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + perf.MALLOC_TUNABLES
    assert out["PATH"] == "/bin" and env["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0"
    assert perf.malloc_env({})["GLIBC_TUNABLES"] == perf.MALLOC_TUNABLES
    for tunable in ("hugetlb=1", "arena_max=1", "mmap_max=0", "trim_threshold="):
        assert "glibc.malloc." + tunable in perf.MALLOC_TUNABLES


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_reexec_restarts_once_with_the_tunables():
    code = ("import os, sys; from eca_jax import perf; print('start', flush=True); "
            "perf.reexec_with_malloc_tunables(); print(os.environ.get('GLIBC_TUNABLES', ''))")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    if perf.platform.libc_ver()[0] == "glibc":
        assert lines == ["start", "start", perf.MALLOC_TUNABLES]     # restarted exactly once
    # A GLIBC_TUNABLES set by the user is respected: no restart.
    env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["start", "glibc.malloc.hugetlb=0"]


def test_unknown_xla_preset_is_named():
    with pytest.raises(ValueError, match="unknown XLA preset 'fast'"):
        perf.xla_preset_flags("fast")
