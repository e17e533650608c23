"""Dataset names -> prepared tfds builders, and what the trainer needs to know about them.

Names: ``"digits"`` (embedded, written on first use, see ``digits.py``), ``"imagenet2012"``
(tfds' builder, prepared from ``manual_dir``, see ``imagenet.py``) and any tfds
image-classification dataset (an ``Image`` feature and a ``ClassLabel`` feature), optionally with
a config/version (``"cifar10:3.0.2"``). Nothing here downloads: a tfds dataset that is not
prepared yet raises an error that says how to prepare it.

``data_dir`` defaults to ``$ECA_JAX_DATA_DIR`` or ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from typing import Optional

import tensorflow_datasets as tfds

from eca_jax.data import digits, imagenet
from eca_jax.data._lock import prepare_lock
from eca_jax.data._tf import tf  # noqa: F401  (TensorFlow off the accelerators)

EMBEDDED = ("digits",)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a training job needs to know about a dataset.

    ``augment``: the dataset's default train augmentation (digits: ``"none"``, since a flip or
    crop can change a digit's class). ``crop_pct``: the dataset's own eval crop fraction, which
    wins over the model's (digits: 1.0, the whole 8x8 image); None for datasets without one
    (ImageNet and other tfds datasets), whose eval crop comes from the model's config
    (see ``transforms.resolve_eval_settings``).
    ``image_shape``: the stored (H, W, C) when every image has the same shape, else None.
    ``train_split``/``eval_split``: None (and 0 examples) when the dataset has no such split.
    ``dataset_dir``: where the prepared files are (``<data_dir>/<name>/<version>``).
    """

    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_split: Optional[str]
    eval_split: Optional[str]
    class_names: tuple[str, ...]
    image_key: str = "image"
    label_key: str = "label"
    image_shape: Optional[tuple[int, int, int]] = None
    augment: str = "inception_crop_flip"
    crop_pct: Optional[float] = None
    dataset_dir: str = ""


def default_data_dir() -> str:
    """``$ECA_JAX_DATA_DIR`` or ``~/tensorflow_datasets``, absolute (a relative value is taken from
    the current directory once, so a later ``chdir`` does not move it); ``gs://``-style URLs as given."""
    path = os.path.expanduser(os.environ.get("ECA_JAX_DATA_DIR") or "~/tensorflow_datasets")
    return path if "://" in path else os.path.abspath(path)


def _base_name(name: str) -> str:
    return name.split(":")[0].split("/")[0]


@functools.lru_cache(maxsize=1)
def _registered_names() -> tuple[str, ...]:
    return tuple(tfds.list_builders(with_community_datasets=False))


def check_name(name: str, data_dir: Optional[str] = None) -> None:
    """Raises ValueError for a name that is neither embedded, registered in tfds, nor present in ``data_dir``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    base = _base_name(name)
    if base in EMBEDDED or base in _registered_names():
        return
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    if os.path.isdir(os.path.join(data_dir, base)):  # a dataset prepared from files (e.g. a tfds adhoc builder)
        return
    candidates = list(EMBEDDED) + list(_registered_names())
    close = difflib.get_close_matches(base, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown dataset {name!r}.{hint} Use 'digits' (embedded), 'imagenet2012' or any tfds "
        f"image-classification dataset (tfds.list_builders()) prepared in {data_dir}.")


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
            allow_download: bool = False) -> tfds.core.DatasetBuilder:
    """Prepares ``name`` in ``data_dir`` if needed and returns its builder.

    digits: written from scikit-learn. imagenet2012: prepared by tfds' builder from
    ``manual_dir`` (checked first; error lists missing archives). Other tfds datasets are only
    downloaded when ``allow_download`` (the ``prepare`` command line); otherwise a missing one
    raises FileNotFoundError with the command that prepares it.
    """
    check_name(name, data_dir)
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    base = _base_name(name)
    if base == digits.NAME:
        return tfds.builder_from_directory(digits.prepare_digits(data_dir))
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if base == imagenet.NAME:
        manual_dir = os.path.expanduser(manual_dir or imagenet.default_manual_dir(data_dir))
        imagenet.check_manual_dir(manual_dir, data_dir)
        with prepare_lock(data_dir, base):
            builder = tfds.builder(name, data_dir=data_dir)  # another process may have prepared it meanwhile
            if not builder.is_prepared():
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return builder
    if allow_download:
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=download_config)
        return builder
    raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in {data_dir} (eca_jax.data never downloads while training). "
        f"Prepare it once, on a machine with internet access:\n"
        f"  python -m eca_jax.data prepare {name} --data_dir {data_dir}\n"
        f"(or `tfds build {name} --data_dir {data_dir}`), then copy {data_dir} if needed.")


def _feature_keys(name: str, builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    """The (image, label) feature keys; ValueError unless an Image and a ClassLabel feature exist."""
    features = builder.info.features
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        image_key, label_key = "image", "label"
    is_dict = isinstance(features, tfds.features.FeaturesDict)
    if not (is_dict and isinstance(features[image_key] if image_key in features else None, tfds.features.Image)
            and isinstance(features[label_key] if label_key in features else None, tfds.features.ClassLabel)):
        raise ValueError(
            f"Dataset {name!r} is not an image-classification dataset: it needs an Image feature "
            f"{image_key!r} and a ClassLabel feature {label_key!r}; its features are {features}.")
    image = features[image_key]
    if image.np_dtype != tf.uint8.as_numpy_dtype:
        raise ValueError(f"Dataset {name!r}: images must be uint8, its {image_key!r} feature is {image.np_dtype}.")
    channels = image.shape[-1]
    if channels not in (None, 1, 3, 4):
        raise ValueError(f"Dataset {name!r}: images must have 1, 3 or 4 channels (read as RGB), got shape {image.shape}.")
    return image_key, label_key


def _pick_split(name: str, builder: tfds.core.DatasetBuilder, wanted: Optional[str], candidates: tuple[str, ...],
                role: str) -> Optional[str]:
    """``wanted`` (checked), else the first of ``candidates`` that the dataset has, else None."""
    splits = builder.info.splits
    if wanted is not None:
        try:
            splits[wanted]
        except (KeyError, ValueError, AssertionError) as e:
            raise ValueError(f"Dataset {name!r} has no {role} split {wanted!r} (splits: {list(splits)}): {e}") from None
        return wanted
    return next((split for split in candidates if split in splits), None)


def require_split(info: DatasetInfo, split: Optional[str], role: str) -> str:
    """``split`` if given, else the dataset's train/eval split; ValueError when it has none."""
    split = split or (info.train_split if role == "train" else info.eval_split)
    if split is None:
        raise ValueError(f"Dataset {info.name!r} has no default {role} split ('train' for training, 'validation' "
                         f"or 'test' for eval); pass split=... explicitly (tfds slicing such as 'train[90%:]' works).")
    return split


def dataset_info_from_builder(name: str, builder: tfds.core.DatasetBuilder, train_split: Optional[str] = None,
                              eval_split: Optional[str] = None) -> DatasetInfo:
    """``DatasetInfo`` of a prepared builder."""
    image_key, label_key = _feature_keys(name, builder)
    train_split = _pick_split(name, builder, train_split, ("train",), "train")
    eval_split = _pick_split(name, builder, eval_split, ("validation", "test"), "eval")
    base = _base_name(name)
    label = builder.info.features[label_key]
    class_names = imagenet.imagenet_class_names() if base == imagenet.NAME else list(label.names)
    shape = tuple(builder.info.features[image_key].shape)
    image_shape = shape if all(isinstance(d, int) for d in shape) else None
    small = base in EMBEDDED
    return DatasetInfo(
        name=name,
        num_classes=label.num_classes,
        num_train=builder.info.splits[train_split].num_examples if train_split else 0,
        num_eval=builder.info.splits[eval_split].num_examples if eval_split else 0,
        train_split=train_split,
        eval_split=eval_split,
        class_names=tuple(class_names),
        image_key=image_key,
        label_key=label_key,
        image_shape=image_shape,
        augment="none" if small else "inception_crop_flip",
        crop_pct=1.0 if small else None,
        dataset_dir=os.fspath(builder.data_dir),
    )


def dataset_info(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None, *,
                 train_split: Optional[str] = None, eval_split: Optional[str] = None) -> DatasetInfo:
    """Prepares ``name`` if needed (digits, imagenet2012 from ``manual_dir``) and describes it.

    ``eval_split`` defaults to ``validation`` when the dataset has one, else ``test``.
    """
    builder = prepare(name, data_dir, manual_dir)
    return dataset_info_from_builder(name, builder, train_split, eval_split)
