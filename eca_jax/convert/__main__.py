"""Command line: PyTorch weights -> converted Flax checkpoint, and back.

    python -m eca_jax.convert eca_resnet50_k3557.pth.tar ckpt/eca_resnet50 --verify
    python -m eca_jax.convert model.safetensors ckpt/ecaresnet50d --verify          # timm, no torch needed
    python -m eca_jax.convert eca_resnet50_k3557.pth.tar ckpt/eca_r50_10cls --num-classes 10
    python -m eca_jax.convert ckpt/eca_resnet50 eca_resnet50.pth --to torch --verify
    python -m eca_jax.convert workdir/ my_model.safetensors --to torch      # a training run's latest step
    python -m eca_jax.convert workdir/ my_model_ema.pth --to torch --ema    # ... its EMA weights

Exit status: 0 done, 1 the conversion or the verification failed (nothing written), 2 bad
arguments (e.g. an unknown --arch).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

from eca_jax.checkpoints import converted as converted_dirs
from eca_jax.checkpoints import load, torch_files
from eca_jax.checkpoints.errors import CheckpointError, ConversionError
from eca_jax.checkpoints.torch_import import convert
from eca_jax.convert.api import metadata_for, to_torch_state_dict
from eca_jax.convert.verify import verify
from eca_jax.models import get_model_cfg
from eca_jax.models.registry import resolve_model_name

USAGE_ERROR, FAILED = 2, 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eca_jax.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("src", help="PyTorch file (.pth.tar/.pth/.pt/.bin/.safetensors); with --to torch: a "
                               "converted directory or a training workdir / checkpoint step")
    p.add_argument("dst", help="output directory (Flax) or file (.pth, .safetensors with --to torch); must not exist")
    p.add_argument("--arch", help="force this registered model (default: inferred from the keys and shapes)")
    p.add_argument("--num-classes", type=int, help="new classifier size (keeps the backbone, new random head)")
    p.add_argument("--to", choices=("flax", "torch"), default="flax", help="direction (default: flax)")
    p.add_argument("--format", choices=("pth", "safetensors"), help="--to torch file format (default: from DST's name)")
    p.add_argument("--ema", action="store_true", help="--to torch from a training run: export its exponential "
                   "moving average of the weights (trained with config.ema_decay)")
    p.add_argument("--verify", action="store_true", help="compare logits of both frameworks on a random batch")
    p.add_argument("--verify-size", type=int, default=224, help="image size for --verify (default 224)")
    p.add_argument("--verify-batch", type=int, default=2, help="batch size for --verify (default 2)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative error of the logits --verify accepts (default 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST (only once everything succeeded)")
    return p


def _check_arch(name: Optional[str]) -> None:
    if name is None:
        return
    resolve_model_name(name)   # ValueError naming the closest registered names


def _report_verify(result: dict, tolerance: float) -> None:
    print(f"verify: relative error of the logits ||flax - torch|| / ||torch|| = {result['rel_err']:.3e} "
          f"(max abs diff {result['max_abs']:.3e}; batch {result['batch']} at {result['size']}x{result['size']}, "
          f"top-1 {'agrees' if result['top1_agree'] else 'DIFFERS'})")
    if not result["rel_err"] <= tolerance:
        raise ConversionError(f"--verify failed: relative error {result['rel_err']:.3e} > tolerance {tolerance:g}; "
                              "nothing written.")


def to_flax(args: argparse.Namespace) -> None:
    if os.path.isdir(args.src):
        raise ConversionError(f"{args.src} is a directory; to export a Flax checkpoint to PyTorch add --to torch.")
    converted_dirs.check_destination(args.dst, args.overwrite)
    start = time.perf_counter()
    converted = convert(args.src, args.arch, num_classes=args.num_classes)
    seconds = time.perf_counter() - start
    meta = metadata_for(converted)
    arch = converted.arch
    print(f"source: {meta['source']} (sha256 {meta['source_sha256'][:16]}...)")
    print(f"architecture: {arch.name}{' ' + str(arch.kwargs) if arch.kwargs else ''}, {arch.num_classes} classes, "
          f"layout {arch.layout}; ECA k: {meta['eca_k_per_stage'] or 'none'}")
    for note in converted.notes:
        print(f"note: {note}")
    if args.verify:
        state_dict = converted.state_dict
        if arch.file_classes != arch.num_classes:   # compare the backbone through the new Flax head
            head = to_torch_state_dict(converted.module, converted.variables, layout="timm")
            state_dict = {**{k: v for k, v in state_dict.items() if not k.startswith(arch.head + ".")},
                          **{k: v for k, v in head.items() if k.startswith(arch.head + ".")}}
        result = _verify(converted.module, converted.variables, state_dict, args)
        meta["verify"] = result
    path = converted_dirs.save(args.dst, converted.variables, meta, overwrite=args.overwrite)
    print(f"wrote {path} (converted in {seconds:.1f} s)")


def _verify(module, variables, state_dict, args) -> dict:
    result = verify(module, variables, state_dict, size=args.verify_size, batch=args.verify_batch)
    _report_verify(result, args.tolerance)
    return result


def to_torch(args: argparse.Namespace) -> None:
    dst = os.path.abspath(args.dst)
    if os.path.lexists(dst) and not args.overwrite:
        raise ConversionError(f"{dst} already exists; choose another destination or pass --overwrite.")
    if not os.path.isdir(args.src):
        raise ConversionError(f"{args.src}: with --to torch, SRC must be a directory written by eca_jax.convert "
                              "or a training workdir / checkpoint step.")
    try:
        loaded = load(args.src, ema=args.ema)
    except (FileNotFoundError, CheckpointError) as e:
        raise ConversionError(str(e)) from None
    module, variables, name = loaded.module, loaded.variables, loaded.signature.model
    if args.arch is not None and args.arch.split(".")[0] != name:
        raise ConversionError(f"{args.src} holds {name}, not --arch {args.arch}.")
    state_dict = to_torch_state_dict(module, variables, layout=get_model_cfg(name).torch_layout)
    if args.verify:
        _verify(module, variables, state_dict, args)
    torch_files.write_state_dict(state_dict, dst, torch_files.format_for(dst, args.format))
    print(f"wrote {dst} ({name}, {len(state_dict)} entries, {get_model_cfg(name).torch_layout} layout)")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_arch(args.arch)
    except ValueError as e:
        print(f"error: --arch: {e}", file=sys.stderr)
        return USAGE_ERROR
    if args.num_classes is not None and args.num_classes < 1:
        print(f"error: --num-classes must be >= 1, got {args.num_classes}", file=sys.stderr)
        return USAGE_ERROR
    try:
        (to_torch if args.to == "torch" else to_flax)(args)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
