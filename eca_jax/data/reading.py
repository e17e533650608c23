"""Reading a split for the input pipelines: this process's shard, its batches out of tf.data, onto the devices.

- ``Reader``: this process's shard of a tfds split (``tfds.even_splits(split, P)[p]``) and where it
  is read from (decoded in memory, ``sources.MemorySource``, or streamed, ``sources.TfdsSource``);
- ``local_batch_size``: the rows of a global batch this process supplies (checked even split);
- ``numpy_batches``: a tf.data pipeline of batches as numpy, a failed decode named by image;
- ``prefetched``: local batches -> global, sharded ``jax.Array`` batches, ``size`` ahead.

:mod:`eca_jax.data.pipeline` builds the train and eval iterators on these.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
import tensorflow_datasets as tfds

from eca_jax.data import datasets, sources, transforms
from eca_jax.data._tf import tf

AUTOTUNE = tf.data.AUTOTUNE
CACHE_LIMIT_BYTES = 1 << 30  # cache="auto": fixed-shape shards under 1 GiB decoded are held in memory

Batch = dict[str, np.ndarray]


# ------------------------------------------------------------------ processes and device transfer

def local_batch_size(sharding: jax.sharding.Sharding, global_batch_size: int) -> int:
    """Rows of the global batch that this process supplies; checks that processes split the batch evenly."""
    if not isinstance(global_batch_size, int) or global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
    try:
        index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    except ValueError as e:
        raise ValueError(f"global_batch_size {global_batch_size} cannot be split over the sharding {sharding}: {e}") from None
    rows = {index[0].indices(global_batch_size)[:2] for index in index_map.values()}
    local = sum(stop - start for start, stop in rows)
    if local * jax.process_count() != global_batch_size:
        raise ValueError(
            f"The batch axis of {sharding} must be split evenly over the {jax.process_count()} processes "
            f"(this process holds {local} of {global_batch_size} rows); eca_jax.data feeds data-parallel "
            "meshes where each process supplies its own part of the batch.")
    return local


def prefetched(items: Iterator[tuple[Any, Batch]], sharding, size: int) -> Iterator[tuple[Any, dict[str, jax.Array]]]:
    """Turns ``(tag, local batch)`` items into global arrays on the devices, ``size`` items ahead of the consumer."""
    queue: collections.deque = collections.deque()
    process_count = jax.process_count()
    for tag, batch in items:
        arrays = {key: jax.make_array_from_process_local_data(
                      sharding, value, (value.shape[0] * process_count, *value.shape[1:]))
                  for key, value in batch.items()}
        queue.append((tag, arrays))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


# ------------------------------------------------------------------ reading and errors

class Reader:
    """Common setup of both pipelines: this process's shard of ``split`` and where it is read from."""

    def __init__(self, builder: tfds.core.DatasetBuilder, info: datasets.DatasetInfo, split: str, *, cache,
                 num_threads: Optional[int], shuffle_buffer_size: int):
        self.builder, self.info, self.split = builder, info, split
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        shards = tfds.even_splits(split, self.process_count)
        try:
            self.shard_sizes = [builder.info.splits[s].num_examples for s in shards]
        except (KeyError, ValueError) as e:
            raise ValueError(f"Dataset {info.name!r} has no split {split!r} (splits: {list(builder.info.splits)}): "
                             f"{e}") from None
        self.shard_offset = sum(self.shard_sizes[:self.process_index])  # where our shard starts in the split
        local = shards[self.process_index]
        keys = dict(image_key=info.image_key, label_key=info.label_key)
        if cache not in (True, False, "auto", None):
            raise ValueError(f"cache must be True, False or 'auto', got {cache!r}")
        if cache in ("auto", None):
            cache = sources.fits_in_memory(builder, local, info.image_key, CACHE_LIMIT_BYTES)
        elif cache and sources.fixed_image_shape(builder, info.image_key) is None:
            raise ValueError(f"cache=True needs images of one fixed shape; {info.name!r} images vary in size "
                             "(use cache=False or 'auto').")
        self.source: Any
        if cache:
            self.source = sources.MemorySource(builder, local, num_threads=num_threads, **keys)
        else:
            self.source = sources.TfdsSource(builder, local, num_threads=num_threads,
                                             shuffle_buffer_size=shuffle_buffer_size, **keys)
        self.in_memory = bool(cache)

    def describe(self) -> str:
        return f"{self.info.name} split {self.split!r} (process {self.process_index}/{self.process_count})"


def _undecodable(examples: tf.data.Dataset) -> list[str]:
    """``"name (reason)"`` for each example of ``examples`` (``(position, example)`` pairs) whose image fails to decode."""
    bad = []
    for _, example in examples:
        image, name = example["image"], example["name"].numpy().decode("utf-8", "replace")
        if not bool(transforms.is_known_format(image)):
            bad.append(f"{name} (not JPEG/PNG/GIF/BMP/WebP data)")
            continue
        try:
            transforms.decode_rgb(image, name, accurate=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            bad.append(f"{name} ({transforms.short_tf_message(e)})")
    return bad


def numpy_batches(ds: tf.data.Dataset, what: str,
                   batch_examples: Optional[Callable[[int], tf.data.Dataset]] = None) -> Iterator[Batch]:
    """Iterates a tf.data pipeline of batches; a failed image decode raises ValueError naming the image.

    ``batch_examples(k)`` returns the source examples of batch ``k``: they are decoded one by one
    to find the culprit (the pipeline is deterministic, so batch ``k`` is where the error came from).
    """
    iterator = ds.as_numpy_iterator()
    k = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            bad = _undecodable(batch_examples(k)) if batch_examples else []
            if bad:
                raise ValueError(f"{what}, batch {k}: cannot decode image {'; '.join(bad)}.") from None
            raise ValueError(f"{what}, batch {k}: {transforms.short_tf_message(e)}") from None
        k += 1
        yield batch
