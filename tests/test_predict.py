"""eca_jax.predict: top-5 ImageNet classes of generated JPEGs with a random converted model.

References independent of the code under test: PIL for the preprocessing (torchvision's eval
transform written out) and the PyTorch model (tests/torch_reference.py) for the probabilities.

Runtime: ~30 s on 2 CPU cores (importing TensorFlow for the eval transform is most of it).
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from eca_jax import convert
from eca_jax.data import imagenet_class_names
from eca_jax.models import get_model_cfg
from eca_jax.predict import load_images, main
from torch_reference import build


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised eca_resnet18 (random BN statistics), converted and stored like the CLI does."""
    folder = tmp_path_factory.mktemp("predict")
    model = build("eca_resnet18", seed=21)
    pth = folder / "eca_resnet18.pth"
    torch.save(model.state_dict(), pth)
    converted = convert.convert(pth)
    dst = convert.save(folder / "ckpt", converted.variables, convert.metadata_for(converted))
    return dst, pth, converted


def _jpeg(path, seed: int, size=(80, 60)) -> bytes:
    """A JPEG of random 5x5-pixel blocks (sharp edges: bilinear and bicubic resizes differ on it)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _pil_eval_crop(path, size: int, crop_pct: float, interpolation: str) -> np.ndarray:
    """torchvision's eval transform with PIL, written out: (size, size, 3) grey levels (float64).

    Resize the shorter side to floor(size / crop_pct) (longer side int(short * long / short_side)),
    PIL resampling, then a center crop with offsets int(round((H - size) / 2)).
    """
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = math.floor(size / crop_pct)
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    image = image.resize(new, resample)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.float64)


def _normalize(grey: np.ndarray, cfg) -> np.ndarray:
    return ((grey / 255.0 - np.asarray(cfg.mean)) / np.asarray(cfg.std)).astype(np.float32)


def _grey_levels(x: np.ndarray, cfg) -> np.ndarray:
    return (np.asarray(x, np.float64) * np.asarray(cfg.std) + np.asarray(cfg.mean)) * 255.0


def _centered(log_probs: np.ndarray) -> np.ndarray:
    """log-probabilities minus their mean over classes == the logits minus their mean."""
    return log_probs - log_probs.mean(axis=-1, keepdims=True)


def _torch_logits(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """The PyTorch model's logits (float64) on NHWC float32 images."""
    with torch.no_grad():
        return model.eval()(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).double().numpy()


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_preprocessing_matches_pil(tmp_path, interpolation):
    """predict's image preprocessing against PIL, in grey levels (landscape, portrait, square).

    Measured (AMD EPYC; TF's and PIL's JPEG decoders and rounding): mean |difference| 0.18 .. 0.21
    grey levels, bound 0.5 (against the other interpolation: 2.9 .. 3.6). Bilinear: at most 1
    level everywhere (measured 1). Bicubic: PIL rounds and clips to uint8 between its horizontal
    and vertical passes, so next to 0/255 overshoots 0.13% .. 0.23% of the pixels differ by 4 .. 10
    levels; bound: under 1% of the pixels off by more than 1 level (other interpolation: 58 .. 72%).
    """
    cfg = get_model_cfg("eca_resnet18")
    for seed, size in enumerate([(80, 60), (60, 80), (95, 95)]):
        path = tmp_path / f"{seed}.jpg"
        _jpeg(path, seed, size)
        got = _grey_levels(load_images([str(path)], 64, cfg.crop_pct, interpolation, cfg.mean, cfg.std)[0], cfg)
        diff = np.abs(got - _pil_eval_crop(path, 64, cfg.crop_pct, interpolation))
        assert diff.mean() < 0.5, (size, diff.mean())
        if interpolation == "bilinear":
            assert diff.max() <= 1 + 1e-3, (size, diff.max())
        else:
            assert np.mean(diff > 1 + 1e-3) < 0.01, (size, np.mean(diff > 1 + 1e-3))


def test_top5_names_and_probabilities(checkpoint, tmp_path, capsys):
    """The CLI's probabilities (all 1000) against the PyTorch model of the same weights.

    Compared as logits up to a constant (log-probabilities minus their mean). On predict's own
    preprocessed images: float32 parity (measured 4.4e-7 .. 4.7e-7 (AMD EPYC), bound 5e-6). On
    PIL's preprocessing (about 1 grey level apart, see above): measured 2.6e-3 .. 3.2e-3, bound
    1e-2; the same top-5 classes.
    """
    dst, pth, _ = checkpoint
    torch_model = build("eca_resnet18")
    torch_model.load_state_dict(torch.load(pth))
    cfg = get_model_cfg("eca_resnet18")
    jpegs = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for seed, path in enumerate(jpegs):
        _jpeg(path, seed)
    assert main([*map(str, jpegs), "--checkpoint", str(dst), "--image-size", "64", "--json", "--top", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "eca_resnet18" and out["image_size"] == 64
    names = imagenet_class_names()
    ours = load_images(list(map(str, jpegs)), 64, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)
    pil = np.stack([_normalize(_pil_eval_crop(p, 64, cfg.crop_pct, cfg.interpolation), cfg) for p in jpegs])
    for result, same_input, pil_input in zip(out["results"], _torch_logits(torch_model, ours),
                                              _torch_logits(torch_model, pil)):
        top = result["top"]
        assert sorted(t["class"] for t in top) == list(range(1000))
        assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))
        assert [t["name"] for t in top[:5]] == [names[t["class"]] for t in top[:5]]
        log_probs = np.empty(1000)
        log_probs[[t["class"] for t in top]] = np.log([t["probability"] for t in top])
        assert _relative_error(_centered(log_probs), _centered(same_input)) < 5e-6
        assert _relative_error(_centered(log_probs), _centered(pil_input)) < 1e-2
        assert [t["class"] for t in top[:5]] == list(np.argsort(-pil_input)[:5])
    assert out["results"][0]["top"][:5] != out["results"][1]["top"][:5]


def test_table_output_and_pytorch_file(checkpoint, tmp_path, capsys):
    _, pth, _ = checkpoint
    jpeg = tmp_path / "c.jpg"
    _jpeg(jpeg, 3)
    assert main([str(jpeg), "--checkpoint", str(pth), "--image-size", "64", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model eca_resnet18, 64x64") and lines[1] == str(jpeg)
    assert [line.split(".")[0].strip() for line in lines[2:]] == ["1", "2", "3"]


def test_bad_image_is_named(checkpoint, tmp_path, capsys):
    dst, _, _ = checkpoint
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert main([str(bad), "--checkpoint", str(dst), "--image-size", "64"]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), "--checkpoint", str(dst)]) == 1
    assert "missing.png: no such image file" in capsys.readouterr().err
