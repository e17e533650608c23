"""Train input pipeline throughput on ImageNet-sized JPEGs: images/s, and images/s per CPU core.

Writes ``--num_images`` synthetic 500x375 JPEG "photographs" (smooth colour fields, edges and
fine texture; about the size of an average ImageNet JPEG) into a tfds dataset with tfds' own
writer, then runs ``eca_jax.data.make_train_iterator`` on it exactly as training does for
ImageNet: streamed from the tfds files (``cache=False``), shuffle, decode of only the random
crop window (``tf.image.decode_and_crop_jpeg``), resize to 224, flip, normalize, batch, and the
global ``jax.Array`` (one CPU device here). The pipeline runs with ``--cores`` parallel calls
and threads, and the process is pinned to ``--cores`` CPUs (Linux).

Two figures: images/s (wall clock) and images per CPU-second of the whole process (user+system
time), which stays meaningful on a machine shared with other jobs. Per core = the latter.

In the same run and on the same JPEGs, a plain single-process PIL loader does the torchvision
train recipe (full decode, RandomResizedCrop(224) with scale 0.08..1 and ratio 3/4..4/3, bilinear,
horizontal flip, ToTensor + Normalize: float32 CHW), and torchvision's own transforms when
torchvision is installed; the pipeline's images per CPU-second are printed as a ratio to PIL's.
The pipeline is measured both as the trainer runs it (``image_format="uint8"``: whole grey
levels, normalized inside the jitted step) and as it ships float32 normalized images.

    python experiments/bench_input.py --cores 2 --num_images 200 --repeat 5 --steps 30 --batch_size 64
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np


def synthetic_jpeg(seed: int, h: int = 375, w: int = 500, quality: int = 90) -> bytes:
    """A photograph-like RGB JPEG: gradients, a few hard-edged shapes and pixel-level texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 90 * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y)),
                    128 + 80 * np.cos(2 * np.pi * (rng.uniform(0.5, 3) * x - rng.uniform(0.5, 3) * y)),
                    128 + 70 * np.sin(2 * np.pi * rng.uniform(1, 6) * x * y)], -1)
    for _ in range(6):  # shapes with hard edges
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1.33), rng.uniform(0.05, 0.3)
        inside = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
        img[inside] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 14, img.shape)  # fine texture: makes the file (and its decode) realistic
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_dataset(data_dir: str, num_images: int, repeat: int, num_classes: int = 10) -> float:
    """Writes the tfds dataset ``bench_jpegs`` (split ``train``) unless present; returns the mean JPEG size in KiB.

    The split holds the ``num_images`` JPEGs ``repeat`` times, so that an epoch is long enough for
    the once-per-epoch setup (tfds reader, shuffle buffer) to matter as little as on ImageNet.
    """
    import tensorflow_datasets as tfds

    path = os.path.join(data_dir, "bench_jpegs", "1.0.0")
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        jpegs = [synthetic_jpeg(i) for i in range(num_images)] * repeat
        tfds.dataset_builders.store_as_tfds_dataset(
            name="bench_jpegs", version="1.0.0", data_dir=data_dir,
            features=tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"),
                                                 "label": tfds.features.ClassLabel(num_classes=num_classes)}),
            split_datasets={"train": [(i, {"image": j, "label": i % num_classes}) for i, j in enumerate(jpegs)]})
    builder = tfds.builder_from_directory(path)
    return builder.info.dataset_size / builder.info.splits["train"].num_examples / 1024


def _random_resized_crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop window (scale 0.08..1, log-uniform ratio 3/4..4/3, 10 tries,
    else a center crop at the clamped ratio) as a PIL box (left, top, right, bottom)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    ratio = w / h
    cw, ch = (w, int(round(w / (4 / 3)))) if ratio > 4 / 3 else ((int(round(h * 3 / 4)), h) if ratio < 3 / 4 else (w, h))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def pil_baseline(jpegs: list[bytes], num_images: int, image_size: int) -> tuple[float, float]:
    """The torchvision recipe in plain PIL + numpy, one process, one image at a time: returns
    (wall seconds, CPU seconds) for ``num_images`` images (cycling over ``jpegs``)."""
    from PIL import Image

    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), os.times()
    for i in range(num_images):
        img = Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB")  # full decode
        box = _random_resized_crop_box(rng, *img.size)
        img = img.resize((image_size, image_size), Image.BILINEAR, box=box)  # crop + resize
        if rng.uniform() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0  # ToTensor: float32 CHW in [0, 1]
        x = (x - mean) / std  # Normalize
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def torchvision_baseline(jpegs: list[bytes], num_images: int, image_size: int) -> tuple[float, float] | None:
    """torchvision's own RandomResizedCrop/RandomHorizontalFlip/ToTensor/Normalize on PIL decodes
    (one torch thread); None when torchvision is not installed."""
    try:
        import torch
        from torchvision import transforms as tv
    except ImportError:
        return None
    from PIL import Image

    torch.set_num_threads(1)
    torch.manual_seed(0)
    recipe = tv.Compose([tv.RandomResizedCrop(image_size), tv.RandomHorizontalFlip(), tv.ToTensor(),
                         tv.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    t0, c0 = time.perf_counter(), os.times()
    for i in range(num_images):
        recipe(Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB"))
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def measure_pipeline(data, data_dir: str, args, image_format: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``args.steps`` batches of the ImageNet train pipeline."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))
    it = data.make_train_iterator("bench_jpegs", global_batch_size=args.batch_size, image_size=args.image_size,
                                  seed=0, sharding=sharding, data_dir=data_dir, augment="inception_crop_flip",
                                  cache=False, shuffle_buffer_size=1000, image_format=image_format,
                                  num_parallel_calls=args.num_parallel_calls or args.cores, num_threads=args.cores)
    for _ in range(args.warmup):
        jax.block_until_ready(next(it))
    t0, c0 = time.perf_counter(), os.times()
    for _ in range(args.steps):
        jax.block_until_ready(next(it))
    wall = time.perf_counter() - t0
    c1 = os.times()
    del it
    return wall, (c1.user - c0.user) + (c1.system - c0.system)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs (parallel calls, threads, pinning)")
    parser.add_argument("--num_parallel_calls", type=int, default=None, help="default: --cores")
    parser.add_argument("--num_images", type=int, default=200, help="distinct synthetic JPEGs")
    parser.add_argument("--repeat", type=int, default=5, help="times each JPEG is stored (records = product)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="measured steps (after --warmup steps)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data_dir", default=None, help="where to write the JPEG dataset (default: a temp dir)")
    parser.add_argument("--no_pin", action="store_true", help="do not pin the process to --cores CPUs")
    parser.add_argument("--formats", default="uint8,float32", help="pipeline image formats to measure (comma list)")
    parser.add_argument("--baseline_images", type=int, default=None,
                        help="images for the PIL baselines (default: as many as the pipeline's measurement)")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[:args.cores])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from eca_jax import data

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_input_")
    kib = write_dataset(data_dir, args.num_images, args.repeat)
    images = args.steps * args.batch_size
    print(f"{images} images per measurement ({args.num_images} distinct JPEGs x {args.repeat}) of 500x375 "
          f"(mean JPEG {kib:.0f} KiB) -> {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"cores {args.cores}, num_parallel_calls {args.num_parallel_calls or args.cores}")
    per_cpu = {}
    for image_format in args.formats.split(","):
        wall, cpu = measure_pipeline(data, data_dir, args, image_format)
        per_cpu[f"pipeline {image_format}"] = images / cpu
        print(f"eca_jax pipeline ({image_format}): {images / wall:5.0f} images/s wall "
              f"({images / wall / args.cores:.0f} per core), {cpu:5.1f} CPU-s -> {images / cpu:5.0f} images per CPU-second")
    jpegs = [synthetic_jpeg(i) for i in range(args.num_images)]
    n = args.baseline_images or images
    for name, measure in (("PIL, torchvision recipe", pil_baseline), ("torchvision transforms", torchvision_baseline)):
        result = measure(jpegs, n, args.image_size)
        if result is None:
            print(f"{name}: torchvision is not installed")
            continue
        per_cpu[name] = n / result[1]
        print(f"{name} (1 process): {n / result[0]:5.0f} images/s wall, {result[1]:5.1f} CPU-s -> "
              f"{n / result[1]:5.0f} images per CPU-second")
    pil = per_cpu["PIL, torchvision recipe"]
    for name, value in per_cpu.items():
        if name != "PIL, torchvision recipe":
            print(f"ratio {name} / PIL: {value / pil:.2f}x per CPU-second")


if __name__ == "__main__":
    main()
