"""A model's input settings (size, crop, interpolation, mean/std) reach the data it is evaluated on.

Reference: tests/reference/timm_pretrained_cfgs.json, timm's own pretrained_cfgs of the ECA
ResNet-D family, copied from timm's source (its header says from where). Checks: the registry
agrees with it; the resolved eval settings are timm's test-time ones; ``evaluate_checkpoint`` on a
converted timm-layout checkpoint builds its eval pipeline with them, and the images it feeds the
model equal PIL's bicubic resize + center crop; explicit config keys win; digits' eval batches are
unchanged (crop 1.0, bilinear).

Runtime: ~15 s of tests (each under 6 s) plus ~25 s of imports on 2 busy CPU cores (importing
TensorFlow and JAX, writing two tiny tfds datasets, one small forward pass at 352x352).
"""
from __future__ import annotations

import io
import json
import math
import os
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from eca_jax import data
from eca_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from eca_jax.data.transforms import resolve_eval_settings
from eca_jax.models import create_model, get_model_cfg, list_models

REFERENCE = os.path.join(os.path.dirname(__file__), "reference", "timm_pretrained_cfgs.json")
TIMM = {k: v for k, v in json.load(open(REFERENCE)).items() if not k.startswith("_")}
NUM_CLASSES = 10
# Small widths/depths: the architecture family (and so the registry name and its ModelCfg) stays.
TINY = dict(layers=(1, 1, 1, 1), widths=(4, 4, 4, 4), stem_width=4)


def _timm_test_settings(name: str) -> tuple[int, int]:
    """(eval size, resize size) timm evaluates ``name``'s weights at: the test size with its crop."""
    ref = TIMM[name]
    crop = ref["test_crop_pct"] if ref["test_crop_pct"] is not None else ref["crop_pct"]
    return ref["test_input_size"], math.floor(ref["test_input_size"] / crop)


# ----------------------------------------------------------------------------- registry and resolution

def test_reference_covers_every_timm_layout_model():
    assert sorted(n for n in list_models() if get_model_cfg(n).torch_layout == "timm") == sorted(TIMM)


@pytest.mark.parametrize("name", sorted(TIMM))
def test_model_cfg_matches_timm(name):
    cfg, ref = get_model_cfg(name), TIMM[name]
    got = {k: getattr(cfg, k) for k in ("input_size", "test_input_size", "interpolation", "crop_pct",
                                        "test_crop_pct")}
    assert got == {k: ref[k] for k in got}
    assert (cfg.mean, cfg.std) == (tuple(ref["mean"]), tuple(ref["std"]))


@pytest.mark.parametrize("name", sorted(TIMM))
def test_resolved_eval_settings_are_timms(name):
    cfg, ref = get_model_cfg(name), TIMM[name]
    size, resize = _timm_test_settings(name)
    settings = resolve_eval_settings(model_cfg=cfg)
    assert (settings.image_size, settings.resize_size, settings.interpolation) == (size, resize, "bicubic")
    assert (settings.mean, settings.std) == (tuple(ref["mean"]), tuple(ref["std"]))
    at_train_size = resolve_eval_settings(ref["input_size"], model_cfg=cfg)  # the train size: crop_pct
    assert at_train_size.resize_size == math.floor(ref["input_size"] / ref["crop_pct"])


def test_precedence_explicit_then_dataset_then_model():
    cfg = get_model_cfg("ecaresnet269d")
    explicit = resolve_eval_settings(224, crop_pct=0.875, interpolation="bilinear", mean=(0.5,) * 3,
                                     std=(0.5,) * 3, dataset_crop_pct=1.0, model_cfg=cfg)
    assert (explicit.resize_size, explicit.interpolation, explicit.mean) == (256, "bilinear", (0.5,) * 3)
    assert resolve_eval_settings(224, resize_size=300, model_cfg=cfg).resize_size == 300
    dataset = resolve_eval_settings(32, dataset_crop_pct=1.0, model_cfg=cfg)  # digits' own crop
    assert (dataset.resize_size, dataset.interpolation) == (32, "bicubic")
    plain = resolve_eval_settings(224)  # no model: torchvision's defaults
    assert (plain.resize_size, plain.interpolation, plain.mean, plain.std) == (
        256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="interpolation"):
        resolve_eval_settings(224, interpolation="lanczos")
    with pytest.raises(ValueError, match="image_size"):
        resolve_eval_settings()


def test_config_eval_keys_override_the_model():
    from eca_jax.train import loop
    from eca_jax.train.config import make_config, validate_config

    config = make_config(model="ecaresnet50d", total_steps=1)
    kwargs = loop.eval_input_kwargs(config)
    assert kwargs["model_cfg"] is get_model_cfg("ecaresnet50d") and kwargs["interpolation"] is None
    assert resolve_eval_settings(**{k: v for k, v in kwargs.items()}).interpolation == "bicubic"
    config = make_config(model="ecaresnet50d", total_steps=1, eval_image_size=256, eval_crop_pct=1.0,
                         eval_interpolation="bilinear", mean=[0.5, 0.5, 0.5], std=(0.25, 0.25, 0.25))
    validate_config(config)
    settings = resolve_eval_settings(**loop.eval_input_kwargs(config))
    assert (settings.image_size, settings.resize_size, settings.interpolation) == (256, 256, "bilinear")
    assert (settings.mean, settings.std) == ((0.5,) * 3, (0.25,) * 3)
    assert loop.normalization(config) == {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    with pytest.raises(ValueError, match="eval_interpolation"):
        validate_config(make_config(total_steps=1, eval_interpolation="nearest"))
    with pytest.raises(ValueError, match="not both"):
        validate_config(make_config(total_steps=1, eval_crop_pct=0.9, eval_resize_size=256))
    with pytest.raises(KeyError, match="eval_interpolation"):
        make_config(eval_interpolaton="bicubic")


# ----------------------------------------------------------------------------- the pipeline, end to end

def _photo(h: int, w: int, seed: int) -> bytes:
    """A JPEG of random 8x8-pixel blocks (sharp edges: bilinear and bicubic resizes differ on it)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((w, h), Image.NEAREST).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


PHOTOS = [_photo(400, 480, 1), _photo(480, 420, 2), _photo(440, 440, 3)]  # landscape, portrait, square


def _pil_eval_crop(jpeg: bytes, size: int, resize: int, interpolation: str) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(size) with PIL: (size, size, 3) grey levels (float64)."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    width, height = image.size
    new = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    image = image.resize(new, {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation])
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.float64)


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> str:
    """A tfds data_dir holding "photos" (written with tfds' adhoc writer): 3 JPEGs in split "validation"."""
    import tensorflow_datasets as tfds
    path = str(tmp_path_factory.mktemp("photos"))
    examples = ((i, {"image": jpeg, "label": i}) for i, jpeg in enumerate(PHOTOS))
    tfds.dataset_builders.store_as_tfds_dataset(
        name="photos", version="1.0.0", data_dir=path, disable_shuffling=True,
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"),
                                             "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}),
        split_datasets={"validation": examples})
    return path


def _converted(tmp_path, name: str) -> str:
    """A converted-checkpoint directory of a tiny ``name`` (zero weights: only the input matters
    here, and no init is compiled), as eca_jax.convert writes it."""
    from eca_jax.checkpoints import converted
    model = create_model(name, num_classes=NUM_CLASSES, **TINY)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                                               train=False))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return converted.save(tmp_path / name, variables, {"arch": name, "num_classes": NUM_CLASSES,
                                                       "model_kwargs": TINY})


class _Stop(Exception):
    pass


class _SpyData(types.SimpleNamespace):
    """eca_jax.data with make_eval_iterator recorded: its keyword arguments, the iterator, its images."""

    def __init__(self, stop: bool):
        super().__init__(**{k: getattr(data, k) for k in data.__all__ if k != "make_eval_iterator"})
        self.calls, self.iterators, self.images, self.stop = [], [], [], stop

    def make_eval_iterator(self, name, **kwargs):
        self.calls.append(kwargs)
        iterator = data.make_eval_iterator(name, **kwargs)
        self.iterators.append(iterator)
        if self.stop:
            raise _Stop
        spy = self

        class Recorded:
            settings = iterator.settings

            def __iter__(self):
                for batch in iterator:
                    spy.images.append((np.asarray(batch["image"]), np.asarray(batch["mask"])))
                    yield batch
        return Recorded()


@pytest.mark.parametrize("name", sorted(TIMM))
def test_evaluate_checkpoint_applies_the_model_settings(tmp_path, photos_dir, name):
    """A converted timm model through evaluate_checkpoint: its eval pipeline gets timm's test settings."""
    from eca_jax.evaluate import evaluate_checkpoint
    spy = _SpyData(stop=True)
    with pytest.raises(_Stop):
        evaluate_checkpoint(str(_converted(tmp_path, name)), data_module=spy,
                            overrides={"dataset": "photos", "data_dir": photos_dir})
    size, resize = _timm_test_settings(name)
    settings = spy.iterators[0].settings
    assert (settings.image_size, settings.resize_size, settings.interpolation) == (size, resize, "bicubic")
    assert (settings.mean, settings.std) == (tuple(TIMM[name]["mean"]), tuple(TIMM[name]["std"]))
    assert spy.calls[0]["model_cfg"] is get_model_cfg(name)


def test_evaluated_images_equal_pil_bicubic(tmp_path, photos_dir):
    """ecaresnet269d (352, crop 1.0 at its test size): the images evaluate feeds the model equal PIL's
    bicubic Resize(352) + CenterCrop(352) in grey levels (measured mean |difference| ~0.2 with the
    bicubic reference, bound 0.5; bilinear's resize is farther from the reference than the bound)."""
    from eca_jax.evaluate import evaluate_checkpoint
    spy = _SpyData(stop=False)
    out = evaluate_checkpoint(str(_converted(tmp_path, "ecaresnet269d")), data_module=spy,
                              overrides={"dataset": "photos", "data_dir": photos_dir, "eval_batch_size": 8})
    assert out["num_examples"] == 3 and out["step"] is None
    assert out["eval_input"]["image_size"] == 352 and out["eval_input"]["interpolation"] == "bicubic"
    images, mask = spy.images[0]
    grey = (images[mask > 0].astype(np.float64) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255.0
    for got, jpeg in zip(grey, PHOTOS):
        assert got.shape == (352, 352, 3)
        bicubic = np.abs(got - _pil_eval_crop(jpeg, 352, 352, "bicubic")).mean()
        bilinear = np.abs(got - _pil_eval_crop(jpeg, 352, 352, "bilinear")).mean()
        assert bicubic < 0.5 < bilinear, (bicubic, bilinear)


# ----------------------------------------------------------------------------- digits: unchanged

def test_digits_eval_batches_unchanged(tmp_path_factory):
    """The digits main job's eval (eca_resnet8_cifar at 32): the dataset's crop 1.0 still wins and the
    batches equal the former transform (Resize(32) of the whole image, bilinear, ImageNet mean/std)."""
    from experiments.configs.digits import get_config
    from eca_jax.train import loop
    data_dir = str(tmp_path_factory.mktemp("digits"))
    config = get_config()
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    n = len(jax.devices())
    it = data.make_eval_iterator("digits", global_batch_size=n, sharding=sharding, data_dir=data_dir,
                                 **loop.eval_input_kwargs(config))
    assert (it.settings.image_size, it.settings.resize_size, it.settings.interpolation) == (32, 32, "bilinear")
    assert (it.settings.mean, it.settings.std) == (IMAGENET_MEAN, IMAGENET_STD)
    batch = np.asarray(next(iter(it))["image"])
    import tensorflow_datasets as tfds
    raw = tfds.builder_from_directory(data.dataset_info("digits", data_dir=data_dir).dataset_dir)
    test = tfds.as_numpy(raw.as_dataset(split="test", batch_size=n, shuffle_files=False))
    first = next(iter(test))["image"]
    expected = np.stack([data.preprocess_for_eval(x, image_size=32, resize_size=32) for x in first])
    np.testing.assert_array_equal(batch, expected)
    assert loop.normalization(config) == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
