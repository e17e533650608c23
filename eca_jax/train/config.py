"""The training configuration: one schema with defaults, validation and durations.

A config file (``experiments/configs/*.py``) defines ``get_config(arg=None)`` and returns
``make_config(**overrides)``. Every key below exists in every config, so a misspelt key fails
loudly, both in a config file and on the command line (``--config.key=value``), with the
valid keys and the closest matches in the message.

Durations follow one vocabulary: ``<prefix>_steps`` or ``<prefix>_epochs`` for the prefixes
``total``, ``warmup``, ``eval_every`` and ``checkpoint_every`` (``lr_decay`` only in epochs).
When both are set, ``_steps`` wins, so ``--config.total_steps=20`` works on a config written in
epochs. :func:`to_steps` turns them into optimizer steps; the loop only ever sees steps. One
step is one optimizer update on ``batch_size`` examples.
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any, Iterable, Mapping

import ml_collections
from ml_collections import config_dict

from eca_jax.constants import INTERPOLATIONS

_P = config_dict.placeholder

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("step", "cosine", "constant")
PROGRESS = ("auto", "tqdm", "lines", "none")
# Sub-dicts whose keys are free-form (passed through as keyword arguments).
FREE_FORM = ("model_kwargs",)


# Over 60 lines: one flat table of every key and its default, the schema in one place.
def _defaults() -> dict[str, Any]:
    """The schema: every valid key with its default (placeholders are typed None)."""
    return dict(
        # --- model ---
        model="eca_resnet50",           # name for eca_jax.models.create_model
        model_kwargs=ml_collections.ConfigDict(),  # extra create_model kwargs (free-form)
        num_classes=_P(int),            # default: the dataset's number of classes
        dtype="float32",                # compute dtype (float32 | bfloat16); params stay float32
        impl="",                        # implementation switches, eca_jax.kernels.ImplOptions.parse
                                        # form ("pointwise_as_dot=false,..."); "": the defaults
        # --- data ---
        dataset="imagenet2012",         # eca_jax.data name ("digits", "imagenet2012", any tfds name)
        data_dir=_P(str),
        manual_dir=_P(str),
        image_size=224,
        # --- eval input (None: from the model's ModelCfg, or the dataset's own crop; see
        #     eca_jax.data.transforms.resolve_eval_settings) ---
        eval_image_size=_P(int),        # default: image_size
        eval_resize_size=_P(int),       # default: floor(eval size / eval crop fraction)
        eval_crop_pct=_P(float),        # default: the dataset's (digits: 1.0), else the model's
        eval_interpolation=_P(str),     # bilinear | bicubic; default: the model's
        mean=_P(tuple),                 # normalization, train and eval; default: the model's
        std=_P(tuple),
        augment=_P(str),                # default: the dataset's ("none" for digits, else crop+flip)
        batch_size=256,                 # global: summed over all devices and processes
        eval_batch_size=_P(int),        # default: batch_size
        # --- durations (exactly one of each pair; see to_steps) ---
        total_steps=_P(int),
        total_epochs=_P(float),
        warmup_steps=_P(int),
        warmup_epochs=_P(float),
        eval_every_steps=_P(int),       # default: once per epoch
        eval_every_epochs=_P(float),
        checkpoint_every_steps=_P(int),  # default: once per epoch
        checkpoint_every_epochs=_P(float),
        log_every_steps=50,
        # --- optimizer (SGD with momentum; the release's recipe by default) ---
        learning_rate=0.1,              # peak learning rate for this batch_size
        momentum=0.9,
        nesterov=False,
        schedule="step",                # step | cosine | constant
        lr_decay_factor=0.1,            # step schedule: lr *= factor every lr_decay_epochs
        lr_decay_epochs=30.0,
        min_learning_rate=0.0,          # cosine floor
        weight_decay=1e-4,              # coupled (PyTorch SGD): wd * param added to the gradient
        weight_decay_norm_and_bias=True,  # release: decay every parameter; False: kernels only
        label_smoothing=0.0,            # also applied to the mixed targets of mixup/CutMix
        grad_clip_norm=_P(float),       # clip the global gradient norm (before weight decay)
        grad_accum_steps=1,             # optax.MultiSteps micro-batches per update
        # --- today's recipes (eca_jax.train.recipe; every one off by default: the release's) ---
        optimizer="sgd",                # sgd | adamw | lamb (optax; decoupled decay for adamw/lamb)
        adam_b1=0.9,                    # adamw / lamb moment decays and epsilon
        adam_b2=0.999,
        adam_eps=_P(float),             # default: 1e-8 (adamw, PyTorch's), 1e-6 (lamb, timm's)
        loss="softmax",                 # softmax (cross-entropy) | bce (sigmoid per class, RSB)
        bce_target_threshold=_P(float),  # bce: targets > threshold become 1, else 0 (RSB: 0.2)
        mixup_alpha=0.0,                # Beta(alpha) mixup on device; 0: off
        cutmix_alpha=0.0,               # Beta(alpha) CutMix on device; 0: off
        mix_prob=1.0,                   # probability that a batch is mixed at all
        mix_switch_prob=0.5,            # with both on: probability of CutMix instead of mixup
        randaugment=_P(str),            # timm's RandAugment spec, e.g. "rand-m7-mstd0.5-inc1"
        random_erasing=0.0,             # probability of timm's RandomErasing (pixel mode)
        train_interpolation="bilinear",  # resize of the random crop: bilinear | bicubic
        ema_decay=_P(float),            # EMA of the weights and BN statistics; None: off
        ema_warmup=False,               # decay min(ema_decay, (1 + n) / (10 + n)) at update n
        # --- BatchNorm statistics ---
        bn_groups=1,                    # 1: statistics over the global batch; G: per batch/G
        # --- mesh / sharding ---
        mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=1)),  # -1: all remaining devices
        fsdp_min_size=2 ** 18,          # params with fewer elements are replicated
        # --- runtime ---
        seed=0,
        keep_checkpoints=3,             # keep the last K checkpoints ...
        keep_best=True,                 # ... plus the best one by eval top-1
        async_checkpointing=True,
        init_from=_P(str),              # a converted checkpoint dir or a training workdir
        init_from_reset_head=False,     # re-initialise the classifier if its shape differs
        progress="auto",                # auto (tqdm on a terminal, else lines) | tqdm | lines | none
    )


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        name = prefix + k
        if isinstance(v, (dict, ml_collections.ConfigDict)) and k not in FREE_FORM:
            keys.extend(_flat_keys(v, name + "."))
        else:
            keys.append(name)
    return keys


def valid_keys() -> list[str]:
    """All valid (dotted) config keys, sorted."""
    return sorted(_flat_keys(_defaults()))


def unknown_key_error(key: str, valid: Iterable[str] | None = None) -> KeyError:
    """A KeyError naming ``key``, its closest valid matches and all valid keys."""
    valid = sorted(valid if valid is not None else valid_keys())
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"Unknown config key {key!r}.{hint} Valid keys: {', '.join(valid)}.")


def make_config(**overrides: Any) -> ml_collections.ConfigDict:
    """Returns the default config with ``overrides`` applied, locked against new keys.

    Nested keys are given as dicts (``mesh=dict(fsdp=2)``); ``model_kwargs`` is free-form.
    """
    config = ml_collections.ConfigDict(_defaults())
    valid = set(valid_keys())
    for key, value in overrides.items():
        if key in FREE_FORM:
            config[key] = ml_collections.ConfigDict(dict(value))
        elif isinstance(value, Mapping) and isinstance(config.get(key), ml_collections.ConfigDict):
            for sub, v in value.items():
                if f"{key}.{sub}" not in valid:
                    raise unknown_key_error(f"{key}.{sub}", valid)
                config[key][sub] = v
        elif key not in valid:
            raise unknown_key_error(key, valid)
        else:
            config[key] = value
    config.lock()
    return config


def check_override_flags(argv: Iterable[str], flag: str = "config") -> None:
    """Raises a clear KeyError for any ``--config.<key>=...`` naming an unknown key.

    ml_collections would also refuse it, but with a traceback; this runs before flag parsing.
    """
    valid = set(valid_keys())
    free = tuple(f"{k}." for k in FREE_FORM)
    for arg in argv:
        if not arg.startswith(f"--{flag}."):
            continue
        key = arg[len(flag) + 3:].split("=", 1)[0]
        if key not in valid and not key.startswith(free):
            raise unknown_key_error(key, valid)


def config_file_arg(argv: Iterable[str], flag: str = "config") -> str | None:
    """The file named by ``--config FILE`` or ``--config=FILE[:arg]`` in ``argv``, else None."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == f"--{flag}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{flag}="):
            value = arg.split("=", 1)[1]
        else:
            continue
        return value.split(":", 1)[0]  # ml_collections passes "FILE:ARG" to get_config(ARG)
    return None


def check_config_file(argv: Iterable[str], flag: str = "config") -> None:
    """Raises a one-line FileNotFoundError if ``--config`` names a file that does not exist.

    ml_collections would raise it too, but inside absl's flag parser, as two chained tracebacks.
    """
    path = config_file_arg(argv, flag)
    if path is not None and not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise FileNotFoundError(f"config file {path!r} not found{where}; "
                                "e.g. --config experiments/configs/digits.py")


def check_choice(config, key: str, choices: tuple[str, ...]) -> None:
    """ValueError naming ``config.<key>`` and the choices unless its value is one of them."""
    if config[key] not in choices:
        raise ValueError(f"config.{key}={config[key]!r} is not one of {choices}.")


def _validate_eval_input(config: ml_collections.ConfigDict) -> None:
    """Checks the eval-input keys (all optional: None means "from the model / dataset")."""
    for key in ("eval_image_size", "eval_resize_size"):
        if config[key] is not None and config[key] < 1:
            raise ValueError(f"config.{key} must be >= 1 or None, got {config[key]!r}.")
    if config.eval_resize_size is not None and config.eval_crop_pct is not None:
        raise ValueError("Set config.eval_resize_size or config.eval_crop_pct, not both.")
    if config.eval_crop_pct is not None and not 0.0 < config.eval_crop_pct <= 1.0:
        raise ValueError(f"config.eval_crop_pct must be in (0, 1], got {config.eval_crop_pct}.")
    if config.eval_interpolation is not None and config.eval_interpolation not in INTERPOLATIONS:
        raise ValueError(f"config.eval_interpolation={config.eval_interpolation!r} is not one of "
                         f"{INTERPOLATIONS}.")
    for key in ("mean", "std"):
        value = config[key]
        if value is not None and (len(value) != 3 or (key == "std" and min(value) <= 0)):
            raise ValueError(f"config.{key} must be 3 numbers (R, G, B){', positive' if key == 'std' else ''}, "
                             f"got {value!r}.")


def _validate_impl(config: ml_collections.ConfigDict) -> None:
    """config.impl must parse as ImplOptions switches (names and true/false values)."""
    if not isinstance(config.impl, str):
        raise ValueError(f"config.impl must be a string such as 'pointwise_as_dot=false', "
                         f"got {config.impl!r}.")
    if "impl" in config.model_kwargs:
        raise ValueError("Set the implementation switches with config.impl, not "
                         "config.model_kwargs.impl.")
    from eca_jax.kernels.options import ImplOptions  # noqa: PLC0415 (imports jax)
    try:
        ImplOptions.parse(config.impl)
    except ValueError as e:
        raise ValueError(f"config.impl={config.impl!r}: {e}") from None


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises KeyError/ValueError naming the problem if ``config`` is not a valid config."""
    valid = set(valid_keys())
    for key in _flat_keys(config.to_dict()):
        if key not in valid:
            raise unknown_key_error(key, valid)
    for key in valid:
        top = key.split(".")[0]
        if top not in config or ("." in key and key.split(".")[1] not in config[top]):
            raise KeyError(f"Config is missing key {key!r}; build configs with make_config().")
    check_choice(config, "dtype", DTYPES)
    check_choice(config, "schedule", SCHEDULES)
    check_choice(config, "progress", PROGRESS)
    _validate_impl(config)
    for prefix in ("total", "warmup", "eval_every", "checkpoint_every"):
        for unit in ("steps", "epochs"):
            value = config[f"{prefix}_{unit}"]
            if value is not None and (value < 0 or (prefix != "warmup" and value == 0)):
                raise ValueError(f"config.{prefix}_{unit} must be positive, got {value}.")
    if config.total_steps is None and config.total_epochs is None:
        raise ValueError("Set config.total_steps or config.total_epochs.")
    positive = ["batch_size", "log_every_steps", "grad_accum_steps", "bn_groups",
                "keep_checkpoints", "image_size"]
    for key in positive:
        if config[key] is None or config[key] < 1:
            raise ValueError(f"config.{key} must be >= 1, got {config[key]!r}.")
    _validate_eval_input(config)
    from eca_jax.train.recipe import validate_recipe  # noqa: PLC0415 (its own module)
    validate_recipe(config)
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                         f"config.grad_accum_steps={config.grad_accum_steps}.")
    micro = config.batch_size // config.grad_accum_steps
    if micro % config.bn_groups:
        raise ValueError(f"The micro-batch {micro} is not divisible by config.bn_groups="
                         f"{config.bn_groups}.")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}.")
    for axis in ("data", "fsdp"):
        if config.mesh[axis] == 0 or config.mesh[axis] < -1:
            raise ValueError(f"config.mesh.{axis} must be -1 (all remaining devices) or >= 1.")
    if config.mesh.data == -1 and config.mesh.fsdp == -1:
        raise ValueError("At most one of config.mesh.data and config.mesh.fsdp may be -1.")


def to_steps(config: ml_collections.ConfigDict, prefix: str, steps_per_epoch: int,
             default: int | None = None) -> int | None:
    """``<prefix>_steps``, else ``<prefix>_epochs`` times ``steps_per_epoch`` (rounded up), else
    ``default``."""
    steps = config.get(f"{prefix}_steps")
    epochs = config.get(f"{prefix}_epochs")
    if steps is not None:
        return int(steps)
    if epochs is not None:
        return max(1, int(math.ceil(epochs * steps_per_epoch - 1e-9))) if epochs > 0 else 0
    return default
