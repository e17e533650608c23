"""Train and eval input pipelines: per-process shards of a tfds split -> global, sharded ``jax.Array`` batches.

Multi-host layout: process ``p`` of ``P`` reads only ``tfds.even_splits(split, P)[p]`` and builds
``global_batch_size / P`` examples per step; ``jax.make_array_from_process_local_data`` turns the
local batches into global arrays sharded with ``sharding`` (a ``NamedSharding`` over the batch
axis, e.g. ``NamedSharding(mesh, P(("data", "fsdp")))``). Batches are placed on the devices
``prefetch`` steps ahead (device transfers are asynchronous), on top of tf.data's own prefetch.

Train stream (infinite, ``TrainIterator``): epoch ``e`` is a pass over the local shard shuffled
with a seed derived from ``(seed, process, e)``; every process yields ``steps_per_epoch =
min_p(n_p) // local_batch`` batches per epoch (the same number on all processes; the few examples
left over change from epoch to epoch). Augmentation randomness is keyed by ``(seed, process, e,
position in epoch)``. So the stream is a pure function of the seed, and its position is
``(epoch, step_in_epoch)``: ``get_state()`` returns it as a JSON-serialisable dict, and
``make_train_iterator(..., state=that_dict)`` continues with exactly the batches an uninterrupted
run would have seen.

Eval (finite, ``EvalIterator``): one pass over the eval split in order, local batches padded to
the same number of steps on every process, with ``mask`` (1.0 for real examples, 0.0 for padding)
and ``index`` (the example's position in the split, -1 for padding): every example has mask 1
exactly once across all processes; ``num_examples`` is the split size.

Batches: ``{"image": float32 (global_batch, H, W, 3) normalized, "label": int32 (global_batch,)}``
(+ ``"mask"`` float32 and ``"index"`` int32 in eval). With ``image_format="uint8"`` the image is
uint8 whole grey levels instead, 4x fewer bytes through the host, for the consumer to normalize
inside its jitted step (``eca_jax.data.on_device.normalize_images``).

This module holds the iterators and their constructors; reading a process's shard and moving
batches out of tf.data onto the devices is :mod:`eca_jax.data.reading`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from eca_jax.data import datasets, reading, sources, transforms
from eca_jax.data._tf import tf
from eca_jax.data.reading import AUTOTUNE, Batch, Reader

STATE_FORMAT = "eca_jax.data.train_stream/1"


# ------------------------------------------------------------------ seeds of the train stream

def _derive_seed(*ints: int) -> int:
    """A 31-bit seed from several integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]).generate_state(1)[0] & 0x7FFFFFFF)


def _augment_key(augment_seed: int, epoch: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """The stateless seed (2,) of one example's augmentation: a function of (seed, epoch, position) only."""
    base = tf.stack([tf.constant(augment_seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


# ------------------------------------------------------------------ train

class TrainIterator:
    """Infinite iterator of global train batches; ``get_state()`` is its JSON-serialisable position."""

    def __init__(self, reader: Reader, *, sharding, global_batch_size: int, local_batch_size: int, seed: int,
                 augment: str, transform: Callable, num_parallel_calls, prefetch: int, state: Optional[dict],
                 per_example: bool = False):
        self._reader, self._transform, self._augment = reader, transform, augment
        self._per_example = per_example
        self._global_batch, self._local_batch = global_batch_size, local_batch_size
        self._seed, self._num_parallel_calls = int(seed), num_parallel_calls
        self._shuffle_seed = _derive_seed(self._seed, reader.process_index, 0)
        self._augment_seed = _derive_seed(self._seed, reader.process_index, 1)
        self.steps_per_epoch = min(reader.shard_sizes) // local_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{reader.describe()}: the smallest process shard has {min(reader.shard_sizes)} examples, fewer "
                f"than one local batch ({local_batch_size}); use a smaller global_batch_size.")
        self._epoch, self._step = self._resume_position(state)
        self._stream = reading.prefetched(self._local_stream(self._epoch, self._step), sharding, prefetch)

    # -- position
    def _identity(self) -> dict:
        return {"dataset": self._reader.info.name, "split": self._reader.split, "seed": self._seed}

    def _resume_position(self, state: Optional[dict]) -> tuple[int, int]:
        if state is None:
            return 0, 0
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"Not a train-stream state of eca_jax.data (format {STATE_FORMAT!r}): {state!r}")
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if mismatched:
            raise ValueError(f"Cannot resume the train stream: the saved state belongs to another stream "
                             f"(saved vs now: {mismatched}).")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if (state["global_batch_size"], state["process_count"]) != (self._global_batch, self._reader.process_count):
            step = step * int(state["global_batch_size"]) // self._global_batch
            logging.warning(
                "eca_jax.data: resuming with global_batch_size %d and %d processes (saved: %s and %s); "
                "continuing from epoch %d, step %d, but the batches will differ from an uninterrupted run.",
                self._global_batch, self._reader.process_count, state["global_batch_size"],
                state["process_count"], epoch, step)
        if step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        return epoch, step

    def _after(self, epoch: int, step: int) -> tuple[int, int]:
        """The position after consuming the batch at (epoch, step)."""
        return (epoch + 1, 0) if step + 1 == self.steps_per_epoch else (epoch, step + 1)

    # -- tf.data pipelines
    def _memory_dataset(self, epoch: int, step: int) -> tf.data.Dataset:
        """Infinite stream of local batches from the in-memory shard, starting at (epoch, step)."""
        source, b, transform, augment_seed = self._reader.source, self._local_batch, self._transform, self._augment_seed
        ds = source.index_stream(self._shuffle_seed, epoch, step * b, self.steps_per_epoch * b)
        if self._augment == "none" and not self._per_example:  # no randomness: resize whole batches
            def prepare_batch(epochs, positions, index):
                example = source.gather(index)
                return {"image": transform(example["image"], None, name=""),
                        "label": tf.cast(example["label"], tf.int32)}
            ds = ds.batch(b, drop_remainder=True).map(prepare_batch, num_parallel_calls=self._num_parallel_calls,
                                                      deterministic=True)
        else:
            def prepare(e, position, index):
                example = source.gather(index)
                image = transform(example["image"], _augment_key(augment_seed, e, position), name="")
                return {"image": image, "label": tf.cast(example["label"], tf.int32)}
            ds = ds.map(prepare, num_parallel_calls=self._num_parallel_calls, deterministic=True)
            ds = ds.batch(b, drop_remainder=True)
        return ds.prefetch(AUTOTUNE)

    def _epoch_shuffle_seed(self, epoch: int) -> int:
        return _derive_seed(self._shuffle_seed, epoch)

    def _tfds_epoch_dataset(self, epoch: int, skip_steps: int) -> tf.data.Dataset:
        """Local batches of epoch ``epoch`` streamed from the tfds files, its first ``skip_steps`` left out."""
        transform, augment_seed = self._transform, self._augment_seed

        def prepare(position, example):
            image = transform(example["image"], _augment_key(augment_seed, epoch, position), name=example["name"])
            return {"image": image, "label": tf.cast(example["label"], tf.int32)}

        ds = self._reader.source.examples(self._epoch_shuffle_seed(epoch), skip=skip_steps * self._local_batch)
        ds = ds.take((self.steps_per_epoch - skip_steps) * self._local_batch)  # before decoding: nothing wasted
        ds = ds.map(prepare, num_parallel_calls=self._num_parallel_calls, deterministic=True)
        return ds.batch(self._local_batch, drop_remainder=True).prefetch(AUTOTUNE)

    def _tfds_batch_examples(self, epoch: int, skip_steps: int) -> Callable[[int], tf.data.Dataset]:
        """Source examples of the k-th batch of ``_tfds_epoch_dataset(epoch, skip_steps)`` (to name bad images)."""
        b = self._local_batch
        return lambda k: self._reader.source.examples(self._epoch_shuffle_seed(epoch), skip=(skip_steps + k) * b).take(b)

    def _local_stream(self, epoch: int, step: int) -> Iterator[tuple[tuple[int, int], Batch]]:
        """``(position after the batch, local batch)`` forever."""
        if self._reader.in_memory:  # one continuous tf.data pipeline over all epochs
            for batch in reading.numpy_batches(self._memory_dataset(epoch, step), self._reader.describe()):
                epoch, step = self._after(epoch, step)
                yield (epoch, step), batch
            return  # not reached: the in-memory stream is infinite
        while True:  # one tfds pipeline per epoch (tfds' file shuffle takes a Python seed)
            what = f"{self._reader.describe()}, epoch {epoch}"
            examples = self._tfds_batch_examples(epoch, step)
            for batch in reading.numpy_batches(self._tfds_epoch_dataset(epoch, step), what, examples):
                epoch, step = self._after(epoch, step)
                yield (epoch, step), batch

    # -- iterator protocol
    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        (self._epoch, self._step), batch = next(self._stream)
        return batch

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def get_state(self) -> dict:
        """Position of the next batch: JSON-serialisable; pass as ``state=`` to resume exactly here."""
        return {"format": STATE_FORMAT, **self._identity(), "global_batch_size": self._global_batch,
                "process_count": self._reader.process_count, "epoch": self._epoch, "step_in_epoch": self._step,
                "steps_per_epoch": self.steps_per_epoch,
                "examples_seen": (self._epoch * self.steps_per_epoch + self._step) * self._global_batch}


# ------------------------------------------------------------------ eval

class EvalIterator:
    """One ordered pass over the eval split per ``iter()``, padded and masked; ``num_examples`` is exact."""

    def __init__(self, reader: Reader, *, sharding, global_batch_size: int, local_batch_size: int,
                 transform: Callable, image_size: int, num_parallel_calls, prefetch: int,
                 image_dtype: tf.DType = tf.float32):
        self._reader, self._sharding, self._transform = reader, sharding, transform
        self._image_dtype = image_dtype
        self._local_batch, self._image_size = local_batch_size, image_size
        self._num_parallel_calls, self._prefetch = num_parallel_calls, prefetch
        self.global_batch_size = global_batch_size
        self.settings: Optional[transforms.EvalSettings] = None  # set by make_eval_iterator
        self.num_examples = sum(reader.shard_sizes)
        self.num_steps = math.ceil(max(reader.shard_sizes) / local_batch_size) if self.num_examples else 0
        self._padding = self.num_steps * local_batch_size - reader.source.num_examples

    def __len__(self) -> int:
        return self.num_steps

    def _memory_dataset(self) -> tf.data.Dataset:
        """Vectorized: batches of indices (-1 = padding) -> gathered images, one resize per batch."""
        source, offset, transform = self._reader.source, self._reader.shard_offset, self._transform
        index = np.concatenate([np.arange(source.num_examples), np.full(self._padding, -1)]).astype(np.int64)

        # Plain TF ops, no Python control flow: AutoGraph has nothing to convert here, and its closure
        # check warns on this function ("could not transform ... closure mismatch") on every run.
        @tf.autograph.experimental.do_not_convert
        def prepare_batch(index):
            real = index >= 0
            example = source.gather(tf.maximum(index, 0))
            return {"image": transform(example["image"], name=""),
                    "label": tf.where(real, tf.cast(example["label"], tf.int32), 0),
                    "mask": tf.cast(real, tf.float32),
                    "index": tf.where(real, tf.cast(index + offset, tf.int32), -1)}

        ds = tf.data.Dataset.from_tensor_slices(index).batch(self._local_batch, drop_remainder=True)
        ds = ds.map(prepare_batch, num_parallel_calls=self._num_parallel_calls, deterministic=True)
        return ds.with_options(sources.read_options(source.num_threads)).prefetch(AUTOTUNE)

    def _tfds_dataset(self) -> tf.data.Dataset:
        offset, transform, s = self._reader.shard_offset, self._transform, self._image_size

        def prepare(position, example):
            return {"image": transform(example["image"], name=example["name"]),
                    "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(1.0, tf.float32),
                    "index": tf.cast(position + offset, tf.int32)}

        ds = self._reader.source.examples(shuffle_seed=None)
        ds = ds.map(prepare, num_parallel_calls=self._num_parallel_calls, deterministic=True)
        padding = tf.data.Dataset.from_tensors({
            "image": tf.zeros((s, s, 3), self._image_dtype), "label": tf.constant(0, tf.int32),
            "mask": tf.constant(0.0, tf.float32), "index": tf.constant(-1, tf.int32)})
        ds = ds.concatenate(padding.repeat(self._padding))
        return ds.batch(self._local_batch, drop_remainder=True).prefetch(AUTOTUNE)

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        what = f"{self._reader.describe()}, eval"
        if self._reader.in_memory:
            local = reading.numpy_batches(self._memory_dataset(), what)
        else:
            b = self._local_batch
            examples = lambda k: self._reader.source.examples(None, skip=k * b).take(b)  # noqa: E731
            local = reading.numpy_batches(self._tfds_dataset(), what, examples)
        for _, batch in reading.prefetched(((None, x) for x in local), self._sharding, self._prefetch):
            yield batch


# ------------------------------------------------------------------ public constructors

def _check_common(image_size: int, interpolation: Optional[str], num_parallel_calls: Optional[int], prefetch: int):
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if interpolation is not None:
        transforms.check_interpolation(interpolation)
    return AUTOTUNE if num_parallel_calls is None else int(num_parallel_calls)


def make_train_iterator(name: str, *, global_batch_size: int, image_size: int, seed: int,
                        sharding: jax.sharding.Sharding, data_dir: Optional[str] = None,
                        manual_dir: Optional[str] = None, augment: Optional[str] = None,
                        state: Optional[dict] = None, split: Optional[str] = None,
                        interpolation: str = "bilinear", cache: Any = "auto", shuffle_buffer_size: int = 10_000,
                        num_parallel_calls: Optional[int] = None, num_threads: Optional[int] = None,
                        prefetch: int = 2, mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None, image_format: str = "float32",
                        randaugment: Any = None, random_erasing: float = 0.0) -> TrainIterator:
    """Infinite, seeded, resumable stream of global train batches (see the module docstring).

    Args:
      augment: ``"inception_crop_flip"`` or ``"none"``; None takes the dataset's default
        (``"none"`` for digits, else ``"inception_crop_flip"``).
      state: a dict from ``TrainIterator.get_state()`` to resume from.
      split: defaults to the dataset's train split (tfds slicing such as ``"train[:90%]"`` works).
      cache: True holds this process's shard in memory, decoded (fixed-shape images only); False
        streams it from the tfds files; ``"auto"``: in memory when fixed-shape and under 1 GiB.
      shuffle_buffer_size: encoded records in the shuffle buffer when streaming.
      num_parallel_calls / num_threads: parallel image transforms / size of tf.data's thread pool
        (None: tf.data's autotuning and default pool).
      prefetch: batches placed on the devices ahead of the consumer.
      mean / std: the normalization ``(x / 255 - mean) / std`` (3 floats each; None: ImageNet's).
        Give the model's (``ModelCfg.mean``/``std``) so that training and eval normalize alike.
      image_format: ``"float32"`` (normalized) or ``"uint8"`` (whole grey levels, not normalized:
        normalize inside the jitted step with ``eca_jax.data.on_device.normalize_images``).
      randaugment: timm's RandAugment string (e.g. ``"rand-m9-mstd0.5-inc1"``, see
        ``parse_randaugment``) or a ``RandAugmentSpec``; None: off.
      random_erasing: probability of timm's random erasing (mode "pixel"); 0: off. Both keep the
        stream resumable; with ``augment="none"`` they follow the plain resize (no flip), per example.
    Returns a ``TrainIterator`` yielding ``{"image": float32 (B, S, S, 3), "label": int32 (B,)}``.
    """
    transforms.check_image_format(image_format)
    num_parallel_calls = _check_common(image_size, interpolation, num_parallel_calls, prefetch)
    mean, std = transforms.resolve_normalization(mean, std)
    if augment is not None and augment not in transforms.AUGMENTS:
        raise ValueError(f"Unknown augment {augment!r}; choose one of {transforms.AUGMENTS}.")
    randaugment = transforms.check_extras(randaugment, random_erasing)  # parsed, before any reading
    local_batch = reading.local_batch_size(sharding, global_batch_size)
    builder = datasets.prepare(name, data_dir, manual_dir)
    info = datasets.dataset_info_from_builder(name, builder)
    augment = info.augment if augment is None else augment
    reader = Reader(builder, info, datasets.require_split(info, split, "train"), cache=cache,
                    num_threads=num_threads, shuffle_buffer_size=shuffle_buffer_size)

    def transform(image, key, name):
        return transforms.train_transform(image, key, image_size=image_size, augment=augment,
                                          interpolation=interpolation, mean=mean, std=std, name=name,
                                          image_format=image_format, randaugment=randaugment,
                                          random_erasing=random_erasing)

    return TrainIterator(reader, sharding=sharding, global_batch_size=global_batch_size, local_batch_size=local_batch,
                         seed=seed, augment=augment, transform=transform, num_parallel_calls=num_parallel_calls,
                         prefetch=prefetch, state=state,
                         per_example=transforms.has_extras(randaugment, random_erasing))


def make_eval_iterator(name: str, *, global_batch_size: int, image_size: int, sharding: jax.sharding.Sharding,
                       resize_size: Optional[int] = None, crop_pct: Optional[float] = None,
                       data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                       split: Optional[str] = None, interpolation: Optional[str] = None, cache: Any = "auto",
                       num_parallel_calls: Optional[int] = None, num_threads: Optional[int] = None,
                       prefetch: int = 2, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None, model_cfg: Any = None,
                       image_format: str = "float32") -> EvalIterator:
    """One exact pass over the eval split per iteration (see the module docstring).

    Eval preprocessing (``transforms.resolve_eval_settings``; the first that is given wins):
    the crop is ``resize_size`` or ``crop_pct``, else the dataset's own (digits: 1.0), else the
    model's (``model_cfg``, e.g. ``eca_jax.models.get_model_cfg(name)``: ``test_crop_pct`` at its
    ``test_input_size``, else ``crop_pct``), else 0.875; ``interpolation``/``mean``/``std`` are the
    given ones, else the model's, else bilinear and ImageNet's. ``resize_size`` is then
    ``floor(image_size / crop_pct)``. The iterator's ``settings`` attribute holds the result.
    Batches: ``{"image", "label", "mask", "index"}``; ``image_format`` as in ``make_train_iterator``
    (``"uint8"`` normalized with the iterator's ``settings.mean``/``std`` gives the float32 images exactly).
    """
    transforms.check_image_format(image_format)
    num_parallel_calls = _check_common(image_size, interpolation, num_parallel_calls, prefetch)
    local_batch = reading.local_batch_size(sharding, global_batch_size)
    builder = datasets.prepare(name, data_dir, manual_dir)
    info = datasets.dataset_info_from_builder(name, builder)
    settings = transforms.resolve_eval_settings(
        image_size, resize_size=resize_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std,
        dataset_crop_pct=info.crop_pct, model_cfg=model_cfg)
    reader = Reader(builder, info, datasets.require_split(info, split, "eval"), cache=cache,
                    num_threads=num_threads, shuffle_buffer_size=0)

    def transform(image, name):
        return transforms.eval_transform(image, image_size=settings.image_size, resize_size=settings.resize_size,
                                         interpolation=settings.interpolation, mean=settings.mean,
                                         std=settings.std, name=name, image_format=image_format)

    iterator = EvalIterator(reader, sharding=sharding, global_batch_size=global_batch_size,
                            local_batch_size=local_batch, transform=transform, image_size=image_size,
                            num_parallel_calls=num_parallel_calls, prefetch=prefetch,
                            image_dtype=tf.as_dtype(image_format))
    iterator.settings = settings
    return iterator
