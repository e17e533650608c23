"""Where the time of one eca_jax step goes on XLA:CPU: per-HLO-op thread time from a jax.profiler trace.

    python experiments/profile_step.py --model eca_mobilenet_v2 --mode train --top 25

Builds the same jitted step as experiments/benchmark.py (same weights and batch; training: the
trainer's own step and optimizer), with the implementation switches of ``--impl``, runs
it ``--steps`` times under ``jax.profiler.trace``, reads the trace back with
``jax.profiler.ProfileData`` and sums the duration of every XLA op (fusion, dot, convolution,
...) over all worker threads. Each op is labelled with what its optimized HLO computes (dots,
convolutions, reductions, elementwise) so that the table answers "which kind of work is slow".
Used for experiments/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments"), os.path.join(ROOT, "tests")]


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind of work} for every instruction of an optimized HLO module's text.

    A fusion's kind is read from the computation it calls: dot, convolution, reduction,
    copy/transpose or elementwise (checked in that order)."""
    bodies: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(.*\) -> .*\{$", line)
        if header:
            current = header.group(1)
            bodies[current] = ""
        elif line == "}":
            current = None
        elif current:
            bodies[current] += line + "\n"
    instruction = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\((.*)$", re.M)
    kinds = {}
    for body in bodies.values():
        for name, opcode, rest in instruction.findall(body):
            called = re.search(r"calls=%([\w.\-]+)", rest)
            ops = set(re.findall(r" = (?:\(.*?\)|\S+) ([\w\-]+)\(", bodies.get(called.group(1), ""))) if called \
                else set()
            ops.add(opcode)
            for kind, members in (("dot", {"dot"}), ("convolution", {"convolution"}),
                                  ("reduction", {"reduce", "reduce-window", "select-and-scatter", "scatter"}),
                                  ("copy/transpose", {"copy", "transpose"})):
                if ops & members:
                    break
            else:
                kind = "elementwise"
            kinds[name] = kind
    return kinds


def hlo_op_layers(hlo_text: str) -> dict[str, str]:
    """{instruction name: "fwd|bwd <layer>"} from the op_name metadata, the block index removed
    (``.../transpose(jvp(MobileNetV2))/features.2/conv.0.1/mul`` -> ``bwd conv.0.1``)."""
    out = {}
    for name, op_name in re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text, re.M):
        parts = op_name.split("/")
        direction = "bwd" if any(p.startswith("transpose(") for p in parts) else "fwd"
        modules = [p for p in parts[1:-1] if not p.startswith(("jit(", "jvp(", "transpose(")) and "(" not in p]
        layer = modules[-1] if modules else parts[-1]
        layer = re.sub(r"^(features|layer\d)\.\d+$", "block", layer)
        out[name] = f"{direction} {layer}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="eca_resnet50")
    p.add_argument("--mode", default="train", choices=("infer", "train"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--impl", default="", help="implementation switches, e.g. 'pointwise_as_dot=false' "
                   "(eca_jax.kernels.ImplOptions; default: every fast path)")
    p.add_argument("--by-layer", action="store_true",
                   help="also sum the time per (direction, layer name without its block index)")
    args = p.parse_args()

    import jax
    import benchmark as bm
    from jax.profiler import ProfileData

    setup = bm.Setup(args.batch_size, args.image_size, args.dtype, "cpu", impl=args.impl)
    spec = bm.MODELS[args.model]
    c = bm.jax_contender(args.model, spec, spec.torch_builder(0), bm.make_batch(setup, 1000), setup, args.mode)
    c.step()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                c.step()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        profile = ProfileData.from_file(path)
    kinds = hlo_op_kinds(c.compiled.as_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for plane in profile.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if "python" in line.name.lower():
                continue
            for event in line.events:
                per_op[event.name] += event.duration_ns / 1e6 / args.steps
    ops = {k: v for k, v in per_op.items() if k in kinds} or per_op
    total = sum(ops.values())
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, ms in ops.items():
        by_kind[kinds.get(name, "?")] += ms
    print(f"{args.model} {args.mode}: {total:.0f} thread-ms per step over {len(ops)} ops")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<16} {ms:8.1f} ms  {100 * ms / total:5.1f}%")
    layers = hlo_op_layers(c.compiled.as_text())
    if args.by_layer:
        per_layer: dict[tuple, float] = collections.defaultdict(float)
        for name, ms in ops.items():
            per_layer[(layers.get(name, "?"), kinds.get(name, "?"))] += ms
        print("by layer (direction, layer, kind):")
        for (layer, kind), ms in sorted(per_layer.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ms:8.1f} ms  {layer:<24} {kind}")
    print(f"top {args.top} ops:")
    layers = hlo_op_layers(c.compiled.as_text())
    for name, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {ms:8.1f} ms  {kinds.get(name, '?'):<15} {name:<32} {layers.get(name, '?')}")


if __name__ == "__main__":
    main()
