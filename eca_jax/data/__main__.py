"""Command line: prepare a dataset once, or describe a prepared one.

    python -m eca_jax.data prepare imagenet2012 --manual_dir ~/ilsvrc2012 [--data_dir ~/tensorflow_datasets]
    python -m eca_jax.data prepare digits
    python -m eca_jax.data prepare cifar10 --allow_download      # other tfds datasets (needs internet)
    python -m eca_jax.data info digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eca_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("prepare", "info"):
        p = sub.add_parser(command)
        p.add_argument("name", help="digits, imagenet2012 or a tfds image-classification dataset")
        p.add_argument("--data_dir", default=None, help="default: $ECA_JAX_DATA_DIR or ~/tensorflow_datasets")
        p.add_argument("--manual_dir", default=None,
                       help="imagenet2012: folder with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                            "(default: <data_dir>/downloads/manual)")
        if command == "prepare":
            p.add_argument("--allow_download", action="store_true",
                           help="let tfds download datasets other than digits/imagenet2012")
    args = parser.parse_args(argv)

    from eca_jax import data  # after parsing: --help stays fast

    try:
        if args.command == "prepare":
            builder = data.prepare(args.name, args.data_dir, args.manual_dir, allow_download=args.allow_download)
            print(f"{args.name} is prepared in {builder.data_dir}")
        info = data.dataset_info(args.name, args.data_dir, args.manual_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = dataclasses.asdict(info)
    summary["class_names"] = list(info.class_names[:5]) + (["..."] if len(info.class_names) > 5 else [])
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
