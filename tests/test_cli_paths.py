"""The README's commands as a new user types them: run from a working directory with RELATIVE
paths (orbax only takes absolute ones), one trainer per workdir, and clear errors for corrupt
metadata and ``evaluate --best`` without recorded eval metrics.

The slow tests run each CLI as ``python -m ...`` in a fresh process with ``cwd`` = a temporary
directory; one 8-step smoke training run (experiments/configs/smoke.py on digits at 16x16) is
shared. Runtime: about 3.5 minutes on 2 busy CPU cores, nearly all of it process start-ups.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from eca_jax import convert
from eca_jax._lock import LockHeldError, file_lock
from eca_jax import checkpoints
from eca_jax._paths import absolute_path
from eca_jax.checkpoints import converted as converted_dirs
from eca_jax.checkpoints import training as training_checkpoints
from eca_jax.checkpoints.errors import CheckpointReadError, ConversionError
from eca_jax.train import checkpoint as train_checkpoint
from eca_jax.train.checkpoint import WorkdirInUseError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "configs", "smoke.py")
ORBAX_NOISE = "Metadata file does not exist"


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the CLI processes: CPU with one device, the digits in a temporary data
    dir, every compile kept in the run's persistent compilation cache."""
    from train_helpers import CACHE_EVERY_COMPILE
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                TF_CPP_MIN_LOG_LEVEL="2", ECA_JAX_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                **CACHE_EVERY_COMPILE)


def run(cwd, env, *args, ok=True, timeout=300) -> subprocess.CompletedProcess:
    """``python -m <args>`` in ``cwd``; with ``ok`` asserts exit status 0 and no orbax noise."""
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{args}:\n{proc.stderr[-3000:]}"
        assert ORBAX_NOISE not in proc.stderr, proc.stderr[-3000:]
    return proc


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def train_args(workdir: str, *overrides: str) -> list[str]:
    return ["eca_jax.train", "--config", SMOKE, "--workdir", workdir, *overrides]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, env):
    """A working directory holding ``workdirs/smoke``, trained by the README's command (8 steps,
    eval and checkpoint at 4 and 8), with a relative --workdir."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = run(cwd, env, *train_args("workdirs/smoke"))
    assert last_json(proc.stdout)["step"] == 8
    assert training_checkpoints.committed_steps(cwd / "workdirs/smoke/checkpoints") == [4, 8]
    return cwd


def fake_checkpoints(root, steps=(4, 8), metrics=None) -> None:
    """The files of orbax's step layout that the plain-file readers use (no arrays)."""
    for step in steps:
        step_dir = root / str(step)
        (step_dir / "state").mkdir(parents=True)
        (step_dir / "commit_success.txt").write_text("done")
        (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(
            {"custom_metadata": {"model": "eca_resnet8_cifar", "num_classes": 10}}))
        if metrics is not None:
            (step_dir / "metrics").mkdir()
            (step_dir / "metrics" / "metrics").write_text(json.dumps(metrics))


# ----------------------------------------------------------------------------- unit tests

def test_absolute_path_resolves_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_path("workdirs/a/") == str(tmp_path / "workdirs" / "a")
    assert absolute_path(tmp_path / "b") == str(tmp_path / "b")
    assert absolute_path("gs://bucket/workdir") == "gs://bucket/workdir"
    fake_checkpoints(tmp_path / "w" / "checkpoints")
    assert training_checkpoints.resolve_step_dir("w") == tmp_path / "w" / "checkpoints" / "8"


def test_corrupt_metadata_json_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "w" / "checkpoints"
    fake_checkpoints(root, metrics={"top1": 0.5})
    bad = root / "8" / "_CHECKPOINT_METADATA"
    bad.write_text('{"custom_metadata": {"model": "eca_res')  # truncated
    with pytest.raises(CheckpointReadError, match=f"Corrupt checkpoint metadata {bad}: not valid JSON"):
        training_checkpoints.step_signature(root / "8")
    with pytest.raises(CheckpointReadError, match=str(bad)):
        training_checkpoints.read_root_signature(root)
    (root / "8" / "metrics" / "metrics").write_text("[0.5]")
    with pytest.raises(CheckpointReadError, match="expected a JSON object, found list"):
        training_checkpoints.resolve_step_dir(tmp_path / "w", best=True)
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / converted_dirs.METADATA_FILE).write_text("{")
    with pytest.raises(ConversionError, match=f"{converted / converted_dirs.METADATA_FILE}: corrupt metadata"):
        convert.read_metadata(converted)


def test_best_without_eval_metrics_is_an_error(tmp_path):
    fake_checkpoints(tmp_path / "checkpoints")  # saved without metrics (no eval ran)
    with pytest.raises(CheckpointReadError, match=r"No eval metrics recorded in .*checkpoints.*"
                                                  r"pass --step \(one of \[4, 8\]\) or drop --best"):
        training_checkpoints.resolve_step_dir(tmp_path, best=True)
    assert training_checkpoints.resolve_step_dir(tmp_path).name == "8"
    fake_checkpoints(tmp_path / "checkpoints", steps=(12, 16), metrics={"top1": 0.3})
    (tmp_path / "checkpoints" / "12" / "metrics" / "metrics").write_text('{"top1": 0.7}')
    assert training_checkpoints.resolve_step_dir(tmp_path, best=True).name == "12"


def test_workdir_lock_refuses_a_second_holder_until_released(tmp_path):
    with train_checkpoint.workdir_lock(tmp_path / "w"):
        with pytest.raises(WorkdirInUseError, match=rf"workdir {tmp_path / 'w'} is in use by another "
                                                    rf"training process \(pid {os.getpid()}\)"):
            with train_checkpoint.workdir_lock(tmp_path / "w"):
                pass
    with train_checkpoint.workdir_lock(tmp_path / "w"):  # released on exit
        pass
    with file_lock(tmp_path / "x.lock"):
        with pytest.raises(LockHeldError):
            with file_lock(tmp_path / "x.lock", blocking=False):
                pass


def test_failed_init_from_leaves_no_root_metadata(tmp_path, monkeypatch):
    """orbax writes ``checkpoints/metadata`` (the model signature) when the manager is created: a
    run that commits no step must not leave it, nor be refused because of an old one."""
    from eca_jax.train.loop import train_and_evaluate
    from train_helpers import SyntheticData, tiny_config
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"Checkpoint path {tmp_path / 'missing'} does not exist"):
        train_and_evaluate(tiny_config(init_from="missing"), "w", data_module=SyntheticData())
    assert not (tmp_path / "w" / "checkpoints").exists()
    stale = tmp_path / "w" / "checkpoints" / "metadata"  # e.g. from a run killed before its first save
    stale.mkdir(parents=True)
    (stale / "_ROOT_METADATA").write_text(json.dumps({"custom_metadata": {"model": "resnet8_cifar"}}))
    checkpointer = train_checkpoint.Checkpointer("w", {"model": "eca_resnet8_cifar", "num_classes": 4})
    checkpointer.close()
    assert "eca_resnet8_cifar" in (stale / "_ROOT_METADATA").read_text()


# ----------------------------------------------------------------------------- the CLIs

@pytest.mark.slow
def test_evaluate_and_export_a_workdir_by_relative_paths(smoke, env):
    best = last_json(run(smoke, env, "eca_jax.evaluate", "--workdir", "workdirs/smoke", "--best").stdout)
    assert best["step"] in (4, 8) and best["num_examples"] == 360
    assert best["checkpoint"] == str(smoke / "workdirs" / "smoke" / "checkpoints" / str(best["step"]))
    four = last_json(run(smoke, env, "eca_jax.evaluate", "--checkpoint", "workdirs/smoke/checkpoints/4").stdout)
    assert four["step"] == 4
    assert run(smoke, env, "eca_jax.convert", "workdirs/smoke/", "my.pth", "--to", "torch").returncode == 0
    trained = training_checkpoints.load_variables(smoke / "workdirs" / "smoke" / "checkpoints" / "8")
    variables = convert.flax_from_torch_state_dict(convert.read_state_dict(smoke / "my.pth")[0], trained)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(trained)))


@pytest.mark.slow
def test_converted_directory_round_trip_and_predict_by_relative_paths(tmp_path, env, monkeypatch):
    from eca_jax.models import create_model
    module = create_model("eca_resnet8_cifar", num_classes=10)
    variables = module.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    convert.to_torch("eca_resnet8_cifar", variables, tmp_path / "x.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)).save(tmp_path / "img.png")
    run(tmp_path, env, "eca_jax.convert", "x.pth", "ckpt/x")
    assert convert.is_converted_dir(tmp_path / "ckpt" / "x")
    run(tmp_path, env, "eca_jax.convert", "ckpt/x", "y.pth", "--to", "torch")
    _, again = convert.from_torch(tmp_path / "y.pth")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)))
    out = json.loads(run(tmp_path, env, "eca_jax.predict", "img.png", "--checkpoint", "ckpt/x", "--json").stdout)
    assert out["model"] == "eca_resnet8_cifar" and len(out["results"][0]["top"]) == 5
    monkeypatch.chdir(tmp_path)  # the README's Python lines, in this process (one start-up less)
    loaded = checkpoints.load("ckpt/x")
    assert loaded.metadata["arch"] == "eca_resnet8_cifar" and loaded.module == module
    assert loaded.kind == "converted" and loaded.signature.model == "eca_resnet8_cifar"
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(variables)))
    from_file = checkpoints.load("x.pth")  # the same reader takes the PyTorch file
    assert from_file.kind == "torch" and from_file.signature == loaded.signature


def _wait_for_checkpoint(proc: subprocess.Popen, root, log, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not training_checkpoints.committed_steps(root):
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early:\n{log.read_text()[-3000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for the first checkpoint")
        time.sleep(0.2)


@pytest.mark.slow
def test_init_from_relative_and_one_trainer_per_workdir(smoke, env):
    # A long fine-tuning run from a relative init_from holds workdirs/ft ...
    ft = train_args("workdirs/ft", "--config.init_from=workdirs/smoke", "--config.eval_every_steps=100000",
                    "--config.checkpoint_every_steps=4")
    log = smoke / "first.log"
    with open(log, "w") as f:
        first = subprocess.Popen([sys.executable, "-m", *ft, "--config.total_steps=100000"], cwd=smoke, env=env,
                                 stdout=f, stderr=subprocess.STDOUT, text=True)
    root = smoke / "workdirs" / "ft" / "checkpoints"
    try:
        _wait_for_checkpoint(first, root, log)
        assert f"Initialised from {smoke / 'workdirs' / 'smoke'} (eca_resnet8_cifar" in log.read_text()
        first.send_signal(signal.SIGSTOP)  # still holds the workdir, no longer takes a CPU core
        # ... so a second trainer on it is refused at once ...
        second = run(smoke, env, *ft, "--config.total_steps=100000", ok=False)
        assert second.returncode == 1, second.stderr[-3000:]
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: workdir {smoke / 'workdirs' / 'ft'} is in use by another training process (pid {first.pid})")
        assert first.poll() is None
    finally:  # SIGKILL also ends a stopped process
        first.send_signal(signal.SIGKILL)
        first.wait()
    # ... and after kill -9 the next run takes the workdir over and resumes.
    last = training_checkpoints.committed_steps(root)[-1]
    proc = run(smoke, env, *ft, f"--config.total_steps={last + 2}")
    assert f"Resumed from {root}/{last} " in proc.stdout
    assert last_json(proc.stdout)["step"] == last + 2
