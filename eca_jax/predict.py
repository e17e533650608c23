"""Classify images with a converted or trained model: the top-k classes with their probabilities.

    python -m eca_jax.predict cat.jpg dog.png --checkpoint ckpt/eca_resnet50
    python -m eca_jax.predict cat.jpg --checkpoint eca_resnet50_k3557.pth.tar      # a PyTorch file directly
    python -m eca_jax.predict cat.jpg --checkpoint workdir/ --labels classes.txt   # a fine-tuned run
    python -m eca_jax.predict cat.jpg --checkpoint ckpt/ecaresnet50d --json
    python -m eca_jax.predict cat.jpg --checkpoint pretrained://ecaresnet50d       # published weights (eca_jax.pretrained)

Preprocessing is the eval transform of the model's config (``eca_jax.data.preprocess_for_eval``
with ``eca_jax.data.transforms.resolve_eval_settings``): the size its weights are evaluated at
(``test_input_size``, else ``input_size``), the shorter side resized to floor(size / crop) with
the crop that goes with that size (``test_crop_pct`` at the test size, else ``crop_pct``), center
crop, the config's interpolation and mean/std; ``--image-size`` overrides the size. Class names: ImageNet's 1,000 names from tfds'
metadata (offline) for 1000-class models, ``--labels`` (one name per line) otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np


def class_names(num_classes: int, labels: Optional[str] = None) -> list[str]:
    """Names for the model's classes: ``labels`` file lines, ImageNet's names for 1000 classes, else "class i"."""
    if labels is not None:
        with open(labels) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f"--labels {labels} has {len(names)} names but the model has {num_classes} classes.")
        return names
    if num_classes == 1000:
        from eca_jax.data import imagenet_class_names  # noqa: PLC0415
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def load_images(paths: Sequence[str], image_size: int, crop_pct: Optional[float], interpolation: str,
                mean: Sequence[float], std: Sequence[float], *, resize_size: Optional[int] = None) -> np.ndarray:
    """Files -> float32 (N, image_size, image_size, 3), the model config's eval preprocessing.

    The shorter side is resized to ``resize_size`` if given, else ``floor(image_size / crop_pct)``."""
    from eca_jax.data import preprocess_for_eval  # noqa: PLC0415
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such image file.")
        with open(path, "rb") as f:
            images.append(preprocess_for_eval(f.read(), image_size, resize_size,
                                              crop_pct=None if resize_size is not None else crop_pct,
                                              interpolation=interpolation, mean=mean, std=std, name=path))
    return np.stack(images)


def predict(module, variables, images: np.ndarray, top: int = 5, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, top), probabilities (N, top)) of the softmax over the model's logits, best first."""
    apply = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x, train=False), axis=-1))
    probs = np.concatenate([np.asarray(apply(variables, images[i:i + batch_size]))
                            for i in range(0, len(images), batch_size)])
    top = min(top, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top]
    return order, np.take_along_axis(probs, order, axis=-1)


def _torch_verify():
    """--verify's logits check for a first conversion of published weights (None without torch)."""
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        return None
    from eca_jax.convert.verify import verify  # noqa: PLC0415
    return verify


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eca_jax.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument("--checkpoint", required=True,
                        help="a directory written by eca_jax.convert, a training workdir / step, a PyTorch file, "
                             "or pretrained://NAME[.TAG] (published weights, downloaded and cached once)")
    parser.add_argument("--arch", help="force the architecture of a PyTorch file (default: inferred)")
    parser.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    parser.add_argument("--image-size", type=int,
                        help="input size (default: the model config's test_input_size, else input_size)")
    parser.add_argument("--labels", help="class names, one per line (default: ImageNet's for 1000 classes)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from eca_jax.checkpoints import CheckpointError, load  # noqa: PLC0415 -- jax after argparse
    from eca_jax.data.transforms import resolve_eval_settings  # noqa: PLC0415
    from eca_jax import pretrained  # noqa: PLC0415
    try:
        if pretrained.is_spec(args.checkpoint):
            loaded = pretrained.load_spec(args.checkpoint, verify=_torch_verify())
            model_cfg = loaded.model_cfg     # the input settings of these weights
        else:
            loaded = load(args.checkpoint, args.arch)
            model_cfg = loaded.signature.model_cfg
        module, variables, name = loaded.module, loaded.variables, loaded.signature.model
        settings = resolve_eval_settings(args.image_size, model_cfg=model_cfg)
        size = settings.image_size
        images = load_images(args.images, size, None, settings.interpolation, settings.mean, settings.std,
                             resize_size=settings.resize_size)
        names = class_names(module.num_classes, args.labels)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    indices, probs = predict(module, variables, images, args.top, args.batch_size)
    results = [{"image": path, "top": [{"class": int(i), "name": names[i], "probability": float(p)}
                                       for i, p in zip(row_i, row_p)]}
               for path, row_i, row_p in zip(args.images, indices, probs)]
    if args.json:
        print(json.dumps({"model": name, "image_size": size, "results": results}, indent=1))
        return 0
    print(f"model {name}, {size}x{size} ({settings.interpolation}, shorter side resized to {settings.resize_size})")
    for result in results:
        print(result["image"])
        for rank, entry in enumerate(result["top"], 1):
            print(f"  {rank}. {entry['probability']:.4f}  {entry['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
