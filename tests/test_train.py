"""Tests of eca_jax.train: sharding equivalences, multi-process, preemption, learning on digits,
and bad input (the optimizer, schedules and train-step numerics: tests/test_optim.py). CPU,
8 fake devices (conftest), tiny models and images.

Runs that need their own process (2 processes, kills) go through tests/train_worker.py on the
synthetic data of tests/train_helpers.py; all of them are compared with one uninterrupted
in-process reference run (fixture ``reference``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

import eca_jax.nn as enn
from eca_jax.models.layers import batch_norm, classifier, conv2d
from eca_jax.checkpoints.training import CHECKPOINT_DIRNAME, committed_steps, load_variables, resolve_step_dir
from eca_jax.train import init_from, sharding
from eca_jax.train.checkpoint import CheckpointMismatchError, CheckpointSaveError
from eca_jax.train.config import (check_override_flags, make_config, to_steps,
                                  validate_config)
from eca_jax.train.loop import build_model, train_and_evaluate
from eca_jax.train.optim import make_optimizer
from eca_jax.train.state import init_state, make_init_fn
from eca_jax.train.step import make_train_step
from train_helpers import CACHE_EVERY_COMPILE, SyntheticData, _examples, tiny_config
from train_worker import install_save_fault

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")
# The run every other run is compared with: 8 steps, checkpoints at 4 and 8.
RUN = dict(total_steps=8, checkpoint_every_steps=4, eval_every_steps=4, log_every_steps=1)


# ----------------------------------------------------------------------------- helpers

def rel_err(a, b) -> float:
    """max over leaves of ||a - b|| / ||b|| (trees of the same structure)."""
    errs = jax.tree.map(lambda x, y: float(np.linalg.norm(np.asarray(x, np.float64) - y) /
                                           max(np.linalg.norm(np.asarray(y, np.float64)), 1e-12)),
                        a, b)
    return max(jax.tree.leaves(errs))


def final_variables(workdir):
    step_dir = resolve_step_dir(workdir)
    return int(step_dir.name), load_variables(step_dir)


def worker_env():
    env = dict(os.environ, **CACHE_EVERY_COMPILE)  # workers compile the same programs again and again
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = str(bool(jax.config.read("jax_disable_most_optimizations")))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                         env.get("PYTHONPATH", "")])
    return env


def start_worker(workdir, config=None, *extra, devices=8, stdout=subprocess.PIPE):
    cmd = [sys.executable, WORKER, "--workdir", str(workdir), "--config",
           json.dumps({**RUN, **(config or {})}), "--devices", str(devices), *map(str, extra)]
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            env=worker_env(), cwd=ROOT)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def wait_for(predicate, timeout=180.0, proc=None, what=""):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited early ({what}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-step run on 8 devices: (workdir, result, final variables)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train_and_evaluate(tiny_config(**RUN), str(workdir), data_module=SyntheticData())
    step, variables = final_variables(workdir)
    assert step == 8 and not result["preempted"]
    return workdir, result, variables


# ----------------------------------------------------------------------------- config

def test_config_typos_and_values():
    with pytest.raises(KeyError, match=r"'bacth_size'.*Did you mean 'batch_size'.*Valid keys:"):
        make_config(bacth_size=3)
    with pytest.raises(KeyError, match=r"mesh.fsdpp.*mesh.fsdp"):
        make_config(mesh=dict(fsdpp=2))
    with pytest.raises(KeyError, match="Did you mean 'learning_rate'"):
        check_override_flags(["--config.learning_rat=0.1"])
    check_override_flags(["--config.mesh.fsdp=2", "--config.model_kwargs.anything=1", "--x=1"])
    config = make_config(total_steps=1)
    with pytest.raises(AttributeError, match="batch_size"):  # locked: new keys are refused
        config.bacth_size = 3
    for bad, match in [(dict(total_steps=0), "total_steps must be positive"),
                       (dict(), "total_steps or config.total_epochs"),
                       (dict(total_steps=1, dtype="float16"), "dtype"),
                       (dict(total_steps=1, batch_size=10, grad_accum_steps=3), "divisible"),
                       (dict(total_steps=1, mesh=dict(data=0)), "mesh.data")]:
        with pytest.raises(ValueError, match=match):
            validate_config(make_config(**bad))
    config = make_config(total_epochs=2.5, warmup_epochs=0.5)
    assert to_steps(config, "total", 10) == 25 and to_steps(config, "warmup", 10) == 5
    assert to_steps(config, "eval_every", 10, default=10) == 10
    config = make_config(total_epochs=2.5, total_steps=7)  # steps win (command-line override)
    assert to_steps(config, "total", 10) == 7


def test_cli_rejects_typos(tmp_path):
    bad_file = tmp_path / "bad_config.py"
    bad_file.write_text("from eca_jax.train.config import make_config\n"
                        "def get_config(arg=None):\n  return make_config(total_stpes=3)\n")
    for args in (["--config", "experiments/configs/smoke.py", "--config.bacth_size=3"],
                 ["--config", str(bad_file)]):
        proc = subprocess.run([sys.executable, "-m", "eca_jax.train", "--workdir",
                               str(tmp_path / "w"), *args], capture_output=True, text=True,
                              cwd=ROOT, env=worker_env(), timeout=120)
        assert proc.returncode != 0
        assert "Did you mean" in proc.stderr and "Valid keys" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


def test_progress_lines_tqdm_and_plot(tmp_path):
    import io
    from eca_jax.train import reporting
    out = io.StringIO()
    progress = reporting.Progress(10, 0, "lines", stream=out)
    for step in range(1, 11):
        progress.update(step, {"loss": 1.0 / step, "img/s": 100.0} if step % 5 == 0 else None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 5/10 (50%) | loss 0.2 | img/s 100")
    assert "ETA" in lines[0] and lines[1].endswith("ETA 0:00:00")
    bar_out = io.StringIO()
    bar = reporting.Progress(10, 4, "tqdm", stream=bar_out)
    bar.update(5, {"loss": 0.5})
    bar.close()
    assert "5/10" in bar_out.getvalue()
    writer = reporting.MetricsWriter(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {"train_loss": 1.0 / step, "train_accuracy": 0.3 * step})
    writer.write(3, {"eval_loss": 0.5, "eval_top1": 0.8})
    resumed = reporting.MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)
    assert [r["step"] for r in reporting.read_csv(resumed.csv_path)] == ["1", "2"]
    png = reporting.plot_curves(resumed.csv_path, str(tmp_path / "c.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- sharding

def _three_steps(mesh, fsdp_min_size=2 ** 30):
    """params/batch_stats after 3 SGD steps of a tiny ECA-ResNet on ``mesh``."""
    config = tiny_config(model_kwargs=dict(widths=(8, 8, 16), stem_width=8))
    model = build_model(config, 4)
    tx, _ = make_optimizer(config, steps_per_epoch=16, total_steps=3)
    init_fn = make_init_fn(model, tx, (1, 8, 8, 3))
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    shardings = sharding.tree_shardings(abstract, mesh, fsdp_min_size)
    state = init_state(init_fn, jax.random.PRNGKey(0), shardings)
    initial = jax.device_get(state.variables)
    batch_sh = sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(model.apply, tx, 0.1, 1), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, sharding.replicated(mesh)))
    for i in range(3):
        images, labels = _examples(np.arange(16 * i, 16 * (i + 1)), 8, 1)
        state, _ = step(state, {"image": jax.device_put(images, batch_sh),
                                "label": jax.device_put(labels, batch_sh)})
    return state, shardings, initial


def test_eight_devices_and_fsdp_equal_one_device():
    single, _, fresh = _three_steps(sharding.make_mesh(1, 1))
    data8, _, _ = _three_steps(sharding.make_mesh(-1, 1))
    fsdp, shardings, _ = _three_steps(sharding.make_mesh(2, 4), fsdp_min_size=64)
    specs = [s.spec for s in jax.tree.leaves(shardings.params)]
    opt_specs = [s.spec for s in jax.tree.leaves(shardings.opt_state)]
    assert any("fsdp" in tuple(s) for s in specs) and any("fsdp" in tuple(s) for s in opt_specs)
    assert any(tuple(s) == () for s in specs)  # small params stay replicated
    fsdp_leaf = next(p for p, s in zip(jax.tree.leaves(fsdp.params), specs) if "fsdp" in tuple(s))
    assert len({sh.data.shape for sh in fsdp_leaf.addressable_shards}) == 1
    assert fsdp_leaf.addressable_shards[0].data.size * 4 == fsdp_leaf.size  # really sharded
    ref = jax.device_get(single.variables)
    assert rel_err(fresh["batch_stats"], ref["batch_stats"]) > 1e-3  # BN stats really moved
    assert rel_err(fresh["params"], ref["params"]) > 1e-3
    assert rel_err(jax.device_get(data8.variables), ref) < 1e-5
    assert rel_err(jax.device_get(fsdp.variables), jax.device_get(data8.variables)) < 1e-5


def test_batch_size_must_divide_over_the_mesh(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 devices"):
        train_and_evaluate(tiny_config(batch_size=12), str(tmp_path), data_module=SyntheticData())
    with pytest.raises(ValueError, match=r"grad_accum_steps"):
        train_and_evaluate(tiny_config(batch_size=16, grad_accum_steps=4), str(tmp_path),
                           data_module=SyntheticData())


# ----------------------------------------------------------------------------- multi-process

# Two processes equal one: superseded by tests/test_multihost.py (4 processes x 2 devices through
# the trainer's own command line against 1 process x 8 devices).


# ----------------------------------------------------------------------------- preemption

def test_sigterm_saves_and_resume_is_exact(reference, tmp_path):
    _, _, ref_vars = reference
    progress = tmp_path / "progress.txt"
    proc = start_worker(tmp_path / "w", None, "--step_delay", 0.25, "--progress_file", progress)
    wait_for(lambda: progress.exists() and "batches=3" in progress.read_text(), proc=proc,
             what="step 3")
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 0, err[-3000:]
    result = last_json(out)
    assert result["preempted"] and 3 <= result["step"] < 8
    assert resolve_step_dir(tmp_path / "w").name == str(result["step"])  # saved on TERM
    rc, out, err = finish(start_worker(tmp_path / "w"))
    assert rc == 0, err[-3000:]
    assert last_json(out)["step"] == 8
    step, variables = final_variables(tmp_path / "w")
    assert step == 8 and rel_err(variables, ref_vars) < 1e-6
    rows = [r.split(",")[0] for r in (tmp_path / "w" / "metrics.csv").read_text().splitlines()[1:]]
    assert rows.count("8") == 2 and rows.count(str(result["step"])) == 1  # no repeated steps


def test_sigkill_during_async_save_never_leaves_a_usable_partial(reference, tmp_path):
    _, _, ref_vars = reference
    marker = tmp_path / "saving.txt"
    proc = start_worker(tmp_path / "w", None, "--fault", "hang", "--fault_at_save", 2,
                        "--fault_marker", marker)
    wait_for(marker.exists, proc=proc, what="the second async save")
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    ckpt_dir = tmp_path / "w" / CHECKPOINT_DIRNAME
    names = sorted(os.listdir(ckpt_dir))
    assert any("tmp" in n for n in names), names  # the killed save is left half-written ...
    assert resolve_step_dir(tmp_path / "w").name == "4"  # ... and never picked up
    rc, out, err = finish(start_worker(tmp_path / "w"))
    assert rc == 0, err[-3000:]
    assert "Resumed from" in out and f"{os.sep}4 " in out
    step, variables = final_variables(tmp_path / "w")
    assert step == 8 and rel_err(variables, ref_vars) < 1e-6
    assert not [n for n in os.listdir(ckpt_dir) if "tmp" in n]  # cleaned up by the rerun


def test_out_of_disk_keeps_previous_checkpoint_and_resumes_on_another_mesh(
        reference, tmp_path, monkeypatch):
    _, _, ref_vars = reference
    workdir = str(tmp_path / "w")
    with monkeypatch.context() as m:
        import orbax.checkpoint as ocp
        m.setattr(ocp.handlers.StandardCheckpointHandler, "async_save",
                  ocp.handlers.StandardCheckpointHandler.async_save)  # restored on exit
        install_save_fault("enospc", 2, None)
        with pytest.raises(CheckpointSaveError, match=r"No space left.*step 4\) is intact"):
            train_and_evaluate(tiny_config(**RUN), workdir, data_module=SyntheticData())
    step_dir = resolve_step_dir(workdir)
    assert step_dir.name == "4"
    assert load_variables(step_dir)["params"]  # still readable
    # Resume on 4 devices as data 2 x fsdp 2 (another device count and mesh shape).
    result = train_and_evaluate(tiny_config(**RUN, mesh=dict(data=2, fsdp=2), fsdp_min_size=64),
                                workdir, data_module=SyntheticData())
    assert result["step"] == 8
    step, variables = final_variables(workdir)
    assert step == 8 and rel_err(variables, ref_vars) < 1e-5


# ----------------------------------------------------------------------------- bad input

def test_workdir_of_another_model_is_refused(reference):
    workdir, _, _ = reference
    for overrides, match in [(dict(model="resnet8_cifar"), r"'eca_resnet8_cifar'.*'resnet8_cifar'"),
                             (dict(num_classes=3), r"num_classes=4.*num_classes=3")]:
        with pytest.raises(CheckpointMismatchError, match=match):
            train_and_evaluate(tiny_config(**RUN, **overrides), str(workdir),
                               data_module=SyntheticData())


def test_init_from_mismatch_and_head_reset(reference, tmp_path):
    ref_dir, _, ref_vars = reference
    with pytest.raises(CheckpointMismatchError, match="holds model 'eca_resnet8_cifar'"):
        train_and_evaluate(tiny_config(**RUN, model="resnet8_cifar", init_from=str(ref_dir)),
                           str(tmp_path / "a"), data_module=SyntheticData())
    wrong_arch = load_variables(resolve_step_dir(ref_dir))
    with pytest.raises(CheckpointMismatchError, match="differ outside the classifier"):
        flat = traverse_util.flatten_dict(wrong_arch["params"], sep="/")
        key = next(k for k in flat if k.endswith("conv1/kernel"))
        flat[key] = np.zeros(flat[key].shape[:-1] + (flat[key].shape[-1] + 1,), np.float32)
        init_from.merge(ref_vars, {"params": traverse_util.unflatten_dict(flat, sep="/"),
                                  "batch_stats": ref_vars["batch_stats"]},
                       set(), False, "x", "eca_resnet8_cifar")
    # Same architecture, 3 classes instead of 4: an error unless the head may be reset.
    config = tiny_config(num_classes=3)
    model = build_model(config, 3)
    state = init_state(make_init_fn(model, make_optimizer(config, 16, 8)[0], (1, 8, 8, 3)),
                       jax.random.PRNGKey(1), None)
    shapes = lambda n: jax.eval_shape(  # noqa: E731
        lambda: build_model(config, n).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))
    kwargs = dict(model_name=config.model, num_classes=3, make_shapes=shapes, log=lambda s: None)
    with pytest.raises(CheckpointMismatchError, match="init_from_reset_head=True"):
        init_from.apply(state, str(ref_dir), reset_head=False, **kwargs)
    # The same through a directory written by eca_jax.convert (released weights).
    from eca_jax import convert
    converted = convert.save(tmp_path / "converted", ref_vars, {
        "arch": "eca_resnet8_cifar", "num_classes": 4,
        "model_kwargs": {"widths": [4, 8, 8], "stem_width": 4}})
    body = {"params": {k: v for k, v in ref_vars["params"].items() if k != "fc"},
            "batch_stats": ref_vars["batch_stats"]}
    for source in (str(ref_dir), converted):
        new = jax.device_get(init_from.apply(state, source, reset_head=True, **kwargs).variables)
        assert np.array_equal(new["params"]["fc"]["kernel"],
                              jax.device_get(state.params["fc"]["kernel"]))
        new["params"].pop("fc")
        assert rel_err(new, body) == 0.0


# ------------------------------------------- accumulation, BN groups (SGD: tests/test_optim.py)

class _TinyFlax(nn.Module):
    """conv3x3 - BN - ReLU - ECA(k=3) - mean - fc, built from the library's layers."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train, name="bn1")(conv2d(6, 3, name="conv1")(x)))
        x = enn.ECA(k_size=3, name="eca")(x)
        return classifier(5, 6, name="fc")(x.mean(axis=(1, 2)))


def test_grad_accumulation_equals_the_full_batch():
    """grad_accum_steps=2 (optax.MultiSteps) on two halves == one step on the whole batch."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}
    grad = jax.grad(lambda p, xs, ys: jnp.mean((xs @ p["w"] + p["b"] - ys) ** 2))
    results = []
    for accum in (1, 2):
        config = make_config(total_steps=4, schedule="cosine", warmup_steps=1, grad_accum_steps=accum)
        tx, _ = make_optimizer(config, steps_per_epoch=4, total_steps=4)
        p, opt = params, tx.init(params)
        for _ in range(3):  # 3 updates
            for xs, ys in zip(np.split(x, accum), np.split(y, accum)):
                updates, opt = tx.update(grad(p, xs, ys), opt, p)
                p = jax.tree.map(jnp.add, p, updates)
        results.append(p)
    assert rel_err(results[1], results[0]) < 1e-6 and rel_err(results[0], params) > 1e-3


def test_bn_groups_normalise_each_group_separately():
    """bn_groups=2: each half is normalised with its own statistics (the release's per-GPU BN);
    the running averages are the mean of the two halves' updates."""
    from eca_jax.train.step import _forward_train
    model = _TinyFlax()
    x = np.random.default_rng(1).normal(size=(8, 6, 6, 3)).astype(np.float32)
    x[4:] = 3.0 * x[4:] + 1.0  # the halves have different statistics
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    logits, stats = _forward_train(model.apply, variables["params"], variables["batch_stats"],
                                   jnp.asarray(x), jax.random.PRNGKey(0), 2)
    halves = [model.apply(variables, x[i:i + 4], train=True, mutable=["batch_stats"])
              for i in (0, 4)]
    np.testing.assert_allclose(logits, np.concatenate([h[0] for h in halves]), rtol=1e-5,
                               atol=1e-6)
    mean = (halves[0][1]["batch_stats"]["bn1"]["mean"] + halves[1][1]["batch_stats"]["bn1"]["mean"]) / 2
    np.testing.assert_allclose(stats["bn1"]["mean"], mean, rtol=1e-5, atol=1e-7)
    global_logits, _ = _forward_train(model.apply, variables["params"], variables["batch_stats"],
                                      jnp.asarray(x), jax.random.PRNGKey(0), 1)
    assert float(jnp.abs(global_logits - logits).max()) > 1e-3  # global statistics differ


# ----------------------------------------------------------------------------- digits

def test_digits_learns_and_evaluate_cli(tmp_path):
    """A short digits run (16x16, 40 steps) is far above chance (10%); the artifacts exist and
    ``python -m eca_jax.evaluate`` reproduces the final eval as its last JSON line."""
    config = make_config(model="eca_resnet8_cifar",
                         dataset="digits", data_dir=str(tmp_path / "data"), image_size=16,
                         batch_size=64, total_steps=40, eval_every_steps=40,
                         checkpoint_every_steps=20, log_every_steps=8, learning_rate=0.1,
                         schedule="cosine", warmup_steps=4, progress="lines")
    workdir = tmp_path / "digits"
    result = train_and_evaluate(config, str(workdir))
    assert result["num_examples"] == 360
    assert result["eval_top1"] > 0.5, result
    for name in ("metrics.csv", "curves.png"):
        assert (workdir / name).stat().st_size > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    proc = subprocess.run([sys.executable, "-m", "eca_jax.evaluate", "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=ROOT, env=worker_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = last_json(proc.stdout)
    assert {"top1", "top5", "loss", "num_examples"} <= set(out) and out["step"] == 40
    assert out["num_examples"] == 360 and abs(out["top1"] - result["eval_top1"]) < 1e-6


def test_orbax_syncs_processes_with_named_barriers(tmp_path):
    """Orbax's default process barrier is a collective over every device, which its async-save
    thread runs between the main thread's train and eval collectives: across processes they can
    pair up in another order and deadlock (a 4-process run hung at its last eval in CI). The
    trainer's Checkpointer switches orbax to the distributed service's named barriers."""
    from orbax.checkpoint._src.multihost import multihost
    from eca_jax.train.checkpoint import Checkpointer
    Checkpointer(str(tmp_path), {"model": "eca_resnet8_cifar", "num_classes": 4, "model_kwargs": {}})
    assert multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.value is True


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has installed a SIGTERM handler (the SigCgt mask of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/PID/status")
def test_sigterm_while_starting_up_stops_before_training(tmp_path):
    """A preemption notice while the trainer starts (sent as soon as ``python -m eca_jax.train`` has
    its handler, i.e. while JAX and TensorFlow load) does not kill it: it builds, stops before
    step 1 and exits 0, with nothing trained or saved."""
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-m", "eca_jax.train", "--config", "experiments/configs/smoke.py",
         "--workdir", str(workdir), f"--config.data_dir={tmp_path / 'data'}", "--config.progress=lines"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(), cwd=ROOT)
    try:
        wait_for(lambda: _catches_sigterm(proc.pid), timeout=60, proc=proc, what="the SIGTERM handler")
        proc.send_signal(signal.SIGTERM)
        rc, out, err = finish(proc)
    finally:
        proc.kill()
    assert rc == 0, err[-3000:]
    assert "SIGTERM before step 1: stopped before training" in out + err
    result = last_json(out)
    assert result["preempted"] and result["step"] == 0 and "train_loss" not in result
    assert committed_steps(workdir / CHECKPOINT_DIRNAME) == []
