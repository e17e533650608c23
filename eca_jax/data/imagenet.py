"""ImageNet (ILSVRC2012) through tfds' own ``imagenet2012`` builder: manual_dir checks and class names.

tfds (4.9.x) prepares ``imagenet2012`` from two archives that the user downloads by hand from
https://image-net.org/download-images (registration needed) and puts into ``manual_dir``
(default ``<data_dir>/downloads/manual``):

- ``ILSVRC2012_img_train.tar`` (138 GiB): 1,000 per-class tars ``n01440764.tar`` ... of JPEGs;
- ``ILSVRC2012_img_val.tar`` (6.3 GiB): 50,000 JPEGs ``ILSVRC2012_val_00000001.JPEG`` ...
  (tfds ships the validation labels itself, so no devkit is needed);
- optional ``ILSVRC2012_img_test.tar`` (unlabelled test split).

tfds fixes the 22 CMYK JPEGs and the one PNG of the training archive while preparing, so every
prepared image decodes.
"""

from __future__ import annotations

import os
import tarfile
NAME = "imagenet2012"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
REQUIRED_FILES = {
    TRAIN_TAR: "training images: 1,000 per-class tars (n01440764.tar, ...) of JPEGs, 138 GiB",
    VAL_TAR: "validation images: 50,000 JPEGs (ILSVRC2012_val_00000001.JPEG, ...), 6.3 GiB",
}
DOWNLOAD_PAGE = "https://image-net.org/download-images"


def default_manual_dir(data_dir: str) -> str:
    """tfds' default manual_dir: ``<data_dir>/downloads/manual``."""
    return os.path.join(os.fspath(data_dir), "downloads", "manual")


def check_manual_dir(manual_dir: str, data_dir: str = "DATA_DIR") -> None:
    """Raises FileNotFoundError naming every missing or unreadable ILSVRC2012 archive and where it goes."""
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    problems = []
    for fname, what in REQUIRED_FILES.items():
        path = os.path.join(manual_dir, fname)
        if not os.path.isfile(path):
            problems.append(f"  missing {path}\n      ({what})")
        elif not tarfile.is_tarfile(path):
            problems.append(f"  not a tar archive: {path}\n      ({what})")
    if problems:
        where = "does not exist" if not os.path.isdir(manual_dir) else "is incomplete"
        raise FileNotFoundError(
            f"imagenet2012 is not prepared and its manual_dir {manual_dir} {where}:\n" + "\n".join(problems) +
            f"\nDownload the archives from {DOWNLOAD_PAGE} (registration needed), put them into {manual_dir} "
            "under exactly these names (do not unpack them), then run\n"
            f"  python -m eca_jax.data prepare imagenet2012 --manual_dir {manual_dir} --data_dir {data_dir}")


def imagenet_synsets() -> list[str]:
    """The 1,000 WordNet ids in label order (``n01440764`` is label 0), from tfds' imagenet2012 metadata."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    with open(os.fspath(imagenet_common.label_names_file())) as f:
        synsets = f.read().split()
    assert len(synsets) == 1000, len(synsets)
    return synsets


def imagenet_class_names() -> list[str]:
    """The 1,000 human-readable ImageNet class names in label order (label 0: ``"tench, Tinca tinca"``).

    tfds' imagenet2012 features carry only the WordNet ids; tfds ships the matching readable names
    (the common index -> name list, in the same sorted-synset order) with its ``siscore`` dataset,
    which is read here (offline).
    """
    from tensorflow_datasets.datasets.siscore import labels as siscore_labels

    names = list(siscore_labels.IMAGENET_LABELS_LIST)
    if len(names) != 1000:
        raise RuntimeError(f"tfds' ImageNet class-name list has {len(names)} entries, expected 1,000.")
    return names
