"""Tests of eca_jax.data: tfds datasets (embedded digits, a fake ILSVRC2012 prepared by tfds' real
imagenet2012 builder), train/eval pipelines (determinism, exact resume, exact padded eval),
``preprocess_for_eval`` against an independent PIL implementation of torchvision's
Resize + CenterCrop, and bad input. Nothing is downloaded: every dataset is made here.

Runtime: about a minute on 2 CPU cores (the two-process test lives in test_data_multiprocess.py).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from eca_jax import data
from eca_jax.data import digits as digits_lib
from eca_jax.data import imagenet as imagenet_lib
from eca_jax.data import transforms as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array(T.IMAGENET_MEAN) * 255.0
STD = np.array(T.IMAGENET_STD) * 255.0


def _grey_levels(normalized) -> np.ndarray:
    """Undoes the ImageNet normalization: float32 (..., 3) -> grey levels 0..255."""
    return np.asarray(normalized) * STD + MEAN


@pytest.fixture(scope="module")
def sharding() -> NamedSharding:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    return NamedSharding(mesh, P("data"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A tfds data_dir holding the digits (written by eca_jax.data itself)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("digits", data_dir=path)
    return path


# ------------------------------------------------------------------ synthetic images

def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour "photograph" (gradients + blocky texture, not noise): uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 100 * np.sin(2 * np.pi * (1.5 * x + 0.7 * y) + rng.uniform(0, 6)),
                    128 + 90 * np.cos(2 * np.pi * (0.5 * x - 2.1 * y)),
                    128 + 80 * np.sin(2 * np.pi * 3 * (x + y)) * np.cos(2 * np.pi * 5 * x)], -1)
    texture = np.kron(rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w]
    return np.clip(img + 12 * texture, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def class_color(label: int) -> np.ndarray:
    """The flat colour that encodes ImageNet class ``label`` in the fake archive's images."""
    return np.array([30 + (label * 37) % 190, 220 - (label * 53) % 180, 40 + (label * 71) % 170], np.float64)


def class_image(label: int, h: int, w: int, seed: int) -> np.ndarray:
    """A JPEG-friendly image whose every region has mean colour ``class_color(label)`` (+- small texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    texture = 6 * np.sin(x / 3.0 + rng.uniform(0, 6))[..., None] * np.cos(y / 4.0)[..., None]
    return np.clip(class_color(label) + texture, 0, 255).astype(np.uint8)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


# ------------------------------------------------------------------ fake ILSVRC2012

TRAIN_SYNSET_IDS = (0, 1, 500, 999)  # labels of the classes in the fake training archive
PER_CLASS = 6
NUM_VAL = 12
SHAPES = ((60, 80), (80, 60), (64, 64), (48, 96))


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory) -> dict:
    """A fake ILSVRC2012 in the real archive layout, prepared by tfds' imagenet2012 builder.

    manual_dir/ILSVRC2012_img_train.tar holds one tar per class (n01440764.tar, ...) of JPEGs
    named n01440764_<k>.JPEG; manual_dir/ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG,
    whose labels tfds takes from its own validation_labels.txt (in sorted file-name order).
    """
    root = tmp_path_factory.mktemp("imagenet")
    manual_dir, data_dir = root / "manual", root / "tfds"
    manual_dir.mkdir()
    synsets = data.imagenet_synsets()
    label_of = {s: i for i, s in enumerate(synsets)}
    per_class = {}
    for c, label in enumerate(TRAIN_SYNSET_IDS):
        images = {f"{synsets[label]}_{k + 1}.JPEG": jpeg_bytes(class_image(label, *SHAPES[k % 4], seed=10 * c + k))
                  for k in range(PER_CLASS)}
        per_class[f"{synsets[label]}.tar"] = _tar_bytes(images)
    (manual_dir / imagenet_lib.TRAIN_TAR).write_bytes(_tar_bytes(per_class))

    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    with open(tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME)) as f:
        val_synsets = f.read().split()[:NUM_VAL]
    val_names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(NUM_VAL)]
    val_labels = {n: label_of[s] for n, s in zip(val_names, val_synsets)}
    val_images = {n: jpeg_bytes(class_image(val_labels[n], *SHAPES[i % 4], seed=100 + i))
                  for i, n in enumerate(val_names)}
    (manual_dir / imagenet_lib.VAL_TAR).write_bytes(_tar_bytes(dict(reversed(list(val_images.items())))))

    used = sorted(set(TRAIN_SYNSET_IDS) | set(val_labels.values()))
    gaps = [np.abs(class_color(a) - class_color(b)).max() for a in used for b in used if a < b]
    assert min(gaps) >= 20, "class colours must be far apart for the label checks to mean something"
    # The README's one command, run as a user would.
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "eca_jax.data", "prepare", "imagenet2012", "--manual_dir",
                           str(manual_dir), "--data_dir", str(data_dir)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"num_train": 24' in done.stdout
    builder = tfds.builder("imagenet2012", data_dir=str(data_dir))
    assert builder.is_prepared()
    return {"data_dir": str(data_dir), "manual_dir": str(manual_dir), "val_labels": val_labels,
            "builder": builder}


def _assert_colors_match_labels(batch, mask=None, tol=12.0):
    """Every (unmasked) image's mean colour is its label's class colour: no image ever has a wrong label."""
    images = _grey_levels(batch["image"])
    labels = np.asarray(batch["label"])
    keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask) > 0
    for image, label in zip(images[keep], labels[keep]):
        mean = image.reshape(-1, 3).mean(0)
        assert np.abs(mean - class_color(int(label))).max() < tol, (label, mean, class_color(int(label)))


def test_fake_imagenet_prepared_by_tfds_builder(fake_imagenet):
    info = data.dataset_info("imagenet2012", data_dir=fake_imagenet["data_dir"])
    assert (info.num_classes, info.num_train, info.num_eval) == (1000, 4 * PER_CLASS, NUM_VAL)
    assert (info.train_split, info.eval_split) == ("train", "validation")
    assert info.class_names[0].startswith("tench") and len(info.class_names) == 1000
    assert fake_imagenet["builder"].info.full_name.startswith("imagenet2012/")


def test_fake_imagenet_train_pipeline(fake_imagenet, sharding):
    n_dev = len(jax.devices())
    it = data.make_train_iterator("imagenet2012", global_batch_size=n_dev, image_size=32, seed=0, sharding=sharding,
                                  data_dir=fake_imagenet["data_dir"], cache=False)  # stream from the tfds files
    assert it.steps_per_epoch == 4 * PER_CLASS // n_dev
    epoch = [next(it) for _ in range(it.steps_per_epoch)]
    for batch in epoch:
        assert batch["image"].shape == (n_dev, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["image"].sharding == sharding
        _assert_colors_match_labels(batch)
    labels = np.concatenate([np.asarray(b["label"]) for b in epoch])
    if (4 * PER_CLASS) % n_dev == 0:  # the whole split fits in whole batches: each image exactly once
        assert sorted(np.bincount(labels, minlength=1000)[list(TRAIN_SYNSET_IDS)]) == [PER_CLASS] * 4
    assert it.get_state()["epoch"] == 1


def test_fake_imagenet_eval_pipeline(fake_imagenet, sharding):
    n_dev = len(jax.devices())
    it = data.make_eval_iterator("imagenet2012", global_batch_size=n_dev, image_size=32, sharding=sharding,
                                 data_dir=fake_imagenet["data_dir"])
    assert it.num_examples == NUM_VAL and len(it) == -(-NUM_VAL // n_dev)
    builder = fake_imagenet["builder"]
    names = [ex["file_name"].decode() for ex in builder.as_dataset("validation", shuffle_files=False,
                                                                   read_config=_in_order()).as_numpy_iterator()]
    seen = []
    for batch in it:
        _assert_colors_match_labels(batch, batch["mask"])
        for index, label, mask in zip(np.asarray(batch["index"]), np.asarray(batch["label"]), np.asarray(batch["mask"])):
            if mask:
                seen.append(int(index))
                assert label == fake_imagenet["val_labels"][names[index]]  # tfds' own validation labels
            else:
                assert index == -1
    assert sorted(seen) == list(range(NUM_VAL))


def _in_order():
    import tensorflow_datasets as tfds
    return tfds.ReadConfig(interleave_cycle_length=1)


# ------------------------------------------------------------------ determinism and exact resume

def _equal_batches(a, b) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in ("image", "label"))


@pytest.mark.parametrize("which", ["digits_in_memory", "digits_in_memory_crop_flip", "imagenet_streamed"])
def test_train_stream_same_seed_same_batches_and_exact_resume(which, data_dir, fake_imagenet, sharding):
    n_dev = len(jax.devices())
    if which == "digits_in_memory":
        kw = dict(name="digits", global_batch_size=8 * n_dev, image_size=16, data_dir=data_dir)
    elif which == "digits_in_memory_crop_flip":
        kw = dict(name="digits", global_batch_size=16 * n_dev, image_size=16, data_dir=data_dir,
                  augment="inception_crop_flip", cache=True)
    else:
        kw = dict(name="imagenet2012", global_batch_size=n_dev, image_size=24, data_dir=fake_imagenet["data_dir"],
                  cache=False)
    make = lambda seed, state=None: data.make_train_iterator(**kw, seed=seed, sharding=sharding, state=state)  # noqa
    first = make(7)
    n_stop = first.steps_per_epoch + 1  # stop inside the second epoch
    run = [next(first) for _ in range(n_stop + 4)]
    again = make(7)
    assert all(_equal_batches(a, next(again)) for a in run), "same seed must give the same batches"
    other = make(8)
    assert not all(_equal_batches(a, next(other)) for a in run[:3]), "another seed must give other batches"

    stopped = make(7)
    for _ in range(n_stop):
        next(stopped)
    state = json.loads(json.dumps(stopped.get_state()))  # what the trainer saves next to the model
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    resumed = make(7, state=state)
    for expected in run[n_stop:]:
        assert _equal_batches(expected, next(resumed)), "resumed stream must continue the uninterrupted one"
    # Resuming exactly at an epoch boundary works too.
    boundary = dict(state, epoch=1, step_in_epoch=0)
    assert _equal_batches(run[first.steps_per_epoch], next(make(7, state=boundary)))


def test_train_stream_state_of_another_stream_is_refused(data_dir, sharding):
    it = data.make_train_iterator("digits", global_batch_size=len(jax.devices()), image_size=8, seed=1,
                                  sharding=sharding, data_dir=data_dir)
    next(it)
    state = it.get_state()
    with pytest.raises(ValueError, match="another stream"):
        data.make_train_iterator("digits", global_batch_size=len(jax.devices()), image_size=8, seed=2,
                                 sharding=sharding, data_dir=data_dir, state=state)
    with pytest.raises(ValueError, match="format"):
        data.make_train_iterator("digits", global_batch_size=len(jax.devices()), image_size=8, seed=1,
                                 sharding=sharding, data_dir=data_dir, state={"epoch": 3})


def test_digits_train_epoch_sees_each_example_at_most_once_with_its_label(data_dir, sharding):
    """Digits, augment "none" (the default: no flip): images are the stored ones, resized, with their labels."""
    n_dev = len(jax.devices())
    it = data.make_train_iterator("digits", global_batch_size=16 * n_dev, image_size=16, seed=0,
                                  sharding=sharding, data_dir=data_dir)
    train = digits_lib.digits_arrays()["train"]
    expected = T.train_transform(T.tf.constant(train["image"]), None, image_size=16, augment="none").numpy()
    expected = expected.reshape(len(expected), -1)
    remaining = np.ones(len(expected), bool)  # each stored example may be used once per epoch
    for _ in range(it.steps_per_epoch):
        batch = next(it)
        for image, label in zip(np.asarray(batch["image"]), np.asarray(batch["label"])):
            same = remaining & (np.abs(expected - image.reshape(1, -1)).max(axis=1) < 1e-3) & (train["label"] == label)
            assert same.any(), "an image that is not in the train split, or not with this label (or seen twice)"
            remaining[np.flatnonzero(same)[0]] = False
    assert (~remaining).sum() == it.steps_per_epoch * 16 * n_dev


# ------------------------------------------------------------------ digits and exact eval

def test_digits_written_once_as_a_real_tfds_dataset(data_dir):
    import tensorflow_datasets as tfds
    path = digits_lib.dataset_dir(data_dir)
    files = sorted(os.listdir(path))
    assert "dataset_info.json" in files and any(f.startswith("digits-train.tfrecord") for f in files)
    mtime = os.path.getmtime(os.path.join(path, "dataset_info.json"))
    data.prepare("digits", data_dir=data_dir)  # second call: reuses what is there
    assert os.path.getmtime(os.path.join(path, "dataset_info.json")) == mtime
    builder = tfds.builder_from_directory(path)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 1437, "test": 360}
    from sklearn.datasets import load_digits
    raw = load_digits()
    for ex in builder.as_dataset("test").take(20).as_numpy_iterator():
        assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8
        expected = np.rint(raw.images[ex["index"]] * 255 / 16)
        np.testing.assert_array_equal(ex["image"][..., 0], expected)
        np.testing.assert_array_equal(ex["image"][..., 2], expected)
        assert ex["label"] == raw.target[ex["index"]]
    info = data.dataset_info("digits", data_dir=data_dir)
    assert (info.num_classes, info.num_train, info.num_eval, info.eval_split) == (10, 1437, 360, "test")
    assert info.augment == "none" and info.image_shape == (8, 8, 3)
    test_rows = digits_lib.digits_arrays()["test"]["index"]
    train_rows = digits_lib.digits_arrays()["train"]["index"]
    assert len(set(test_rows) | set(train_rows)) == 1797


@pytest.mark.parametrize("cache", [True, False])
def test_digits_eval_counts_every_example_exactly_once(cache, data_dir, sharding):
    n_dev = len(jax.devices())
    global_batch = 7 * n_dev  # 360 is not a multiple of 7 * 8 (or of 7 * 1)
    it = data.make_eval_iterator("digits", global_batch_size=global_batch, image_size=12, sharding=sharding,
                                 data_dir=data_dir, cache=cache)
    assert it.num_examples == 360 and 360 % global_batch != 0 and len(it) == -(-360 // global_batch)
    test = digits_lib.digits_arrays()["test"]
    count, seen = 0.0, []
    masked_count = jax.jit(lambda m: m.sum())
    for pass_ in range(2):  # the iterator can be iterated again
        for batch in it:
            assert batch["image"].shape == (global_batch, 12, 12, 3) and batch["mask"].sharding == sharding
            mask, index = np.asarray(batch["mask"]), np.asarray(batch["index"])
            count += float(masked_count(batch["mask"])) if pass_ == 0 else 0.0
            if pass_ == 0:
                seen += [int(i) for i in index[mask > 0]]
                assert np.all(index[mask == 0] == -1)
                np.testing.assert_array_equal(np.asarray(batch["label"])[mask > 0], test["label"][index[mask > 0]])
                i = int(index[0])
                expected = data.preprocess_for_eval(test["image"][i], image_size=12, resize_size=12)
                np.testing.assert_allclose(np.asarray(batch["image"][0]), expected, atol=1e-5)
    assert count == 360 and sorted(seen) == list(range(360))


# ------------------------------------------------------------------ preprocess_for_eval vs torchvision/PIL

def torchvision_resize_center_crop(image: np.ndarray, resize_size: int = 256, crop: int = 224,
                                   shift: tuple[int, int] = (0, 0), resample=Image.BILINEAR) -> np.ndarray:
    """An independent PIL implementation of torchvision's Resize(resize_size) + CenterCrop(crop)."""
    pil = Image.fromarray(image)
    w, h = pil.size
    if h <= w:
        new_h, new_w = resize_size, int(resize_size * w / h)
    else:
        new_h, new_w = int(resize_size * h / w), resize_size
    pil = pil.resize((new_w, new_h), resample)  # PIL filters are antialiased when downscaling
    top, left = int(round((new_h - crop) / 2.0)) + shift[0], int(round((new_w - crop) / 2.0)) + shift[1]
    return np.asarray(pil.crop((left, top, left + crop, top + crop)), np.float64)


SIZES = [(375, 500), (500, 375), (333, 333), (257, 1000), (301, 228), (200, 150), (700, 451)]


@pytest.mark.parametrize("h,w", SIZES)
def test_preprocess_for_eval_matches_torchvision_pil(h, w):
    image = synthetic_photo(h, w, seed=h + w)
    ours = _grey_levels(data.preprocess_for_eval(image, image_size=224, resize_size=256))
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - torchvision_resize_center_crop(image)).mean() < 1.5
    # The test can tell crop windows apart: one pixel off is far above the threshold.
    assert np.abs(ours - torchvision_resize_center_crop(image, shift=(1, 0))).mean() > 3.0
    assert np.abs(ours - torchvision_resize_center_crop(image, shift=(0, 1))).mean() > 3.0
    # Encoded JPEG bytes in, compared with PIL's decode of the same bytes.
    encoded = jpeg_bytes(image, quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    ours_jpeg = _grey_levels(data.preprocess_for_eval(encoded, image_size=224, resize_size=256))
    assert np.abs(ours_jpeg - torchvision_resize_center_crop(decoded)).mean() < 1.5


def test_preprocess_for_eval_bicubic_and_crop_pct_match_pil():
    image = synthetic_photo(375, 500, seed=3)
    ours = _grey_levels(data.preprocess_for_eval(image, image_size=224, resize_size=None, crop_pct=0.95,
                                                 interpolation="bicubic"))
    reference = torchvision_resize_center_crop(image, resize_size=235, resample=Image.BICUBIC)  # floor(224/0.95)
    assert np.abs(ours - reference).mean() < 1.5


def test_inception_crop_windows_decode_only_the_window_and_flip():
    tf = T.tf
    image = synthetic_photo(375, 500, seed=1)
    encoded = jpeg_bytes(image)
    windows = np.array([T._sample_crop_window(tf.constant([375, 500, 3]), tf.constant([0, i]), (0.08, 1.0),
                                              (3 / 4, 4 / 3)).numpy() for i in range(200)])
    area = windows[:, 2] * windows[:, 3] / (375 * 500)
    ratio = windows[:, 3] / windows[:, 2]
    assert area.min() >= 0.075 and area.max() <= 1.0 and area.min() < 0.2 and area.max() > 0.7
    assert ratio.min() > 0.70 and ratio.max() < 1.40  # 3/4..4/3 up to whole-pixel rounding
    assert len({tuple(w) for w in windows}) > 150  # the seed drives the window
    # Only the window is decoded, and it is the same pixels as cropping the full decode.
    full = tf.io.decode_jpeg(encoded, channels=3).numpy().astype(int)
    y, x, h, w = (int(v) for v in windows[0])
    window = T.inception_crop(tf.constant(encoded), tf.constant([0, 0])).numpy().astype(int)
    assert window.shape == (h, w, 3)
    assert np.abs(window - full[y:y + h, x:x + w]).mean() < 1.0
    # With the whole image as the crop, the output is the resized image or its mirror, each about half the time.
    plain = T.train_transform(tf.constant(image), tf.constant([0, 0]), image_size=64, augment="none").numpy()
    flips = 0
    for i in range(40):
        out = T.train_transform(tf.constant(encoded), tf.constant([1, i]), image_size=64, area_range=(1.0, 1.0),
                                ratio_range=(500 / 375, 500 / 375)).numpy()
        mirrored = np.abs(out - plain[:, ::-1]).mean() < np.abs(out - plain).mean()
        flips += int(mirrored)
    assert 8 <= flips <= 32
    again = T.train_transform(tf.constant(encoded), tf.constant([1, 3]), image_size=64)
    np.testing.assert_array_equal(again.numpy(), T.train_transform(tf.constant(encoded), tf.constant([1, 3]),
                                                                   image_size=64).numpy())


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("bad,match", [
    (np.zeros((32, 32), np.uint8), r"uint8 RGB image of shape \(H, W, 3\).*shape \(32, 32\)"),
    (np.zeros((32, 32, 4), np.uint8), r"shape \(32, 32, 4\)"),
    (np.zeros((32, 32, 3), np.float32), "dtype float32"),
    (b"GIF89a but not really", "cannot decode image"),
    (b"\x00\x01 random bytes", r"cannot decode image: not JPEG/PNG"),
    (jpeg_bytes(synthetic_photo(64, 64, 0))[:300], "cannot decode image"),  # truncated JPEG
])
def test_preprocess_for_eval_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        data.preprocess_for_eval(bad, name="holiday.jpg")
    assert "holiday.jpg" in str(e.value)


def test_preprocess_for_eval_rejects_path_and_small_resize():
    with pytest.raises(TypeError, match="not a path"):
        data.preprocess_for_eval("cat.jpg")
    with pytest.raises(ValueError, match="resize_size"):
        data.preprocess_for_eval(synthetic_photo(40, 40, 0), image_size=224, resize_size=200)



def test_resolve_normalization_explicit_then_model_then_imagenet():
    """One rule for train and eval: explicit mean/std > the model's (ModelCfg) > ImageNet's, as
    3-float tuples; a wrong length, a non-number or a std <= 0 is a ValueError naming it."""
    class Cfg:
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    assert T.resolve_normalization() == (T.IMAGENET_MEAN, T.IMAGENET_STD)
    assert T.resolve_normalization(None, None, Cfg) == ((0.5,) * 3, (0.25,) * 3)
    assert T.resolve_normalization([0, 1, 0], None, Cfg) == ((0.0, 1.0, 0.0), (0.25,) * 3)
    assert data.resolve_normalization is T.resolve_normalization
    for mean, std, match in [((0.5, 0.5), None, "mean must have 3 values"),
                             (("a", 0, 0), None, "mean must be 3 numbers"),
                             (None, (1, 0, 1), "std must be positive")]:
        with pytest.raises(ValueError, match=match):
            T.resolve_normalization(mean, std)
    with pytest.raises(ValueError, match="std must have 3 values"):
        data.make_train_iterator("digits", global_batch_size=8, image_size=8, seed=0, sharding=None,
                                 std=(1.0,))

@pytest.mark.parametrize("name,suggestion", [("imagenet2021", "imagenet2012"), ("digts", "digits"),
                                             ("cifar_10", "cifar10")])
def test_unknown_dataset_name_lists_close_names(name, suggestion, data_dir, sharding):
    with pytest.raises(ValueError, match=f"Unknown dataset '{name}'.*Did you mean.*{suggestion}"):
        data.dataset_info(name, data_dir=data_dir)
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.make_train_iterator(name, global_batch_size=8, image_size=8, seed=0, sharding=sharding,
                                 data_dir=data_dir)


def test_known_tfds_dataset_not_prepared_is_not_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)not prepared.*never downloads.*prepare cifar10"):
        data.dataset_info("cifar10", data_dir=str(tmp_path))
    assert not any(tmp_path.rglob("*.tar.gz"))


def test_imagenet_manual_dir_missing_or_incomplete(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError) as e:
        data.dataset_info("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(missing))
    text = str(e.value)
    assert "does not exist" in text
    for fname in (imagenet_lib.TRAIN_TAR, imagenet_lib.VAL_TAR):
        assert os.path.join(str(missing), fname) in text
    assert f"python -m eca_jax.data prepare imagenet2012 --manual_dir {missing} --data_dir {tmp_path / 'tfds'}" in text

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / imagenet_lib.VAL_TAR).write_bytes(_tar_bytes({"ILSVRC2012_val_00000001.JPEG": b"x"}))
    (partial / imagenet_lib.TRAIN_TAR).write_bytes(b"this is not a tar archive")
    with pytest.raises(FileNotFoundError) as e:
        data.prepare("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(partial))
    text = str(e.value)
    assert "is incomplete" in text and f"not a tar archive: {partial / imagenet_lib.TRAIN_TAR}" in text
    assert imagenet_lib.VAL_TAR not in text.split("Download")[0]  # the val archive is fine: not listed

    (partial / imagenet_lib.TRAIN_TAR).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {partial / imagenet_lib.TRAIN_TAR}"):
        data.prepare("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(partial))
    # The default manual_dir is tfds' <data_dir>/downloads/manual.
    with pytest.raises(FileNotFoundError, match=os.path.join("tfds", "downloads", "manual")):
        data.prepare("imagenet2012", data_dir=str(tmp_path / "tfds"))


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory) -> str:
    """A tfds dataset (written with tfds' adhoc writer) whose splits each hold one undecodable JPEG."""
    import tensorflow_datasets as tfds
    path = str(tmp_path_factory.mktemp("broken"))
    good = [jpeg_bytes(class_image(k, 40, 50, seed=k)) for k in range(15)]
    bad = {"train": b"<html>404 not found</html>", "test": b"\x00\x00 not an image",
           "validation": good[0][:len(good[0]) // 2]}  # the last one is a truncated JPEG

    def examples(split):
        items = [(f"good_{k}.JPEG", g) for k, g in enumerate(good)]
        items.insert(3, (f"broken_{split}.JPEG", bad[split]))
        for i, (fname, payload) in enumerate(items):
            yield i, {"image": payload, "label": i % 2, "file_name": fname}

    tfds.dataset_builders.store_as_tfds_dataset(
        name="broken_jpegs", version="1.0.0", data_dir=path, disable_shuffling=True,
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"),
                                             "label": tfds.features.ClassLabel(num_classes=2),
                                             "file_name": tfds.features.Text()}),
        split_datasets={s: examples(s) for s in ("train", "test", "validation")})
    return path


@pytest.mark.parametrize("split", ["test", "validation"])
def test_undecodable_eval_image_is_named(split, broken_dataset, sharding):
    it = data.make_eval_iterator("broken_jpegs", global_batch_size=len(jax.devices()), image_size=16,
                                 sharding=sharding, data_dir=broken_dataset, split=split, cache=False)
    with pytest.raises(ValueError, match=f"broken_jpegs split '{split}'.*broken_{split}.JPEG"):
        for _ in it:
            pass


def test_undecodable_train_image_is_named(broken_dataset, sharding):
    it = data.make_train_iterator("broken_jpegs", global_batch_size=len(jax.devices()), image_size=16, seed=0,
                                  sharding=sharding, data_dir=broken_dataset, cache=False)
    with pytest.raises(ValueError, match="broken_train.JPEG"):
        for _ in range(3):
            next(it)
    with pytest.raises(ValueError, match="one fixed shape"):  # variable-size JPEGs cannot be held as one array
        data.make_train_iterator("broken_jpegs", global_batch_size=len(jax.devices()), image_size=16, seed=0,
                                 sharding=sharding, data_dir=broken_dataset, cache=True)


def test_not_an_image_classification_dataset(tmp_path):
    import tensorflow_datasets as tfds
    tfds.dataset_builders.store_as_tfds_dataset(
        name="just_numbers", version="1.0.0", data_dir=str(tmp_path),
        features=tfds.features.FeaturesDict({"x": np.float32, "label": tfds.features.ClassLabel(num_classes=2)}),
        split_datasets={"train": [(i, {"x": float(i), "label": i % 2}) for i in range(4)]})
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        data.dataset_info("just_numbers", data_dir=str(tmp_path))


def test_bad_batch_and_options_are_refused(data_dir, sharding):
    n_dev = len(jax.devices())
    kw = dict(image_size=8, seed=0, sharding=sharding, data_dir=data_dir)
    if n_dev > 1:
        with pytest.raises(ValueError, match="global_batch_size"):
            data.make_train_iterator("digits", global_batch_size=n_dev + 1, **kw)
    with pytest.raises(ValueError, match="Unknown augment"):
        data.make_train_iterator("digits", global_batch_size=n_dev, augment="mixup", **kw)
    with pytest.raises(ValueError, match="Unknown interpolation"):
        data.make_train_iterator("digits", global_batch_size=n_dev, interpolation="lanczos7", **kw)
    with pytest.raises(ValueError, match="fewer than one local batch"):
        data.make_train_iterator("digits", global_batch_size=2048 * n_dev, **kw)
    with pytest.raises(ValueError, match="cache must be"):
        data.make_train_iterator("digits", global_batch_size=n_dev, cache="yes", **kw)


# ------------------------------------------------------------------ misc

def test_tensorflow_never_sees_a_gpu():
    assert T.tf.config.get_visible_devices("GPU") == []


def test_imagenet_class_names_offline():
    synsets, names = data.imagenet_synsets(), data.imagenet_class_names()
    assert len(synsets) == len(names) == 1000 and synsets == sorted(synsets)
    pairs = dict(zip(synsets, names))
    assert pairs["n01440764"].startswith("tench") and pairs["n01443537"].startswith("goldfish")
    assert pairs["n15075141"].startswith("toilet tissue")


# ------------------------------------------------------------------ uint8 batches, normalized on the device

def _on_device(images, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD) -> np.ndarray:
    from eca_jax.data.on_device import normalize_images
    return np.asarray(jax.jit(lambda x: normalize_images(x, mean, std))(images))


def test_uint8_images_normalized_in_the_step_equal_the_float32_pipeline(fake_imagenet, sharding):
    """Train (tfds-streamed JPEGs, crop + flip): the uint8 stream is the float32 stream's grey levels
    rounded (<= 0.5 grey level apart), and normalizing them on the device equals the host pipeline's
    own normalization (``transforms.normalize``) of those levels within 1e-6. Eval: uint8 + on-device normalization equals the
    float32 pipeline within 1e-6 (its grey levels were whole already)."""
    n_dev = len(jax.devices())
    kw = dict(global_batch_size=n_dev, image_size=32, seed=3, sharding=sharding, data_dir=fake_imagenet["data_dir"],
              cache=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))  # not ImageNet's: the settings must travel
    floats, ints = (data.make_train_iterator("imagenet2012", **kw, image_format=f) for f in ("float32", "uint8"))
    host_mean, host_std = np.array(kw["mean"]) * 255, np.array(kw["std"]) * 255
    for _ in range(2):
        f, u = next(floats), next(ints)
        assert u["image"].dtype == np.uint8 and u["image"].sharding == sharding
        np.testing.assert_array_equal(np.asarray(u["label"]), np.asarray(f["label"]))
        grey = np.asarray(f["image"]).astype(np.float64) * host_std + host_mean
        assert np.abs(np.asarray(u["image"]) - grey).max() <= 0.5 + 1e-3
        assert np.abs(np.asarray(u["image"]) - grey).max() > 0.2  # the float32 stream is not whole levels
        expected = T.normalize(T.tf.constant(np.asarray(u["image"]), T.tf.float32), kw["mean"], kw["std"])
        np.testing.assert_allclose(_on_device(u["image"], kw["mean"], kw["std"]), expected.numpy(), rtol=0, atol=1e-6)
    ekw = dict(global_batch_size=n_dev, image_size=32, sharding=sharding, data_dir=fake_imagenet["data_dir"],
               cache=False, mean=kw["mean"], std=kw["std"])
    evals = [list(data.make_eval_iterator("imagenet2012", **ekw, image_format=f)) for f in ("float32", "uint8")]
    assert len(evals[0]) == len(evals[1]) > 0
    for f, u in zip(*evals):
        assert u["image"].dtype == np.uint8
        real = np.asarray(f["mask"]) > 0  # padding rows (masked out) are zeros in either format
        np.testing.assert_array_equal(np.asarray(u["mask"]), np.asarray(f["mask"]))
        np.testing.assert_allclose(_on_device(u["image"], kw["mean"], kw["std"])[real], np.asarray(f["image"])[real],
                                   rtol=0, atol=1e-6)


def test_model_apply_with_input_normalization_takes_uint8_and_float32(data_dir, sharding):
    """``with_input_normalization``: an apply function fed uint8 digits batches gives what it gives on
    the host-normalized float32 batches (eval split, whole grey levels); float32 passes through
    unchanged; other dtypes fail."""
    import jax.numpy as jnp
    from eca_jax.data.on_device import normalize_images, with_input_normalization
    n_dev = len(jax.devices())
    kw = dict(global_batch_size=2 * n_dev, image_size=8, sharding=sharding, data_dir=data_dir)
    f, u = (next(iter(data.make_eval_iterator("digits", **kw, image_format=fmt))) for fmt in ("float32", "uint8"))

    def model_apply(variables, x, train=False):  # a linear "model": logits (B, 10)
        assert x.dtype == jnp.float32 and not train
        return jnp.einsum("nhwc,hwck->nk", x, variables["w"])

    w = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 8, 3, 10))}
    apply = jax.jit(lambda v, x: with_input_normalization(model_apply, T.IMAGENET_MEAN, T.IMAGENET_STD)(
        v, x, train=False))
    np.testing.assert_allclose(np.asarray(apply(w, u["image"])), np.asarray(apply(w, f["image"])), rtol=0, atol=2e-5)
    assert np.abs(np.asarray(f["image"])).max() > 0.5  # real images, not zeros
    with pytest.raises(TypeError, match="uint8 grey levels"):
        normalize_images(np.zeros((1, 8, 8, 3), np.int32), T.IMAGENET_MEAN, T.IMAGENET_STD)
    with pytest.raises(ValueError, match="image_format"):
        data.make_train_iterator("digits", seed=0, image_format="bfloat16", **kw)
