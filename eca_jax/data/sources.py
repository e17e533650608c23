"""Where a process's examples come from: its slice of a tfds split, streamed from disk or held in memory.

- ``TfdsSource`` streams encoded images from the tfds files. ``examples(shuffle_seed, skip)`` is
  one pass as a ``tf.data.Dataset`` of ``(position, example)``, ``example = {"image": tf.string,
  "label": int64, "name": tf.string}`` (``name``: the file name when the dataset has one, else
  tfds' example id; used in error messages). With a seed: tfds' seeded file shuffle, then a
  shuffle buffer of encoded records; ``skip`` drops the first records of that pass before any
  decoding (what resuming costs: reading, not decoding, the skipped records).
- ``MemorySource`` holds the slice decoded, as uint8 ``(N, H, W, 3)``, for datasets whose images
  all have one shape (digits, CIFAR, MNIST...). Passes are seeded permutations (a full uniform
  shuffle, computed by TF's stateless shuffle from ``(seed, epoch)``), so resuming is instant.

Both are deterministic functions of their seeds: the same seed gives the same order, always.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import tensorflow_datasets as tfds

from eca_jax.data._tf import tf

Split = Union[str, "tfds.core.ReadInstruction"]


def _name_key(builder: tfds.core.DatasetBuilder) -> Optional[str]:
    features = builder.info.features
    return "file_name" if "file_name" in features and isinstance(features["file_name"], tfds.features.Text) else None


def read_options(num_threads: Optional[int] = None) -> tf.data.Options:
    """tf.data options: deterministic order; ``num_threads`` caps the pipeline's thread pool."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if num_threads:
        options.threading.private_threadpool_size = int(num_threads)
    return options


def fixed_image_shape(builder: tfds.core.DatasetBuilder, image_key: str) -> Optional[tuple[int, int, int]]:
    """The stored (H, W, C) when every image of the dataset has that shape, else None."""
    shape = tuple(builder.info.features[image_key].shape)
    return shape if len(shape) == 3 and all(isinstance(d, int) for d in shape) else None


def fits_in_memory(builder: tfds.core.DatasetBuilder, split: Split, image_key: str, limit_bytes: int) -> bool:
    """Whether ``MemorySource`` can hold ``split``: fixed-shape images, decoded size under ``limit_bytes``."""
    shape = fixed_image_shape(builder, image_key)
    if shape is None:
        return False
    return builder.info.splits[split].num_examples * shape[0] * shape[1] * 3 <= limit_bytes


class TfdsSource:
    """This process's slice ``split`` of a prepared tfds dataset, read from its files on every pass."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: Split, *, image_key: str, label_key: str,
                 shuffle_buffer_size: int = 10_000, num_threads: Optional[int] = None):
        self.builder, self.split = builder, split
        self.image_key, self.label_key = image_key, label_key
        self.name_key = _name_key(builder)
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.num_threads = num_threads
        self.num_examples = builder.info.splits[split].num_examples

    def examples(self, shuffle_seed: Optional[int] = None, skip: int = 0) -> tf.data.Dataset:
        """One pass: ``(position, example)`` pairs, shuffled when ``shuffle_seed`` is given, first ``skip`` left out."""
        shuffle = shuffle_seed is not None
        # Without shuffling, read the files one after another so that positions follow the split's order.
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, add_tfds_id=self.name_key is None,
                                      options=read_options(self.num_threads), try_autocache=False,
                                      enable_ordering_guard=False,  # shuffling an ordered dataset is intended
                                      **({} if shuffle else {"interleave_cycle_length": 1}))
        ds = self.builder.as_dataset(split=self.split, shuffle_files=shuffle, read_config=read_config,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        name_key = self.name_key or "tfds_id"
        ds = ds.map(lambda ex: {"image": ex[self.image_key], "label": ex[self.label_key], "name": ex[name_key]})
        if shuffle:
            ds = ds.shuffle(self.shuffle_buffer_size, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds.enumerate().skip(skip)


class MemorySource:
    """This process's slice of a fixed-shape tfds split, decoded once into memory: uint8 (N, H, W, 3)."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: Split, *, image_key: str, label_key: str,
                 num_threads: Optional[int] = None):
        shape = fixed_image_shape(builder, image_key)
        if shape is None:
            raise ValueError(f"MemorySource needs images of one fixed shape; {builder.name} has "
                             f"{builder.info.features[image_key].shape}")
        self.num_threads = num_threads
        self.num_examples = builder.info.splits[split].num_examples
        read_config = tfds.ReadConfig(options=read_options(num_threads), try_autocache=False,
                                      interleave_cycle_length=1)  # in split order
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
        images, labels = [], []
        try:
            for batch in ds.batch(1024).as_numpy_iterator():
                images.append(batch[image_key])
                labels.append(batch[label_key])
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            raise ValueError(f"{builder.name} split {split}: cannot decode an image while loading it into memory: "
                             f"{e.message.strip().splitlines()[0]}") from None
        array = np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif array.shape[-1] == 4:
            array = array[..., :3]
        if len(array) != self.num_examples:
            raise RuntimeError(f"{builder.name} split {split}: read {len(array)} examples, expected {self.num_examples}")
        self.images = tf.constant(array)
        self.labels = tf.constant(np.concatenate(labels) if labels else np.zeros((0,), np.int64), tf.int64)

    def gather(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """``{"image": uint8 (..., H, W, 3), "label": int64 (...)}`` for example indices of any shape."""
        return {"image": tf.gather(self.images, index), "label": tf.gather(self.labels, index)}

    def index_stream(self, shuffle_seed: int, start_epoch: int, skip: int, per_epoch: int) -> tf.data.Dataset:
        """Infinite ``(epoch, position, index)`` stream: ``per_epoch`` examples of a fresh permutation per epoch.

        Epoch ``e`` is ``stateless_shuffle(range(N), seed=(shuffle_seed, e))[:per_epoch]``; the
        stream starts at epoch ``start_epoch`` with its first ``skip`` examples left out.
        """
        n = self.num_examples
        if not 0 < per_epoch <= n:
            raise ValueError(f"per_epoch must be in 1..{n}, got {per_epoch}")
        seed = tf.constant(shuffle_seed, tf.int64)

        def epoch_indices(epoch):
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, epoch]))
            first = tf.where(tf.equal(epoch, start_epoch), tf.constant(skip, tf.int64), 0)
            positions = tf.range(first, per_epoch, dtype=tf.int64)
            return tf.data.Dataset.from_tensor_slices(
                (tf.fill(tf.shape(positions), epoch), positions, tf.gather(order, positions)))

        ds = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch_indices)
        return ds.with_options(read_options(self.num_threads))
