"""eca_jax against PyTorch (eager and torch.compile): same architecture, same weights, same batch.

For every model and mode (``infer``: forward in eval mode; ``train``: forward in train mode
(BatchNorm on batch statistics), cross-entropy, backward, SGD-momentum update) the benchmark builds
the PyTorch reference model of ``tests/torch_reference.py`` with random weights, copies those
weights into the eca_jax model (Flax paths == PyTorch state-dict keys), checks that both give the
same logits, then times the contenders:

* ``jax``: ``jax.jit``; compile time (lower + compile) and the first call are reported separately.
  Training times the trainer's own step -- ``eca_jax.train.step.make_train_step`` with the
  optimizer ``eca_jax.train.optim.make_optimizer`` builds from the default config
  (``eca_jax.train.config.make_config``: the release's recipe, SGD momentum 0.9 with coupled weight
  decay 1e-4 and the step schedule, at learning rate ``Setup.lr``), jitted with its ``TrainState``
  donated as ``eca_jax.train`` does -- so the figure is what ``python -m eca_jax.train`` runs;
* ``torch_eager``: plain PyTorch (``torch.inference_mode`` for inference; training with
  ``torch.optim.SGD`` set to the same recipe);
* ``torch_compile``: ``torch.compile(model)`` (default mode; the optimizer step stays eager);
  its compile time (first calls) is reported separately. ``--torch-compile auto`` (default)
  enables it on GPU only: on a 2-core CPU inductor needs minutes per model (see PERFORMANCE.md).

Timing: every contender of a model family (ECA model and its plain twin, every framework) is
warmed up, then they run round-robin -- jax, torch, jax, torch... with the order rotated each
round -- so machine noise hits all of them alike; each sample runs enough steps to last
``--min-sample-s``; the figure is the median over ``--repeats`` samples. Ratios (jax / torch,
ECA / plain) come from the same run.

Peak memory: CPU -- the process RSS high-water mark above the level before one step (sampled
every 2 ms after returning freed heap memory to the OS with malloc_trim; the first call, which
includes compilation, is excluded). JAX also reports XLA's own buffer assignment (arguments +
outputs + temporaries of the compiled step). GPU -- ``torch.cuda.max_memory_allocated`` and the
XLA buffer assignment.

Memory allocator: by default the script restarts itself under ``eca_jax.perf.MALLOC_TUNABLES``
(glibc keeps freed memory in one heap on transparent huge pages; ``--malloc default`` leaves glibc
alone); both frameworks run in that one process. With glibc's defaults XLA:CPU re-faults the
temporaries of every step page by page, ~0.5 s of kernel time per ResNet-50 training step
(eca_jax.perf, experiments/PERFORMANCE.md).

Threads: PyTorch uses ``torch.set_num_threads(--threads)``; XLA:CPU uses one intra-op thread per
CPU the process may run on, so ``--threads`` (default: all CPUs) pins the process to that many
CPUs (``os.sched_setaffinity``) before jax starts, which gives both frameworks the same cores.

XLA flags: ``--xla-preset`` (default ``none``: XLA's defaults) or ``--xla-flags '...'`` are added to
``XLA_FLAGS`` before jax is imported; see eca_jax/perf.py and experiments/PERFORMANCE.md.

Implementation switches: ``--impl 'name=false,...'`` is the trainer's ``config.impl``: the eca_jax
models are built with ``eca_jax.kernels.ImplOptions.parse(...)`` (e.g. ``hand_written_backward=false``: the unfused
BatchNorm under autodiff); the default is every fast path.

    python experiments/benchmark.py                                   # CPU defaults, < 10 min on 2 cores
    python experiments/benchmark.py --models eca_resnet50,resnet50 --modes train --repeats 7
    python experiments/benchmark.py --device gpu --batch-size 256 --dtype bf16   # torch: AMP, channels_last

Writes experiments/results/benchmark_<date>_<device>.csv and .md (the markdown table, also printed).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import dataclasses
import datetime as _dt
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
FRAMEWORKS = ("jax", "torch_eager", "torch_compile")
MODES = ("infer", "train")


# ---------------------------------------------------------------------------------------------
# Models: benchmark name -> eca_jax model + PyTorch reference model of the same architecture
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One architecture in both frameworks.

    jax_name/jax_kwargs: ``eca_jax.models.create_model`` arguments; torch_builder: a function
    returning the (randomly initialised) PyTorch reference module; plain: the benchmark name of
    the same architecture without attention (None for plain models) -- the ECA overhead is
    measured against it.
    """
    jax_name: str
    torch_builder: Callable[[int], Any]
    jax_kwargs: tuple = ()
    plain: Optional[str] = None


def _reference(name: str, **kw: Any) -> Callable[[int], Any]:
    def build(seed: int):
        import torch_reference
        return torch_reference.build(name, seed=seed, **kw)
    return build


def _tiny_resnet(attn: bool) -> Callable[[int], Any]:
    """ResNet-10 (basic blocks 1-1-1-1): a quick architecture for tests of this script."""
    def build(seed: int):
        import torch_reference as tr
        gate = (lambda stage, ch: tr.EcaGate(3)) if attn else None
        with __import__("torch").device("meta"):
            model = tr.ResNet(tr.BasicBlock, (1, 1, 1, 1), num_classes=10, gate=gate, gate_name="eca")
        return tr.randomize_(model.to_empty(device="cpu"), seed).eval()
    return build


MODELS: dict[str, ModelSpec] = {
    "eca_resnet50": ModelSpec("eca_resnet50", _reference("eca_resnet50"), plain="resnet50"),
    "resnet50": ModelSpec("resnet50", _reference("resnet50")),
    "eca_mobilenet_v2": ModelSpec("eca_mobilenet_v2", _reference("eca_mobilenet_v2"), plain="mobilenet_v2"),
    "mobilenet_v2": ModelSpec("mobilenet_v2", _reference("mobilenet_v2")),
    "ecaresnet50d": ModelSpec("ecaresnet50d", _reference("ecaresnet50d"), plain="resnet50d"),
    "resnet50d": ModelSpec("ecaresnet50d", _reference("ecaresnet50d", attn=None), (("attn", None),)),
    # Tiny test architectures (10 classes): not in the defaults.
    "eca_resnet10_tiny": ModelSpec("eca_resnet18", _tiny_resnet(True),
                                   (("layers", (1, 1, 1, 1)), ("k_size", 3), ("num_classes", 10)),
                                   plain="resnet10_tiny"),
    "resnet10_tiny": ModelSpec("resnet18", _tiny_resnet(False), (("layers", (1, 1, 1, 1)), ("num_classes", 10))),
}
DEFAULT_MODELS = {"cpu": "eca_resnet50,resnet50,eca_mobilenet_v2,mobilenet_v2",
                  "gpu": "eca_resnet50,resnet50,eca_mobilenet_v2,mobilenet_v2,ecaresnet50d,resnet50d"}


# ---------------------------------------------------------------------------------------------
# Weights: PyTorch state dict -> Flax variables (paths joined with "." are the state-dict keys)
# ---------------------------------------------------------------------------------------------

def torch_to_flax_variables(torch_model, flax_shapes: dict) -> dict:
    """Flax ``{"params", "batch_stats"}`` holding ``torch_model``'s weights (eca_jax.convert's mapping).

    ``flax_shapes`` is the (abstract) variable tree of the Flax model. Strict: a missing,
    unexpected or mis-shaped key raises ``ConversionError`` (a ValueError) naming it.
    """
    from eca_jax.convert import flax_from_state_dict
    state = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    return flax_from_state_dict(state, flax_shapes, what="the benchmark's eca_jax model")


# ---------------------------------------------------------------------------------------------
# Contenders
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Contender:
    """One (model, framework, mode): ``step()`` runs one synchronised iteration."""
    model: str
    framework: str
    mode: str
    step: Callable[[], Any]
    compile_s: float = float("nan")      # jax: lower + compile; torch.compile: first call(s)
    first_call_s: float = float("nan")  # first call after compile (jax) / first eager call
    peak_mib: float = float("nan")
    xla_mib: float = float("nan")        # jax only: XLA buffer assignment of the compiled step
    logits: Any = None                   # inference output of the warm-up (for the agreement check)
    compiled: Any = None                 # jax only: the compiled executable (profile_step.py reads its HLO)
    samples: list = dataclasses.field(default_factory=list)
    iters: int = 1


@dataclasses.dataclass(frozen=True)
class Setup:
    batch_size: int
    image_size: int
    dtype: str            # "fp32" | "bf16"
    device: str           # "cpu" | "gpu"
    lr: float = 1e-3
    seed: int = 0
    channels_last: bool = False
    num_classes: int = 1000
    impl: str = ""        # eca_jax.kernels.ImplOptions.parse form; "" = the defaults


# ImageNet-1k's training images: the steps per epoch of the trainer's (step) schedule.
IMAGENET_TRAIN_IMAGES = 1281167


def train_config(setup: Setup, spec: Optional[ModelSpec] = None) -> Any:
    """The trainer's config for ``setup``: ``make_config``'s defaults (the release's recipe), with
    the benchmark's batch, image size, learning rate, seed and implementation switches (``impl``),
    over the release's 100 epochs; with ``spec`` also its model (name, kwargs, compute dtype)."""
    from eca_jax.train.config import make_config
    model = {}
    if spec is not None:
        kwargs = {k: v for k, v in spec.jax_kwargs if k != "num_classes"}
        model = dict(model=spec.jax_name, model_kwargs=kwargs,
                     dtype="bfloat16" if setup.dtype == "bf16" else "float32")
    return make_config(batch_size=setup.batch_size, image_size=setup.image_size, learning_rate=setup.lr,
                       seed=setup.seed, total_epochs=100.0, impl=setup.impl, **model)


def trainer_optimizer(setup: Setup) -> tuple[Any, Any]:
    """``(config, tx)``: the optax transformation ``eca_jax.train`` builds from ``train_config(setup)``
    (steps per epoch: ImageNet's training set at the benchmark's batch size)."""
    from eca_jax.train.config import to_steps
    from eca_jax.train.optim import make_optimizer
    config = train_config(setup)
    steps_per_epoch = max(1, IMAGENET_TRAIN_IMAGES // setup.batch_size)
    tx, _ = make_optimizer(config, steps_per_epoch, to_steps(config, "total", steps_per_epoch))
    return config, tx


def make_batch(setup: Setup, num_classes: int):
    """Deterministic random images (NCHW torch tensor + NHWC numpy array) and labels."""
    import numpy as np
    import torch_reference
    images = torch_reference.random_images(setup.batch_size, setup.image_size, seed=setup.seed)
    labels = np.random.default_rng(setup.seed).integers(0, num_classes, setup.batch_size)
    return images, images.permute(0, 2, 3, 1).contiguous().numpy(), labels


def _xla_mib(compiled) -> float:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return total / 2 ** 20
    except Exception:  # noqa: BLE001 -- not every backend reports it
        return float("nan")


def jax_contender(name: str, spec: ModelSpec, torch_model, batch, setup: Setup, mode: str) -> Contender:
    """The eca_jax model under ``jax.jit`` with ``torch_model``'s weights (``train``: the trainer's step)."""
    import jax
    import jax.numpy as jnp
    from eca_jax.train.loop import build_model

    dtype = jnp.bfloat16 if setup.dtype == "bf16" else jnp.float32
    # The trainer's model: its config's model, model_kwargs, dtype and impl switches.
    model = build_model(train_config(setup, spec), dict(spec.jax_kwargs).get("num_classes", setup.num_classes))
    device = jax.devices()[0]
    _, images_nhwc, labels = batch
    x = jax.device_put(jnp.asarray(images_nhwc, dtype), device)
    y = jax.device_put(jnp.asarray(labels, jnp.int32), device)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
    variables = jax.device_put(torch_to_flax_variables(torch_model, shapes), device)
    c = Contender(name, "jax", mode, step=lambda: None)

    if mode == "infer":
        fn = jax.jit(lambda v, images: model.apply(v, images, train=False))
        t0 = time.perf_counter()
        compiled = fn.lower(variables, x).compile()
        c.compile_s = time.perf_counter() - t0
        c.xla_mib = _xla_mib(compiled)
        c.compiled = compiled
        c.step = lambda: compiled(variables, x).block_until_ready()
    else:
        compiled, c.compile_s, state = compile_trainer_step(model, variables, x, y, setup)
        c.xla_mib, c.compiled = _xla_mib(compiled), compiled
        batch_xy = {"image": x, "label": y}

        def step():
            state[0], metrics = compiled(state[0], batch_xy)
            return metrics["loss"].block_until_ready()
        c.step = step

    t0 = time.perf_counter()
    out = c.step()
    c.first_call_s = time.perf_counter() - t0
    if mode == "infer":
        import numpy as np
        c.logits = np.asarray(out, np.float32)
    return c


def compile_trainer_step(model, variables: dict, images, labels, setup: Setup) -> tuple[Any, float, list]:
    """``(compiled, compile_s, [state])``: the trainer's train step (``eca_jax.train.step``) for
    ``model``, compiled as ``eca_jax.train`` compiles it (``jax.jit``, the ``TrainState`` donated;
    called as ``compiled(state, {"image": images, "label": labels}) -> (state, metrics)``), its
    compile time, and a one-element list holding the initial ``TrainState`` (``variables``, the
    optimizer's fresh state, step 0, key ``PRNGKey(setup.seed)``)."""
    import jax
    import jax.numpy as jnp
    from eca_jax.train.state import TrainState
    from eca_jax.train.step import make_train_step

    config, tx = trainer_optimizer(setup)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                       opt_state=jax.jit(tx.init)(params), rng=jax.random.PRNGKey(setup.seed))
    fn = jax.jit(make_train_step(model.apply, tx, config.label_smoothing, config.bn_groups), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = fn.lower(state, {"image": images, "label": labels}).compile()
    return compiled, time.perf_counter() - t0, [state]


def torch_contender(name: str, torch_model, batch, setup: Setup, mode: str, compiled: bool) -> Contender:
    """The PyTorch reference model, eager or under ``torch.compile`` (a private copy of the weights)."""
    import copy
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if setup.device == "gpu" else "cpu")
    model = copy.deepcopy(torch_model).to(dev)
    images, _, labels = batch
    x = images.to(dev)
    y = torch.as_tensor(labels, dtype=torch.long, device=dev)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=setup.dtype == "bf16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    framework = "torch_compile" if compiled else "torch_eager"
    runner = torch.compile(model) if compiled else model
    c = Contender(name, framework, mode, step=lambda: None)

    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                out = runner(x)
            sync()
            return out
    else:
        model.train()
        config = train_config(setup)   # the trainer's recipe: torch's SGD decay is coupled, like it
        opt = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=config.nesterov)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(runner(x).float(), y, label_smoothing=config.label_smoothing)
            loss.backward()
            opt.step()
            sync()
            return loss.detach()
    c.step = step
    t0 = time.perf_counter()
    out = step()
    first = time.perf_counter() - t0
    if compiled:
        # the second call may recompile (e.g. optimizer state / grad mode guards): count it too
        t0 = time.perf_counter()
        step()
        c.compile_s = first + time.perf_counter() - t0
    else:
        c.first_call_s = first
    if mode == "infer":
        c.logits = out.float().cpu().numpy()
    return c


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_rss_delta_mib(fn: Callable[[], Any], interval_s: float = 0.002) -> float:
    """High-water mark of the process RSS above its level before ``fn()``, in MiB (Linux)."""
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    gc.collect()
    _malloc_trim()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval_s)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2 ** 20


def measure_peak_memory(c: Contender, device: str) -> None:
    """Fills ``c.peak_mib`` for one step (after warm-up)."""
    if device == "gpu":
        if c.framework.startswith("torch"):
            import torch
            torch.cuda.reset_peak_memory_stats()
            c.step()
            c.peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            c.peak_mib = c.xla_mib
        return
    c.peak_mib = peak_rss_delta_mib(c.step)


def warm_up(contenders: Sequence[Contender], min_sample_s: float, warmup_steps: int) -> None:
    """``warmup_steps`` (>= 1) untimed steps each; the last one sets the steps per sample so that a
    sample lasts ``min_sample_s``."""
    for c in contenders:
        dt = 0.0
        for _ in range(max(1, warmup_steps)):
            t0 = time.perf_counter()
            c.step()
            dt = time.perf_counter() - t0
        c.iters = max(1, math.ceil(min_sample_s / max(dt, 1e-6)))


def time_round_robin(contenders: Sequence[Contender], repeats: int, log: Callable[[str], None] = print) -> None:
    """``repeats`` rounds; in each, every contender runs one sample of ``c.iters`` steps (the order
    rotates by one each round). Appends seconds per step to ``c.samples``."""
    n = len(contenders)
    for r in range(repeats):
        order = [contenders[(i + r) % n] for i in range(n)]
        for c in order:
            t0 = time.perf_counter()
            for _ in range(c.iters):
                c.step()
            c.samples.append((time.perf_counter() - t0) / c.iters)
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{c.model}/{c.framework} {c.samples[-1] * 1e3:.0f} ms" for c in contenders))


# ---------------------------------------------------------------------------------------------
# One family (ECA model + plain twin) in one mode
# ---------------------------------------------------------------------------------------------

def run_group(names: Sequence[str], mode: str, setup: Setup, frameworks: Sequence[str], repeats: int,
              min_sample_s: float = 1.0, warmup_steps: int = 1, log: Callable[[str], None] = print) -> list[dict]:
    """Builds, warms up and times every (model in ``names``) x (framework) contender in ``mode``.

    Returns one row per contender (see :func:`rows_for`).
    """
    contenders: list[Contender] = []
    agreement: dict[str, float] = {}
    for name in names:
        spec = MODELS[name]
        torch_model = spec.torch_builder(setup.seed)
        num_classes = torch_model.fc.out_features if hasattr(torch_model, "fc") else \
            torch_model.classifier[-1].out_features
        setup_n = dataclasses.replace(setup, num_classes=num_classes)
        batch = make_batch(setup_n, num_classes)
        for fw in frameworks:
            log(f"[{mode}] {name}: building {fw} ...")
            if fw == "jax":
                c = jax_contender(name, spec, torch_model, batch, setup_n, mode)
            else:
                c = torch_contender(name, torch_model, batch, setup_n, mode, compiled=fw == "torch_compile")
            log(f"[{mode}] {name}/{fw}: compile {c.compile_s:.1f} s, first call {c.first_call_s:.2f} s")
            contenders.append(c)
        if mode == "infer":
            import numpy as np
            outs = {c.framework: c.logits for c in contenders if c.model == name}
            if "jax" in outs and "torch_eager" in outs:
                scale = float(np.abs(outs["torch_eager"]).max()) or 1.0
                agreement[name] = float(np.abs(outs["jax"] - outs["torch_eager"]).max()) / scale
        del torch_model
    warm_up(contenders, min_sample_s, warmup_steps)
    for c in contenders:
        measure_peak_memory(c, setup.device)
    time_round_robin(contenders, repeats, log)
    return rows_for(contenders, setup, agreement)


def rows_for(contenders: Sequence[Contender], setup: Setup, agreement: dict) -> list[dict]:
    """CSV rows: throughput, ratios to each PyTorch mode (jax rows), ECA overhead (ECA rows)."""
    med = {(c.model, c.framework): statistics.median(c.samples) for c in contenders}
    best = {(c.model, c.framework): min(c.samples) for c in contenders}
    rows = []
    for c in contenders:
        t = med[(c.model, c.framework)]
        plain = MODELS[c.model].plain
        row = dict(model=c.model, mode=c.mode, framework=c.framework, batch_size=setup.batch_size,
                   image_size=setup.image_size, dtype=setup.dtype, device=setup.device,
                   median_ms=t * 1e3, min_ms=min(c.samples) * 1e3, max_ms=max(c.samples) * 1e3,
                   samples=len(c.samples), steps_per_sample=c.iters, images_per_s=setup.batch_size / t,
                   compile_s=c.compile_s, first_call_s=c.first_call_s, peak_mib=c.peak_mib, xla_mib=c.xla_mib,
                   speedup_vs_torch_eager=float("nan"), speedup_vs_torch_compile=float("nan"),
                   best_speedup_vs_torch_eager=float("nan"), best_speedup_vs_torch_compile=float("nan"),
                   eca_overhead=float("nan"), rel_logit_diff=agreement.get(c.model, float("nan")))
        if c.framework == "jax":
            for fw in ("torch_eager", "torch_compile"):
                if (c.model, fw) in med:
                    row[f"speedup_vs_{fw}"] = med[(c.model, fw)] / t
                    row[f"best_speedup_vs_{fw}"] = best[(c.model, fw)] / min(c.samples)
        if plain and (plain, c.framework) in med:
            row["eca_overhead"] = t / med[(plain, c.framework)] - 1.0
        rows.append(row)
    return rows


def groups_of(names: Sequence[str]) -> list[list[str]]:
    """Puts each ECA model with its plain twin (when both are requested), keeping the order."""
    groups, seen = [], set()
    for n in names:
        if n in seen:
            continue
        group = [n]
        plain = MODELS[n].plain
        if plain in names and plain not in seen:
            group.append(plain)
        twins = [m for m in names if MODELS[m].plain == n and m not in seen]
        group = twins[:1] + group if twins else group
        groups.append(group)
        seen.update(group)
    return groups


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    """CPU model and cores (lscpu), accelerator name, library versions."""
    import jax
    import torch
    info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["accelerator"] = str(jax.devices()[0].device_kind) if device == "gpu" else "none"
    info["versions"] = (f"jax {jax.__version__}, jaxlib {__import__('jaxlib').__version__}, "
                        f"flax {__import__('flax').__version__}, torch {torch.__version__}")
    return info


def _fmt(v: float, spec: str = ".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown_report(rows: Sequence[dict], meta: dict) -> str:
    """The README table: throughput, ratios, compile times, memory; then the ECA overhead."""
    by = {(r["model"], r["mode"], r["framework"]): r for r in rows}
    keys = list(dict.fromkeys((r["model"], r["mode"]) for r in rows))
    fws = [fw for fw in FRAMEWORKS if any(r["framework"] == fw for r in rows)]
    names = {"jax": "eca_jax", "torch_eager": "torch eager", "torch_compile": "torch.compile"}
    lines = [f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; device: {meta['device']} ({meta['accelerator']}); CPU: {meta['cpu']}, "
             f"{meta['usable_cores']} of {meta['cores']} cores used ({meta['threads']} threads per framework); "
             f"{meta['versions']}  ",
             f"Batch {meta['batch_size']} at {meta['image_size']}x{meta['image_size']}, {meta['dtype']}; "
             f"median of {meta['repeats']} interleaved samples (ratios: of medians, and of the fastest samples); XLA flags: `{meta['xla_flags'] or 'default'}`; "
             f"malloc (both frameworks): `{meta.get('malloc', 'glibc defaults')}`; "
             f"1-min load average before/after: {meta.get('load', 'n/a')}.",
             ""]
    head = ["model", "mode"] + [f"{names[f]} img/s" for f in fws]
    head += [f"eca_jax / {names[f]} (best/best)" for f in fws if f != "jax"]
    head += ["compile s (" + ", ".join(names[f] for f in fws if f != "torch_eager") + ")",
             "peak MiB (" + ", ".join(names[f] for f in fws) + ")", "logit rel. diff"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, mode in keys:
        r = {fw: by.get((model, mode, fw)) for fw in fws}
        cells = [model, mode] + [_fmt(r[f]["images_per_s"], ".1f") if r[f] else "n/a" for f in fws]
        if r.get("jax"):
            cells += [f"{_fmt(r['jax'][f'speedup_vs_{f}'])}x ({_fmt(r['jax'][f'best_speedup_vs_{f}'])}x)"
                      for f in fws if f != "jax"]
        else:
            cells += ["n/a" for f in fws if f != "jax"]
        cells.append(", ".join(_fmt(r[f]["compile_s"], ".1f") if r[f] else "n/a" for f in fws if f != "torch_eager"))
        cells.append(", ".join(_fmt(r[f]["peak_mib"], ".0f") if r[f] else "n/a" for f in fws))
        anyrow = next(v for v in r.values() if v)
        cells.append(_fmt(anyrow["rel_logit_diff"], ".1e") if mode == "infer" else "")
        lines.append("| " + " | ".join(cells) + " |")
    eca = [(m, mode) for m, mode in keys if MODELS[m].plain]
    if eca:
        lines += ["", "ECA overhead (time of the ECA model / time of its plain twin - 1; same run):", "",
                  "| model | mode | " + " | ".join(names[f] for f in fws) + " |", "|---|---|" + "---|" * len(fws)]
        for m, mode in eca:
            cells = [f"{m} vs {MODELS[m].plain}", mode]
            for f in fws:
                row = by.get((m, mode, f))
                cells.append(_fmt(100 * row["eca_overhead"], "+.1f") + "%" if row else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[dict], meta: dict, out_dir: str) -> tuple[str, str]:
    """experiments/results/benchmark_<date>_<device>.csv (+ .md); returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"benchmark_{meta['date'][:10]}_{meta['device']}")
    with open(stem + ".csv", "w", newline="") as f:
        extra = {k: meta.get(k, "") for k in ("date", "cpu", "accelerator", "threads", "xla_flags", "load")}
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(extra))
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}, **extra})
    with open(stem + ".md", "w") as f:
        f.write(markdown_report(rows, meta))
    return stem + ".csv", stem + ".md"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated, from: " + ", ".join(MODELS)
                   + "; default: " + DEFAULT_MODELS["cpu"] + " (+ ecaresnet50d,resnet50d on GPU)")
    p.add_argument("--modes", default="infer,train", help="infer,train")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 256 on GPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: eca_jax dtype=bfloat16 (float32 params), torch autocast bfloat16")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per contender (median reported)")
    p.add_argument("--min-sample-s", type=float, default=2.0, help="a sample runs steps for at least this long")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps after the first call")
    p.add_argument("--torch-compile", choices=("auto", "on", "off"), default="auto",
                   help="auto: on for --device gpu, off on CPU (inductor compiles for minutes on 2 cores)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="PyTorch memory format; auto: channels_last on GPU, NCHW (PyTorch's default) on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both frameworks (default: all CPUs the process may use)")
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="retain: restart under eca_jax.perf.MALLOC_TUNABLES (glibc keeps freed memory, on huge "
                        "pages; both frameworks) unless GLIBC_TUNABLES is already set; default: glibc's defaults")
    p.add_argument("--xla-preset", default="none", help="named XLA flag set of eca_jax.perf (none = XLA defaults)")
    p.add_argument("--xla-flags", default="", help="extra XLA flags, appended to XLA_FLAGS before jax starts")
    p.add_argument("--impl", default="", help="eca_jax implementation switches, e.g. 'hand_written_backward=false' "
                   "(eca_jax.kernels.ImplOptions; default: every fast path)")
    p.add_argument("--out-dir", default=RESULTS_DIR)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    args.models = [m for m in (args.models or DEFAULT_MODELS[args.device]).split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes takes a comma-separated subset of {MODES}, got {args.modes}")
    if args.batch_size is None:
        args.batch_size = 256 if args.device == "gpu" else 8
    if args.batch_size < 1 or args.image_size < 32 or args.repeats < 1:
        p.error("need --batch-size >= 1, --image-size >= 32 and --repeats >= 1")
    return args


def configure_runtime(args: argparse.Namespace) -> str:
    """Pins threads and sets XLA_FLAGS; must run before JAX starts its backend. Returns the added XLA flags."""
    if args.threads and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if args.threads > len(cpus):
            raise ValueError(f"--threads {args.threads} but only {len(cpus)} CPUs are usable")
        os.sched_setaffinity(0, cpus[:args.threads])
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from eca_jax import perf
    flags = perf.set_xla_flags(args.xla_preset)
    if args.xla_flags:
        if perf._backend_started():
            raise RuntimeError("--xla-flags: JAX's backend has already started; XLA would ignore them")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    return " ".join(f for f in (flags, args.xla_flags) if f)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args(argv)
    xla_flags = configure_runtime(args)
    from eca_jax.kernels import ImplOptions
    try:
        ImplOptions.parse(args.impl)
    except ValueError as e:
        raise SystemExit(f"--impl: {e}") from e
    import torch
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: PyTorch sees no CUDA device")
    use_compile = args.torch_compile == "on" or (args.torch_compile == "auto" and args.device == "gpu")
    frameworks = ["jax", "torch_eager"] + (["torch_compile"] if use_compile else [])
    setup = Setup(args.batch_size, args.image_size, args.dtype, args.device, impl=args.impl,
                  channels_last=args.channels_last == "on" or (args.channels_last == "auto" and args.device == "gpu"))
    t_start = time.time()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for mode in args.modes:
        for group in groups_of(args.models):
            rows += run_group(group, mode, setup, frameworks, args.repeats, args.min_sample_s, args.warmup_steps)
    meta = machine_info(args.device)
    meta.update(command=("python experiments/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
                date=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), device=args.device, threads=threads,
                batch_size=args.batch_size, image_size=args.image_size, dtype=args.dtype, repeats=args.repeats,
                xla_flags=os.environ.get("XLA_FLAGS", "") if xla_flags or os.environ.get("XLA_FLAGS") else "",
                malloc=os.environ.get("GLIBC_TUNABLES", "") or "glibc defaults",
                load=f"{load_before:.1f} / {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a")
    report = markdown_report(rows, meta)
    print("\n" + report)
    print(f"total {time.time() - t_start:.0f} s")
    if not args.no_write:
        csv_path, md_path = write_results(rows, meta, args.out_dir)
        print(f"wrote {csv_path} and {md_path}")
    return rows


if __name__ == "__main__":
    if parse_args().malloc == "retain":
        from eca_jax import perf
        perf.reexec_with_malloc_tunables()
    main()
