"""Today's training recipes in the trainer: what the recipe keys of the config turn into.

The keys (all off by default, which is the release's recipe) and where they act:

- input, on the host (``eca_jax.data``): ``randaugment`` (timm's spec string), ``random_erasing``,
  ``train_interpolation``, a training resolution (``image_size``) below the eval one
  (``eval_image_size``) as in "ResNet strikes back";
- batch mixing, on the device inside the jitted step (:mod:`eca_jax.train.mixing`):
  ``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``, ``mix_switch_prob``, with ``label_smoothing``
  applied to the mixed targets;
- the loss (:mod:`eca_jax.train.losses`): ``loss`` = softmax | bce, ``bce_target_threshold``;
- the optimizer (:mod:`eca_jax.train.optim`): ``optimizer`` = sgd | adamw | lamb, ``adam_*``;
- the model: ``model_kwargs.drop_path_rate`` (stochastic depth) and ``model_kwargs.drop_rate``
  (dropout before the classifier; MobileNetV2's is ``model_kwargs.dropout``);
- an exponential moving average of the weights and BatchNorm statistics (:mod:`eca_jax.train.ema`):
  ``ema_decay``, ``ema_warmup``; checkpointed with the state and evaluated beside the raw weights.

:func:`validate_recipe` checks the keys and their combinations before any data is read, with
errors that name the keys; :class:`Recipe` is what the train step needs of them (static).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections

from eca_jax.constants import INTERPOLATIONS
from eca_jax.train.config import check_choice

OPTIMIZERS = ("sgd", "adamw", "lamb")
LOSSES = ("softmax", "bce")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the train step does besides forward/backward/update (hashable: static under jit).

    mix: the mixup/CutMix settings (``eca_jax.train.mixing.MixConfig``) or None (off);
    loss: "softmax" | "bce"; bce_target_threshold: see ``losses.binary_cross_entropy``;
    label_smoothing: on the one-hot (and mixed) targets; ema_decay: None (no EMA) or the decay;
    ema_warmup: TensorFlow's ``ExponentialMovingAverage(num_updates=)`` rule, decay
    min(ema_decay, (1 + n) / (10 + n)) at update n.
    """
    mix: Optional[Any] = None
    loss: str = "softmax"
    bce_target_threshold: Optional[float] = None
    label_smoothing: float = 0.0
    ema_decay: Optional[float] = None
    ema_warmup: bool = False

    @property
    def plain(self) -> bool:
        """True when the loss is the release's: softmax cross-entropy of the integer labels."""
        return self.mix is None and self.loss == "softmax"


def recipe_from_config(config: ml_collections.ConfigDict, num_classes: int) -> Recipe:
    """The :class:`Recipe` of a (validated) training config for a ``num_classes`` head."""
    mix = None
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        from eca_jax.train.mixing import MixConfig  # noqa: PLC0415
        mix = MixConfig(mixup_alpha=float(config.mixup_alpha), cutmix_alpha=float(config.cutmix_alpha),
                        prob=float(config.mix_prob), switch_prob=float(config.mix_switch_prob),
                        label_smoothing=float(config.label_smoothing), num_classes=int(num_classes))
    threshold = config.bce_target_threshold
    return Recipe(mix=mix, loss=config.loss,
                  bce_target_threshold=None if threshold is None else float(threshold),
                  label_smoothing=float(config.label_smoothing),
                  ema_decay=None if config.ema_decay is None else float(config.ema_decay),
                  ema_warmup=bool(config.ema_warmup))


def _check_range(config, key: str, lo: float, hi: float, *, hi_open: bool = False) -> None:
    value = config[key]
    if value is None or not (lo <= value and (value < hi if hi_open else value <= hi)):
        raise ValueError(f"config.{key} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}.")


def _validate_optimizer_and_loss(config: ml_collections.ConfigDict) -> None:
    check_choice(config, "optimizer", OPTIMIZERS)
    check_choice(config, "loss", LOSSES)
    for key in ("adam_b1", "adam_b2"):
        _check_range(config, key, 0.0, 1.0, hi_open=True)
    if config.adam_eps is not None and not config.adam_eps > 0:
        raise ValueError(f"config.adam_eps must be > 0, got {config.adam_eps!r}.")
    if config.optimizer == "sgd" and config.adam_eps is not None:
        raise ValueError("config.adam_eps is set but config.optimizer='sgd' does not use it "
                         "(set config.optimizer='adamw' or 'lamb', or unset adam_eps).")
    if config.bce_target_threshold is not None:
        if config.loss != "bce":
            raise ValueError(f"config.bce_target_threshold={config.bce_target_threshold} needs "
                             f"config.loss='bce' (got config.loss={config.loss!r}).")
        _check_range(config, "bce_target_threshold", 0.0, 1.0, hi_open=True)


def _validate_mixing(config: ml_collections.ConfigDict) -> None:
    for key in ("mixup_alpha", "cutmix_alpha"):
        if config[key] is None or config[key] < 0:
            raise ValueError(f"config.{key} must be >= 0 (0: off), got {config[key]!r}.")
    _check_range(config, "mix_prob", 0.0, 1.0)
    _check_range(config, "mix_switch_prob", 0.0, 1.0)
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        micro = config.batch_size // config.grad_accum_steps
        if micro < 2 or micro % 2:
            raise ValueError(f"config.mixup_alpha/cutmix_alpha mix each example with another of its "
                             f"batch (timm's batch mode, pairs by reversing the batch): the (micro-)batch "
                             f"batch_size / grad_accum_steps = {micro} must be even and >= 2.")


def _validate_augmentation(config: ml_collections.ConfigDict) -> None:
    _check_range(config, "random_erasing", 0.0, 1.0)
    check_choice(config, "train_interpolation", INTERPOLATIONS)
    if config.randaugment is not None:
        from eca_jax.data.randaugment import parse_randaugment  # noqa: PLC0415 (loads TensorFlow)
        try:
            parse_randaugment(config.randaugment)
        except ValueError as e:
            raise ValueError(f"config.randaugment={config.randaugment!r}: {e}") from None


def _validate_ema(config: ml_collections.ConfigDict) -> None:
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in (0, 1) or None (off), got {config.ema_decay!r}.")
    if config.ema_warmup and config.ema_decay is None:
        raise ValueError("config.ema_warmup=True needs config.ema_decay (the EMA is off).")


def validate_recipe(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key(s) when a recipe key or a combination of them is invalid."""
    _validate_optimizer_and_loss(config)
    _validate_mixing(config)
    _validate_augmentation(config)
    _validate_ema(config)


def train_augmentation(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of ``make_train_iterator`` for the recipe's host-side augmentation:
    only those that differ from the pipeline's defaults (so any ``eca_jax.data``-like module
    without them still serves the release's recipe)."""
    kwargs: dict[str, Any] = {}
    if config.randaugment is not None:
        kwargs["randaugment"] = config.randaugment
    if config.random_erasing:
        kwargs["random_erasing"] = float(config.random_erasing)
    if config.train_interpolation != "bilinear":
        kwargs["interpolation"] = config.train_interpolation
    return kwargs
