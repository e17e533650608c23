"""eca_jax.predict: top-5 ImageNet classes of generated JPEGs with a random converted model.

Runtime: ~30 s on 2 CPU cores (importing TensorFlow for the eval transform is most of it).
"""
from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from eca_jax import convert
from eca_jax.data import imagenet_class_names, preprocess_for_eval
from eca_jax.predict import main
from torch_reference import build


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised eca_resnet18 (random BN statistics), converted and stored like the CLI does."""
    folder = tmp_path_factory.mktemp("predict")
    model = build("eca_resnet18", seed=21)
    pth = folder / "eca_resnet18.pth"
    torch.save(model.state_dict(), pth)
    converted = convert.convert(pth)
    dst = convert.save(folder / "ckpt", converted.variables, convert.store.metadata_for(converted))
    return dst, pth, converted


def _jpeg(path, seed: int, size=(80, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_top5_names_and_probabilities(checkpoint, tmp_path, capsys):
    dst, _, converted = checkpoint
    jpegs = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    data = [_jpeg(p, seed) for seed, p in enumerate(jpegs)]
    assert main([*map(str, jpegs), "--checkpoint", str(dst), "--image-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "eca_resnet18" and out["image_size"] == 64
    names = imagenet_class_names()
    for raw, result in zip(data, out["results"]):
        x = preprocess_for_eval(raw, 64, None, crop_pct=0.875)[None]
        probs = np.asarray(jax.nn.softmax(converted.module.apply(converted.variables, x, train=False)))[0]
        expected = np.argsort(-probs)[:5]
        top = result["top"]
        assert [t["class"] for t in top] == list(expected)
        assert [t["name"] for t in top] == [names[i] for i in expected]
        np.testing.assert_allclose([t["probability"] for t in top], probs[expected], rtol=1e-5)
        assert all(a["probability"] >= b["probability"] for a, b in zip(top, top[1:]))
    assert out["results"][0]["top"] != out["results"][1]["top"]


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
