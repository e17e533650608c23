"""What a study runs: its rows, one config and one workdir per row x seed, its length in steps.

Layout: ``<workdir>/<row>/seed<seed>/`` is one ordinary trainer workdir (checkpoints,
metrics.csv, curves.png) plus ``study_result.json`` once the run has finished. The row's name is
the paper's spelling (``SE-GC2``), so a run trained elsewhere (a pod) with
``python -m eca_jax.train ... --config.model_kwargs.attn=SE-GC2 --config.seed=0
--workdir <workdir>/SE-GC2/seed0`` is collected by ``--collect``.
"""
from __future__ import annotations

import os
from typing import Optional

import ml_collections

from eca_jax.models import MobileNetV2, ResNet
from eca_jax.models.registry import create_model
from eca_jax.nn.rows import KSWEEP, TABLE2, get_row
from eca_jax.train.config import to_steps

STUDIES: dict[str, tuple[str, ...]] = {
    "table2": tuple(row.name for row in TABLE2),
    "ksweep": tuple(row.name for row in KSWEEP) + ("SE",),   # Figure 4: every k, and SE as baseline
    "table3": ("vanilla", "SE", "CBAM", "GC", "ECA"),          # Table 3 on a ResNet: timm's CBAM and GC
    "mobilenetv2": ("vanilla", "SE-r8", "ECA"),                # Table 3 on MobileNetV2: SE r = 8 vs ECA
}
RESULT_NAME = "study_result.json"
# Train-split sizes of the datasets the configs name, so --collect needs no data on this machine.
TRAIN_EXAMPLES = {"digits": 1437, "imagenet2012": 1_281_167}


def study_rows(study: str) -> list[str]:
    """Row names of ``"table2"``, ``"ksweep"`` or ``"rows=SE,ECA-k5"`` (paper's spelling).

    ValueError for an unknown study; an unknown row lists the valid ones.
    """
    if study in STUDIES:
        return list(STUDIES[study])
    if study.startswith("rows="):
        names = [get_row(name.strip()).name for name in study[5:].split(",") if name.strip()]
        if names:
            return list(dict.fromkeys(names))
    raise ValueError(f"Unknown study {study!r}: use {', '.join(STUDIES)} or rows=NAME,NAME,...")


def study_kind(rows: list[str]) -> str:
    """"ksweep" if every row is a k-sweep row or SE (plotted against k), else "table2"."""
    sweep = {row.name for row in KSWEEP}
    return "ksweep" if any(r in sweep for r in rows) and set(rows) <= sweep | {"SE"} else "table2"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (duplicates dropped; ValueError if empty or not integers)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes integers separated by commas, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 0,1,2")
    return list(dict.fromkeys(seeds))


def run_dir(workdir: str, row: str, seed: int) -> str:
    """The trainer workdir of one row x seed: ``<workdir>/<row>/seed<seed>``."""
    return os.path.join(workdir, get_row(row).name, f"seed{seed}")


def run_config(base: ml_collections.ConfigDict, row: str, seed: int) -> ml_collections.ConfigDict:
    """``base`` with ``model_kwargs.attn = row`` and ``seed = seed`` (a locked copy)."""
    config = base.copy_and_resolve_references()
    with config.unlocked():
        config.model_kwargs.attn = get_row(row).name
        config.seed = int(seed)
    config.lock()
    return config


def check_attention_slot(config: ml_collections.ConfigDict) -> None:
    """ValueError unless ``config.model`` has an attention slot that takes every row (a ResNet or a
    MobileNetV2)."""
    kwargs = {k: v for k, v in config.model_kwargs.to_dict().items() if k != "attn"}
    model = create_model(config.model, **kwargs)
    if not isinstance(model, (ResNet, MobileNetV2)):
        raise ValueError(f"config.model={config.model!r} ({type(model).__name__}) has no attention slot "
                         "for the paper's rows; studies need a ResNet (e.g. resnet50, eca_resnet8_cifar) "
                         "or a MobileNetV2.")


def total_steps(config: ml_collections.ConfigDict, num_train: Optional[int] = None) -> int:
    """The run's length in optimizer steps (``num_train``: train examples; default: known sizes,
    else the dataset's info, which prepares the dataset)."""
    if config.total_steps is not None:
        return int(config.total_steps)
    if num_train is None:
        num_train = TRAIN_EXAMPLES.get(config.dataset)
    if num_train is None:
        from eca_jax import data  # noqa: PLC0415 (tensorflow)
        num_train = data.dataset_info(config.dataset, data_dir=config.data_dir,
                                      manual_dir=config.manual_dir).num_train
    return to_steps(config, "total", max(1, num_train // config.batch_size))
