"""The embedded dataset: scikit-learn's 1,797 handwritten digits, written once as a real tfds dataset.

``sklearn.datasets.load_digits`` ships inside scikit-learn (no download). Its 8x8 grey images
(integers 0..16) become uint8 RGB images (``round(v * 255 / 16)`` in all three channels), stored
with tfds' own writer (``tfds.dataset_builders.store_as_tfds_dataset``) under
``<data_dir>/digits/1.0.0``. From then on the dataset is read like any tfds dataset
(``tfds.builder_from_directory``).

Fixed split (seeded, so it is the same on every machine): a permutation of the 1,797 rows with
``numpy.random.default_rng(0)``; the first 1,437 are ``train``, the last 360 ``test``.
Features: ``image`` uint8 (8, 8, 3) PNG, ``label`` ClassLabel "0".."9", ``index`` int64 (row in
``load_digits``, for provenance).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Iterator

import numpy as np

from eca_jax.data._lock import prepare_lock

NAME = "digits"
VERSION = "1.0.0"
NUM_TRAIN = 1437
NUM_TEST = 360
SPLIT_SEED = 0


def digits_arrays() -> dict[str, dict[str, np.ndarray]]:
    """The split digits as arrays: ``{"train"|"test": {"image": uint8 (N, 8, 8, 3), "label": int64 (N,), "index": int64 (N,)}}``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    grey = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(grey))
    assert len(order) == NUM_TRAIN + NUM_TEST, len(order)
    parts = {"train": order[:NUM_TRAIN], "test": order[NUM_TRAIN:]}
    return {
        split: {"image": rgb[idx], "label": raw.target[idx].astype(np.int64), "index": idx.astype(np.int64)}
        for split, idx in parts.items()
    }


def dataset_dir(data_dir: str) -> str:
    """Where the prepared digits live: ``<data_dir>/digits/1.0.0``."""
    return os.path.join(os.fspath(data_dir), NAME, VERSION)


def is_prepared(data_dir: str) -> bool:
    return os.path.exists(os.path.join(dataset_dir(data_dir), "dataset_info.json"))


class _DropMessages(logging.Filter):
    """Drops log records whose unformatted message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_tfds_writer() -> Iterator[None]:
    """Silences what tfds prints while it writes a local, generated dataset.

    tfds announces "Downloading and preparing dataset Unknown size" on stdout (nothing is
    downloaded here), warns that the folder it is about to create has no dataset_info.json, and
    draws tqdm bars that become escape codes in a log file. One line of our own replaces them.
    Errors still propagate.
    """
    import tensorflow_datasets as tfds

    drop = _DropMessages(("Variant folder",))
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(drop)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl_logger.removeFilter(drop)


def prepare_digits(data_dir: str) -> str:
    """Writes the digits as a tfds dataset into ``data_dir`` unless already there; returns its directory.

    Safe to call from several processes of one machine (file lock). On a shared remote
    ``data_dir`` (e.g. ``gs://``) prepare once beforehand: ``python -m eca_jax.data prepare digits``.
    """
    import tensorflow_datasets as tfds

    from eca_jax.data._tf import tf  # noqa: F401  (TensorFlow off the accelerators)

    data_dir = os.path.expanduser(os.fspath(data_dir))
    if is_prepared(data_dir):
        return dataset_dir(data_dir)
    with prepare_lock(data_dir, NAME):
        if not is_prepared(data_dir):  # another process may have written it while we waited
            arrays = digits_arrays()
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3), dtype=np.uint8, encoding_format="png"),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                "index": np.int64,
            })

            def examples(split):
                a = arrays[split]
                for i in range(len(a["label"])):
                    yield i, {"image": a["image"][i], "label": int(a["label"][i]), "index": int(a["index"][i])}

            print(f"Writing scikit-learn's digits as a tfds dataset to {dataset_dir(data_dir)} "
                  "(once; nothing is downloaded)", file=sys.stderr, flush=True)
            with _quiet_tfds_writer():
                tfds.dataset_builders.store_as_tfds_dataset(
                    name=NAME,
                    version=VERSION,
                    features=features,
                    split_datasets={split: examples(split) for split in ("train", "test")},
                    data_dir=data_dir,
                    description=(
                        "scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set), grey 0..16 "
                        "scaled to uint8 0..255 and repeated to RGB; seeded split 1,437 train / 360 test."),
                    homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
                    disable_shuffling=True,
                )
    return dataset_dir(data_dir)

