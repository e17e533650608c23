"""eca_jax.train: sharded (data parallel + FSDP), multi-host, preemption-safe training.

    python -m eca_jax.train --config experiments/configs/digits.py --workdir workdirs/digits

    from eca_jax.train import make_config, train_and_evaluate
    result = train_and_evaluate(make_config(model="eca_resnet8_cifar", dataset="digits",
                                            image_size=32, batch_size=128, total_epochs=15.0),
                                "workdirs/digits")

Modules (one job each): :mod:`.config` (schema, validation, durations), :mod:`.optim` (optax),
:mod:`.sharding` (mesh, FSDP rule), :mod:`.state`, :mod:`.step` (the pure train step),
:mod:`.checkpoint` (orbax), :mod:`.init_from` (fine-tuning), :mod:`.preemption` (SIGTERM),
:mod:`.reporting` (progress, metrics.csv, TensorBoard, PNG), :mod:`.loop` (train_and_evaluate),
:mod:`.recipe` (what today's recipe keys turn into: :mod:`.mixing` mixup/CutMix on device,
:mod:`.losses` soft-target CE / BCE, :mod:`.ema` weight averaging; AdamW / LAMB in :mod:`.optim`).
Evaluation (eval step, loss, one pass over the eval split) is :mod:`eca_jax.evaluation`, shared
with ``python -m eca_jax.evaluate``. A step is one optimizer update everywhere: the loop,
``TrainState.step``, checkpoint numbers, logs and the learning-rate schedule.
Importing this package is cheap; the heavy modules load on first use.
"""
from __future__ import annotations

from typing import Any

from eca_jax.train.config import make_config, validate_config

__all__ = ["make_config", "validate_config", "train_and_evaluate"]


def train_and_evaluate(config: Any, workdir: str, **kwargs: Any) -> dict[str, Any]:
    """See :func:`eca_jax.train.loop.train_and_evaluate`."""
    from eca_jax.train.loop import train_and_evaluate as run  # noqa: PLC0415
    return run(config, workdir, **kwargs)
