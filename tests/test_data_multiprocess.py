"""Two processes (jax.distributed on 127.0.0.1, 2 fake CPU devices each) evaluate the digits together.

Every eval example must be counted exactly once across processes, with ``num_examples`` exact,
for split sizes that the global batch does not divide (360 with batch 16; 357 with batch 12,
where the processes' shards differ in size: 179 and 178). Runtime: ~20-40 s (two fresh Pythons).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eca_jax import data
from eca_jax.data import digits as digits_lib
from train_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "data_worker.py")
NUM_PROCESSES = 2



@pytest.fixture(scope="module")
def worker_results(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("multiprocess")
    data_dir = str(root / "tfds")
    data.prepare("digits", data_dir=data_dir)  # written once, before the processes start
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    port = free_port()
    outs = [str(root / f"process_{i}.json") for i in range(NUM_PROCESSES)]
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(NUM_PROCESSES), str(port), data_dir, outs[i]],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(NUM_PROCESSES)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed (rc {p.returncode}):\n{logs[i][-4000:] if i < len(logs) else ''}"
    results = []
    for path in outs:
        with open(path) as f:
            results.append(json.load(f))
    return results


def test_processes_form_one_mesh(worker_results):
    assert [r["process_index"] for r in worker_results] == list(range(NUM_PROCESSES))
    assert all(r["process_count"] == NUM_PROCESSES and r["device_count"] == 2 * NUM_PROCESSES for r in worker_results)


@pytest.mark.parametrize("split,n,global_batch,shard_sizes", [("test", 360, 16, (180, 180)),
                                                             ("test[:357]", 357, 12, (179, 178))])
def test_two_processes_count_every_eval_example_once(worker_results, split, n, global_batch, shard_sizes):
    assert n % global_batch != 0
    labels = digits_lib.digits_arrays()["test"]["label"][:n]
    offset = 0
    for r, size in zip(worker_results, shard_sizes):
        ev = r["eval"][split]
        assert ev["num_examples"] == n
        assert ev["num_steps"] == -(-max(shard_sizes) // (global_batch // NUM_PROCESSES))
        assert ev["count"] == n  # masked sum inside a jitted step over the global arrays
        assert ev["label_sum"] == float(labels.sum())
        assert sorted(ev["indices"]) == list(range(n)), "each example exactly once, none missing"
        assert [int(labels[i]) for i in ev["indices"]] == ev["labels"]
        # This process's devices only ever held examples of its own shard of the split.
        assert ev["local_indices"] == list(range(offset, offset + size))
        offset += size


def test_two_processes_train_in_lockstep(worker_results):
    states = [r["train"]["state"] for r in worker_results]
    assert all(s == states[0] for s in states) and states[0]["process_count"] == NUM_PROCESSES
    assert states[0]["steps_per_epoch"] == (1437 // NUM_PROCESSES) // (16 // NUM_PROCESSES)
    for r in worker_results:
        assert r["train"]["shape"] == [16, 8, 8, 3]
        assert sum(r["train"]["label_hist"]) == 16 and max(r["train"]["label_hist"]) < 16
    assert worker_results[0]["train"]["label_hist"] == worker_results[1]["train"]["label_hist"]
