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

TensorFlow is used for tf.data only and never sees a GPU (``tf.config.set_visible_devices([], "GPU")``
on import).
"""

from eca_jax.data._tf import tf as _tf  # noqa: F401  (first: hides the GPUs from TensorFlow)
from eca_jax.data.datasets import DatasetInfo, check_name, dataset_info, default_data_dir, prepare
from eca_jax.data.imagenet import check_manual_dir, imagenet_class_names, imagenet_synsets
from eca_jax.data.on_device import normalize_images, with_input_normalization
from eca_jax.data.pipeline import EvalIterator, TrainIterator, make_eval_iterator, make_train_iterator
from eca_jax.data.transforms import (AUGMENTS, IMAGE_FORMATS, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalSettings,
                                     eval_transform, preprocess_for_eval, resolve_eval_settings, resolve_normalization,
                                     train_transform)

__all__ = [
    "AUGMENTS", "IMAGE_FORMATS", "DatasetInfo", "EvalIterator", "EvalSettings", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "TrainIterator",
    "check_manual_dir", "check_name", "dataset_info", "default_data_dir", "eval_transform", "imagenet_class_names",
    "imagenet_synsets", "make_eval_iterator", "make_train_iterator", "normalize_images", "preprocess_for_eval",
    "prepare", "resolve_eval_settings", "resolve_normalization", "train_transform", "with_input_normalization",
]
