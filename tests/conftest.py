"""Test setup: CPU only, 8 fake devices (set before jax is imported), TF kept off accelerators."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tests check numbers and shapes, not speed: skip XLA's heavy optimizations (30-40% faster compiles).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
