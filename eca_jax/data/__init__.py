"""Input pipelines on tfds: ImageNet, any tfds image-classification dataset, and the embedded digits.

    from eca_jax import data
    info = data.dataset_info("digits")                      # DatasetInfo(name, num_classes, num_train, ...)
    train = data.make_train_iterator("imagenet2012", global_batch_size=1024, image_size=224, seed=0,
                                     sharding=NamedSharding(mesh, P(("data", "fsdp"))), manual_dir=...)
    batch = next(train)                                     # {"image": f32 (B, 224, 224, 3), "label": i32 (B,)}
    state = train.get_state()                               # JSON; make_train_iterator(..., state=state) resumes
    for batch in data.make_eval_iterator("imagenet2012", global_batch_size=1024, image_size=224, sharding=...):
        ...                                                 # + "mask" f32 (B,), "index" i32 (B,)
    x = data.preprocess_for_eval(open("cat.jpg", "rb").read())   # f32 (224, 224, 3)

``image_format="uint8"`` (train and eval iterators) ships whole grey levels as uint8, a quarter of
the bytes; normalize them inside the jitted step with ``data.normalize_images(x, mean, std)`` or
wrap the model's apply with ``data.with_input_normalization(model.apply, mean, std)``.

RandAugment and random erasing (timm's) in the train stream: ``make_train_iterator(...,
randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25)``; ``data.parse_randaugment(spec)`` checks a
spec string in plain Python.

TensorFlow is used for tf.data only and never sees a GPU (``tf.config.set_visible_devices([], "GPU")``
when it is first imported). The names below are loaded on first use, so that ``parse_randaugment``
(and ``eca_jax.data.randaugment``) can be imported without importing TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it (imported on first access).
_EXPORTS = {
    "datasets": ("DatasetInfo", "check_name", "dataset_info", "default_data_dir", "prepare"),
    "imagenet": ("check_manual_dir", "imagenet_class_names", "imagenet_synsets"),
    "on_device": ("normalize_images", "with_input_normalization"),
    "pipeline": ("EvalIterator", "TrainIterator", "make_eval_iterator", "make_train_iterator"),
    "randaugment": ("RANDAUGMENT_OPS", "RANDAUGMENT_INCREASING_OPS", "RandAugmentSpec", "parse_randaugment"),
    "transforms": ("AUGMENTS", "IMAGE_FORMATS", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "EvalSettings",
                   "eval_transform", "preprocess_for_eval", "resolve_eval_settings", "resolve_normalization",
                   "train_transform"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AUGMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_FORMATS",
    "INTERPOLATIONS",
    "RANDAUGMENT_INCREASING_OPS",
    "RANDAUGMENT_OPS",
    "DatasetInfo",
    "EvalIterator",
    "EvalSettings",
    "RandAugmentSpec",
    "TrainIterator",
    "check_manual_dir",
    "check_name",
    "dataset_info",
    "default_data_dir",
    "eval_transform",
    "imagenet_class_names",
    "imagenet_synsets",
    "make_eval_iterator",
    "make_train_iterator",
    "normalize_images",
    "parse_randaugment",
    "prepare",
    "preprocess_for_eval",
    "resolve_eval_settings",
    "resolve_normalization",
    "train_transform",
    "with_input_normalization",
]
assert sorted(__all__) == sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Loads a public name (or a submodule, ``data.transforms``) on first use (PEP 562)."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
