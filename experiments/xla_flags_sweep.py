"""Times one eca_jax step under several XLA_FLAGS settings or implementation switches, interleaved.

XLA reads its flags once per process, so every setting runs in its own worker process (compiled
once); the parent asks them in turn (A, B, C, A, B, C, ...) for one timed sample, so that load
from other jobs on the machine hits every setting alike. ``--torch`` adds PyTorch eager (run
in the parent) as a reference. Only one contender runs at a time. ``--impl label:switches`` builds
that setting's model with ``eca_jax.kernels.ImplOptions.parse(switches)`` (code variants: the A/B
baselines of experiments/PERFORMANCE.md). Used for PERFORMANCE.md.

    python experiments/xla_flags_sweep.py --model eca_resnet50 --mode infer \\
        --setting default= --setting onednn=--xla_cpu_use_onednn=true --torch
    python experiments/xla_flags_sweep.py --model eca_resnet50 --mode train \\
        --setting fused= --setting autodiff= --impl autodiff:hand_written_backward=false
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments"), os.path.join(ROOT, "tests")]


def _worker(conn, flags: str, env: dict, model: str, mode: str, batch: int, size: int, dtype: str,
            min_sample_s: float, impl: str = "") -> None:
    os.environ.update(env)
    os.environ["XLA_FLAGS"] = flags
    os.environ["JAX_PLATFORMS"] = "cpu"
    import benchmark as bm
    setup = bm.Setup(batch, size, dtype, "cpu", impl=impl)
    spec = bm.MODELS[model]
    torch_model = spec.torch_builder(0)
    c = bm.jax_contender(model, spec, torch_model, bm.make_batch(setup, 1000), setup, mode)
    bm.warm_up([c], min_sample_s, 1)
    conn.send({"compile_s": c.compile_s, "iters": c.iters})
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            return
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(c.iters):
            c.step()
        conn.send(((time.perf_counter() - t0) / c.iters, (time.process_time() - c0) / c.iters))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="eca_resnet50")
    p.add_argument("--mode", default="infer", choices=("infer", "train"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--setting", action="append", required=True, help="label=XLA flags (repeatable)")
    p.add_argument("--env", action="append", default=[], help="label:VAR=value extra env for one setting")
    p.add_argument("--impl", action="append", default=[], dest="impls",
                   help="label:switches -- that setting's eca_jax.kernels.ImplOptions (code variants, e.g. "
                        "'autodiff:hand_written_backward=false' or 'xla:pointwise_as_dot=0,depthwise_shifted=0')")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-sample-s", type=float, default=1.0)
    p.add_argument("--torch", action="store_true", help="add PyTorch eager (in the parent) as a reference")
    args = p.parse_args()
    settings = [s.split("=", 1) for s in args.setting]
    envs: dict[str, dict] = {}
    for e in args.env:
        label, kv = e.split(":", 1)
        k, v = kv.split("=", 1)
        envs.setdefault(label, {})[k] = v
    from eca_jax.kernels import ImplOptions   # checks the switches here, before any worker starts
    impls = dict(e.split(":", 1) for e in args.impls)
    labels_given = {label for label, _ in settings}
    for label, switches in impls.items():
        if label not in labels_given:
            p.error(f"--impl {label}:...: no --setting named {label!r}")
        try:
            ImplOptions.parse(switches)
        except ValueError as e:
            p.error(f"--impl {label}: {e}")
    ctx = mp.get_context("spawn")
    workers = {}
    for label, flags in settings:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, flags, envs.get(label, {}), args.model, args.mode,
                                                 args.batch_size, args.image_size, args.dtype, args.min_sample_s,
                                                 impls.get(label, "")))
        proc.start()
        info = parent.recv()
        print(f"{label}: compiled in {info['compile_s']:.1f} s, {info['iters']} steps/sample", flush=True)
        workers[label] = (proc, parent)
    ref = None
    if args.torch:
        import torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        import benchmark as bm
        setup = bm.Setup(args.batch_size, args.image_size, args.dtype, "cpu")
        tm = bm.MODELS[args.model].torch_builder(0)
        ref = bm.torch_contender(args.model, tm, bm.make_batch(setup, 1000), setup, args.mode, compiled=False)
        bm.warm_up([ref], args.min_sample_s, 1)
    samples: dict[str, list] = {label: [] for label, _ in settings}
    if ref:
        samples["torch_eager"] = []
    labels = list(samples)
    cpu: dict[str, list] = {label: [] for label in labels}
    for r in range(args.repeats):
        for i in range(len(labels)):
            label = labels[(i + r) % len(labels)]
            if label == "torch_eager":
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(ref.iters):
                    ref.step()
                samples[label].append((time.perf_counter() - t0) / ref.iters)
                cpu[label].append((time.process_time() - c0) / ref.iters)
            else:
                workers[label][1].send("go")
                wall, cpu_s = workers[label][1].recv()
                samples[label].append(wall)
                cpu[label].append(cpu_s)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms (cpu {cpu[k][-1] * 1e3:.0f})"
                                             for k, v in samples.items()), flush=True)
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join(30)
    base = statistics.median(samples[labels[0]])
    result = {}
    for k, v in samples.items():
        med = statistics.median(v)
        result[k] = med
        print(f"{k:>20}: median {med * 1e3:8.1f} ms  ({args.batch_size / med:6.2f} img/s)  "
              f"time vs {labels[0]}: {med / base:.3f}  min {min(v) * 1e3:.1f} max {max(v) * 1e3:.1f}  "
              f"cpu-s/step median {statistics.median(cpu[k]):.3f} min {min(cpu[k]):.3f}")
    print(json.dumps({"model": args.model, "mode": args.mode, "median_s": result}))


if __name__ == "__main__":
    main()
