"""Helpers for the trainer tests: a tiny synthetic dataset with the eca_jax.data API, configs.

The synthetic data follows the data contract exactly (global jax.Arrays built with
make_array_from_process_local_data from each process's slice; get_state()/state= resume;
padded eval batches with a mask), but is generated from the example index, so tests need no
files and resume is exact by construction. Images: class-dependent blobs plus noise, so a small
net can learn them (not all-zero, not trivially separable by the mean alone).
"""
from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any, Iterator

import jax
import numpy as np

NUM_CLASSES = 4

# Environment for the Pythons the tests launch: they write every compile, however small, into the
# run's persistent compilation cache (its directory set by tests/conftest.py and inherited), so a
# later process of the same program loads it instead of compiling (a hit is the same executable).
CACHE_EVERY_COMPILE = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@dataclasses.dataclass
class Info:
    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_split: str = "train"
    eval_split: str = "test"
    class_names: tuple = ()


def _examples(indices: np.ndarray, image_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (image, label) for each global example index."""
    images, labels = [], []
    yy, xx = np.mgrid[0:image_size, 0:image_size] / max(1, image_size - 1)
    for i in indices:
        rng = np.random.default_rng([split_seed, int(i)])
        label = int(rng.integers(NUM_CLASSES))
        cy, cx = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)][label]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
        img = blob[..., None] * np.array([1.0, 0.5 + 0.5 * (label % 2), 0.3]) + 0.3 * rng.normal(
            size=(image_size, image_size, 3))
        images.append(img.astype(np.float32))
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


def _global(local: np.ndarray, sharding, global_batch: int) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, local, (global_batch,) + local.shape[1:])


class _TrainIterator:
    def __init__(self, global_batch_size: int, image_size: int, seed: int, sharding, state=None,
                 step_delay: float = 0.0, progress_file: str | None = None):
        self.gb, self.size, self.seed, self.sharding = global_batch_size, image_size, seed, sharding
        self.step_delay, self.progress_file = step_delay, progress_file
        self.batches = int((state or {}).get("batches", 0))
        if state and int(state.get("seed", seed)) != seed:
            raise ValueError("data state from another seed")

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        n, p = jax.process_count(), jax.process_index()
        local = self.gb // n
        start = self.batches * self.gb + p * local
        # Train stream: a seeded permutation-free infinite stream of fresh examples.
        images, labels = _examples(np.arange(start, start + local) + 10_000_000 * self.seed,
                                   self.size, 1)
        self.batches += 1
        if self.progress_file:
            with open(self.progress_file, "w") as f:
                f.write(f"batches={self.batches}\n")
        if self.step_delay:
            time.sleep(self.step_delay)
        return {"image": _global(images, self.sharding, self.gb),
                "label": _global(labels, self.sharding, self.gb)}

    def get_state(self) -> dict[str, Any]:
        return {"batches": self.batches, "seed": self.seed}


class SyntheticData:
    """Module-like object with the eca_jax.data API (dataset name is ignored)."""

    def __init__(self, num_train: int = 256, num_eval: int = 40, step_delay: float = 0.0,
                 progress_file: str | None = None):
        self.num_train, self.num_eval = num_train, num_eval
        self.step_delay, self.progress_file = step_delay, progress_file

    def dataset_info(self, name, data_dir=None, manual_dir=None) -> Info:
        return Info(name, NUM_CLASSES, self.num_train, self.num_eval)

    def make_train_iterator(self, name, *, global_batch_size, image_size, seed, sharding,
                            data_dir=None, manual_dir=None, augment="none", state=None, **kw):
        return _TrainIterator(global_batch_size, image_size, seed, sharding, state,
                              self.step_delay, self.progress_file)

    def make_eval_iterator(self, name, *, global_batch_size, image_size, sharding,
                           resize_size=None, data_dir=None, manual_dir=None, **kw):
        n, p = jax.process_count(), jax.process_index()
        local = global_batch_size // n
        for start in range(0, self.num_eval, global_batch_size):
            idx = np.arange(start + p * local, start + (p + 1) * local)
            images, labels = _examples(np.minimum(idx, self.num_eval - 1), image_size, 2)
            mask = (idx < self.num_eval).astype(np.float32)
            yield {"image": _global(images, sharding, global_batch_size),
                   "label": _global(labels, sharding, global_batch_size),
                   "mask": _global(mask, sharding, global_batch_size)}


def tiny_config(**overrides):
    """A config for eca_resnet8_cifar at 8x8 on the synthetic data (fast on CPU)."""
    from eca_jax.train.config import make_config
    base = dict(model="eca_resnet8_cifar", model_kwargs=dict(widths=(4, 8, 8), stem_width=4),
                dataset="synthetic", image_size=8, augment="none", batch_size=16,
                total_steps=6, log_every_steps=2, eval_every_steps=3, checkpoint_every_steps=3,
                learning_rate=0.05, lr_decay_epochs=1.0, lr_decay_factor=0.5, progress="none",
                keep_checkpoints=2)
    base.update(overrides)
    return make_config(**base)


def _process_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    starts = {}
    for s in shards:  # replicas over other mesh axes hold the same rows: keep one
        starts.setdefault(s.index[0].start or 0, np.asarray(s.data))
    return np.concatenate(list(starts.values()))


class _HostsTrainIterator:
    """Global batches stacked from the local batches of emulated hosts (see EmulatedHosts)."""

    def __init__(self, hosts: list, sharding, global_batch: int):
        self.hosts, self.sharding, self.global_batch = hosts, sharding, global_batch

    def __iter__(self):
        return self

    def local_batches(self) -> list[dict[str, np.ndarray]]:
        """The next local batch of each host this process emulates, in host order."""
        return [{k: _process_rows(v) for k, v in next(h).items()} for h in self.hosts]

    def __next__(self) -> dict[str, jax.Array]:
        local = self.local_batches()
        return {k: jax.make_array_from_process_local_data(
                    self.sharding, np.concatenate([b[k] for b in local]),
                    (self.global_batch,) + local[0][k].shape[1:]) for k in local[0]}

    def get_state(self) -> dict[str, Any]:
        return self.hosts[0].get_state()


class EmulatedHosts:
    """The real ``eca_jax.data`` as ``num_hosts`` processes read it, inside one process.

    Host p's train pipeline is built exactly as process p of num_hosts builds it (its tfds shard,
    its shuffle and augmentation seeds: ``Reader`` reads jax.process_index/process_count, patched
    here while it is built). A global batch is the hosts' local batches stacked in host order,
    which is how ``jax.make_array_from_process_local_data`` lays out a multi-process batch on a
    process-major mesh. So a 1-process run on this module sees the very batches an N-process run
    sees: the reference for tests/test_multihost.py. Eval is the module's own (its sums do not
    depend on the order). Resuming passes the saved state (written by N processes) to every host.
    With R real processes (R divides N), process r emulates hosts r*N/R .. (r+1)*N/R - 1 and
    supplies their rows.
    """

    def __init__(self, num_hosts: int):
        from eca_jax import data
        self.data, self.num_hosts = data, num_hosts

    def dataset_info(self, *args, **kwargs):
        return self.data.dataset_info(*args, **kwargs)

    def make_eval_iterator(self, *args, **kwargs):
        return self.data.make_eval_iterator(*args, **kwargs)

    def make_train_iterator(self, name, *, global_batch_size, sharding, **kwargs):
        from unittest import mock

        from eca_jax.data import reading
        n, r = self.num_hosts, jax.process_count()
        if n % r or global_batch_size % n:
            raise ValueError(f"EmulatedHosts({n}): {r} processes or the batch {global_batch_size} "
                             f"do not divide {n} hosts")
        k = n // r
        hosts = []
        for p in range(jax.process_index() * k, (jax.process_index() + 1) * k):
            with mock.patch.object(jax, "process_index", return_value=p), \
                    mock.patch.object(jax, "process_count", return_value=n), \
                    mock.patch.object(reading, "local_batch_size", return_value=global_batch_size // n):
                hosts.append(self.data.make_train_iterator(
                    name, global_batch_size=global_batch_size, sharding=sharding, **kwargs))
        return _HostsTrainIterator(hosts, sharding, global_batch_size)


SMOKE_CONFIG = "experiments/configs/smoke.py"
# The multi-host tests' run: smoke.py (ECA-ResNet-8, widths 8/8/16, batch 32, constant lr) on the
# digits at their own 8x8, 12 steps, log every step, eval at 6 and 12 over the 360 test digits
# with batch 48 (360 = 7.5 batches: padded), checkpoints every 3, parameters sharded over fsdp=2.
MULTIHOST_OVERRIDES = {"image_size": 8, "total_steps": 12, "log_every_steps": 1,
                       "eval_every_steps": 6, "checkpoint_every_steps": 3, "eval_batch_size": 48,
                       "fsdp_min_size": 64, "mesh.fsdp": 2, "progress": "lines"}


def smoke_config(**overrides):
    """experiments/configs/smoke.py with ``overrides`` (dotted keys such as "mesh.fsdp")."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), SMOKE_CONFIG)
    spec = importlib.util.spec_from_file_location("smoke_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a coordinator the test processes connect to)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
