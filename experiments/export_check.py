"""Export the trainer's train and eval steps for TPU, CUDA and CPU: the full matrix of issue 16.

    python experiments/export_check.py                      # 3 models x 2 dtypes, 64 px, batch 16
    python experiments/export_check.py --models eca_resnet50 --dtypes bfloat16 --image_size 224 \
        --batch_size 256 --out /tmp/exported                 # also writes the serialized exports

For each model and dtype: the trainer's plan on a (data=4, fsdp=2) mesh of 8 CPU devices (set
here with XLA_FLAGS before jax is imported), the jitted steps traced once, then exported per
platform (op counts from the StableHLO: XLA convolutions, grouped ones, dots, pooling) and once
for all three platforms (the artifact, written with ``--out``). Prints one line per export with
its time. Exits 1 if the CPU lowering holds XLA's depthwise convs or max-pool backward, or a
TPU/CUDA lowering no more XLA convolutions/pooling than the CPU one (a CPU rewrite leaked).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from eca_jax.train import export as export_lib  # noqa: E402
from eca_jax.train.loop import jitted_steps  # noqa: E402
from eca_jax.train.config import make_config  # noqa: E402

PLATFORMS = ("cpu", "tpu", "cuda")


def check_one(model: str, dtype: str, args: argparse.Namespace) -> bool:
    """Exports one model/dtype; prints op counts and times; False if a CPU kernel leaked."""
    config = make_config(model=model, dataset="imagenet2012", image_size=args.image_size,
                         batch_size=args.batch_size, total_epochs=1, dtype=dtype,
                         mesh=dict(data=args.data, fsdp=args.fsdp), fsdp_min_size=args.fsdp_min_size)
    t0 = time.perf_counter()
    plan = export_lib.plan_without_data(config)
    fns = dict(zip(("train", "eval"), jitted_steps(plan)))
    inputs = export_lib.abstract_inputs(plan)
    ok = True
    print(f"{model} {dtype}: plan {time.perf_counter() - t0:.1f}s", flush=True)
    for step in ("train", "eval"):
        counts = {}
        for platforms in [(p,) for p in PLATFORMS] + [PLATFORMS]:
            t = time.perf_counter()
            exported = jax.export.export(fns[step], platforms=platforms)(*inputs[step])
            counts[platforms] = export_lib.count_ops(exported)
            print(f"  {step:5s} {','.join(platforms):13s} {time.perf_counter() - t:6.1f}s {counts[platforms]}", flush=True)
            if args.out and len(platforms) > 1:
                os.makedirs(args.out, exist_ok=True)
                path = os.path.join(args.out, f"{model}_{dtype}_{step}.jax_exported")
                with open(path, "wb") as f:
                    f.write(exported.serialize())
        cpu = counts[("cpu",)]
        # CPU: no XLA depthwise conv, no max-pool select_and_scatter (the rewrites replace them);
        # TPU/CUDA: more XLA convolutions / pooling ops than the CPU (the rewrites are absent).
        xla_ops = lambda c: c["convolution"] + c["reduce_window"] + c["select_and_scatter"]  # noqa: E731
        leaks = [p for p in ("tpu", "cuda") if xla_ops(counts[(p,)]) <= xla_ops(cpu)]
        if cpu["grouped_convolution"] or cpu["select_and_scatter"] or leaks:
            print(f"  CPU KERNEL CHOICE WRONG: {step} cpu {cpu}; no XLA ops added for {leaks}")
            ok = False
    print(f"{model} {dtype}: {time.perf_counter() - t0:.1f}s in all", flush=True)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["eca_resnet50", "ecaresnet50d", "eca_mobilenet_v2"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--data", type=int, default=4)
    p.add_argument("--fsdp", type=int, default=2)
    p.add_argument("--fsdp_min_size", type=int, default=2 ** 14)
    p.add_argument("--out", default="", help="folder for the serialized multi-platform exports")
    args = p.parse_args(argv)
    ok = all([check_one(m, d, args) for m in args.models for d in args.dtypes])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
