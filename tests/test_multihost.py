"""Four hosts and host faults, simulated: 4 processes x 2 CPU devices on 127.0.0.1 (jax.distributed,
gloo collectives), launched through the trainer's own command line
(``python -m eca_jax.train --coordinator_address ... --num_processes 4 --process_id I``) on the real
digits pipeline (experiments/configs/smoke.py at 8x8, tests/train_helpers.MULTIHOST_OVERRIDES).

The 1-process reference runs in this process on 8 devices with train_helpers.EmulatedHosts(4):
the same eca_jax.data pipelines, built as hosts 0..3 build them, stacked into the same global
batches. So "4 processes equal 1" compares the distributed run (collectives, per-host input,
multi-process checkpoints) with one process, batch for batch; a host that read other examples
than its shard would break the equality. Coverage (each epoch's examples once across hosts) is
checked on the same emulated pipelines.

Every process runs in its own session and is killed with its process group in ``finally``;
every wait has a timeout. All tests are slow (several fresh Pythons each).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from eca_jax import data
from eca_jax.checkpoints.training import CHECKPOINT_DIRNAME, committed_steps, load_variables, resolve_step_dir
from eca_jax.data import digits as digits_lib
from eca_jax.train.loop import train_and_evaluate
from train_helpers import CACHE_EVERY_COMPILE, MULTIHOST_OVERRIDES, SMOKE_CONFIG, EmulatedHosts, free_port, smoke_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "train_worker.py")
HOSTS = 4
HEARTBEAT_S = 10  # --heartbeat_timeout_seconds of the fault tests (the trainer's default is 100)
LAUNCH_TIMEOUT_S = 280
HUNG_AFTER_S = 200  # run_cli(retry_hung=True): rerun a launch still running after this


# ----------------------------------------------------------------------------- launching


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of every child process: CPU, every compile kept in the run's persistent cache, the digits
    written once (before any process starts) under a temporary data_dir."""
    root = tmp_path_factory.mktemp("multihost")
    data_dir = str(root / "tfds")
    data.prepare("digits", data_dir=data_dir)
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # TF_CPP_MIN_LOG_LEVEL=1 keeps XLA's warnings (e.g. a collective waiting for its peers) in the logs.
    e.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
             **CACHE_EVERY_COMPILE,
             JAX_DISABLE_MOST_OPTIMIZATIONS=str(bool(jax.config.read("jax_disable_most_optimizations"))),
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), e.get("PYTHONPATH", "")]))
    return {"env": e, "data_dir": data_dir}


def _overrides(env, **extra) -> dict:
    return {**MULTIHOST_OVERRIDES, "data_dir": env["data_dir"], **extra}


def _config_flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


class Hosts:
    """N processes of one run; ``reap()`` kills whatever is left, with its process group."""

    def __init__(self, cmds: list[list[str]], env: dict, devices: int, log_dir):
        self.logs = [open(os.path.join(log_dir, f"process_{i}.log"), "w+") for i in range(len(cmds))]
        others = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
        e = {**env, "XLA_FLAGS": " ".join([f"--xla_force_host_platform_device_count={devices}", *others])}
        self.procs = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
                      for c, log in zip(cmds, self.logs)]

    def log(self, i: int) -> str:
        self.logs[i].flush()
        with open(self.logs[i].name) as f:
            return f.read()

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S, procs=None) -> list[int]:
        """Return codes once ``procs`` (default: all) have ended. Past ``timeout`` the processes
        still running get SIGABRT, so that Python's faulthandler (PYTHONFAULTHANDLER in ``env``)
        writes every thread's stack to their logs, and the failure shows those logs."""
        deadline = time.monotonic() + timeout
        for p in procs if procs is not None else self.procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running after {timeout:.0f} s:\n{self.dump_stacks()}") from None
        return [p.returncode for p in self.procs]

    def dump_stacks(self) -> str:
        """Each running process's native and Python stacks (py-spy, where installed), then its
        Python stacks from faulthandler (SIGABRT), then the tail of every log."""
        running = [i for i, p in enumerate(self.procs) if p.poll() is None]
        native = {i: _native_stacks(self.procs[i].pid) for i in running}
        for i in running:
            self.procs[i].send_signal(signal.SIGABRT)
        for i in running:
            try:
                self.procs[i].wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        return "\n".join(f"--- process {i} ({'was running' if i in running else f'rc {p.returncode}'}):\n"
                         f"{native.get(i, '')}{self.log(i)[-6000:]}" for i, p in enumerate(self.procs))

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)
        for log in self.logs:
            log.close()


def _native_stacks(pid: int) -> str:
    """``py-spy dump --native`` of one process (C++ frames show which XLA/gloo wait it is in);
    empty when py-spy is not installed or cannot attach."""
    if not shutil.which("py-spy"):
        return ""
    try:
        out = subprocess.run(["py-spy", "dump", "--native", "--pid", str(pid)], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "(py-spy timed out)\n"
    return f"native stacks (py-spy):\n{out.stdout[-8000:]}{out.stderr[-500:]}\n"


def launch_cli(env, workdir, log_dir, n: int = HOSTS, overrides: dict | None = None) -> Hosts:
    """``python -m eca_jax.train`` as n processes of one run (2 devices each)."""
    port = free_port()
    cmds = [[sys.executable, "-m", "eca_jax.train", "--config", SMOKE_CONFIG, "--workdir", str(workdir),
             *_config_flags(overrides or _overrides(env)),
             f"--coordinator_address=127.0.0.1:{port}", f"--coordinator_bind_address=127.0.0.1:{port}",
             f"--num_processes={n}", f"--process_id={i}", f"--heartbeat_timeout_seconds={HEARTBEAT_S}",
             "--initialization_timeout=120"] for i in range(n)]
    os.makedirs(log_dir, exist_ok=True)
    return Hosts(cmds, env["env"], 2, log_dir)


def run_cli(env, workdir, log_dir, *, retry_hung: bool = False, **kw) -> list[str]:
    """Runs n processes of one run to the end; all must exit 0. Returns their logs.

    ``retry_hung``: a launch that hangs is reported as a warning (every process's native and
    Python stacks) and rerun once from scratch (workdir emptied). Seen twice in full-suite runs
    (CI, 2026-11-30; a local run, 2026-12-01): every process waited in the step-12 eval, while the
    other test worker shared the 2 cores; never in 16 runs alone or beside 2 busy loops. The trainer
    issues its collectives in the same order on every process, so the suspect is the simulation's
    CPU collectives (XLA:CPU with gloo, 2 devices per process); the warning keeps the evidence. A
    wrong result, a crash or a second hang still fails."""
    hosts = launch_cli(env, workdir, log_dir, **kw)
    hung = None
    try:
        try:
            # The 4-process run takes 65-80 s alone, 108 s beside the other test worker: 200 s
            # ends a hang early enough that the rerun keeps the test near 5 minutes.
            rcs = hosts.wait(timeout=HUNG_AFTER_S if retry_hung else LAUNCH_TIMEOUT_S)
        except AssertionError as e:
            if not retry_hung:
                raise
            hung = e
        logs = [hosts.log(i) for i in range(len(hosts.procs))]
    finally:
        hosts.reap()
    if hung is not None:
        warnings.warn(f"a {len(hosts.procs)}-process launch hung; rerunning it once. {hung}")
        shutil.rmtree(workdir, ignore_errors=True)
        return run_cli(env, workdir, f"{log_dir}_rerun", **kw)
    assert rcs == [0] * len(rcs), "\n".join(f"--- process {i} (rc {rc}):\n{log[-3000:]}"
                                            for i, (rc, log) in enumerate(zip(rcs, logs)))
    return logs


def last_json(log: str) -> dict:
    return json.loads([line for line in log.splitlines() if line.startswith("{")][-1])


def wait_for_step(workdir, hosts: Hosts, above: int, timeout: float = LAUNCH_TIMEOUT_S) -> int:
    """Waits until a checkpoint step > ``above`` is committed; returns the newest committed step."""
    ckpt, deadline = os.path.join(workdir, CHECKPOINT_DIRNAME), time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = committed_steps(ckpt)
        if steps and steps[-1] > above:
            return steps[-1]
        dead = [i for i, p in enumerate(hosts.procs) if p.poll() is not None]
        assert not dead, f"process {dead[0]} ended early:\n{hosts.log(dead[0])[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {above} within {timeout} s:\n{hosts.dump_stacks()}")


def train_losses(workdir, key: str = "train_loss") -> dict[int, float]:
    """{step: value} of one column of the run's metrics.csv (rows where it is set)."""
    rows = [r.split(",") for r in open(os.path.join(workdir, "metrics.csv")).read().splitlines()]
    col = rows[0].index(key)
    return {int(r[0]): float(r[col]) for r in rows[1:] if r[col]}


def assert_same_training(got: dict[int, float], ref: dict[int, float]) -> None:
    """Per-step train losses of two runs on the same batches. Steps 1-8 agree to 1e-5; after
    that float32 rounding differences (gloo's cross-process all-reduce sums in another order
    than XLA's in-process one) grow under SGD at lr 0.05 with BatchNorm over 4-example device
    batches: measured 2e-4 relative at step 12 (2026-11-30). A host reading other examples than
    the reference would move a step's loss by about 1e-2."""
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    np.testing.assert_allclose([got[s] for s in range(1, 9)], [ref[s] for s in range(1, 9)], rtol=1e-5)
    np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-3)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over all leaves together (per leaf, BatchNorm biases of norm ~0.01 show
    the rounding drift of assert_same_training as up to 1e-2: 7e-5 absolute, measured)."""
    la, lb = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(np.linalg.norm(la - lb) / np.linalg.norm(lb))


# ----------------------------------------------------------------------------- the runs

@pytest.fixture(scope="module")
def four_hosts(env, tmp_path_factory):
    """The uninterrupted 12-step run of 4 processes through the CLI: (workdir, result, logs)."""
    root = tmp_path_factory.mktemp("four_hosts")
    logs = run_cli(env, root / "w", root / "logs", retry_hung=True)
    return root / "w", last_json(logs[0]), logs


@pytest.fixture(scope="module")
def one_process(env, tmp_path_factory):
    """The same run in this process on 8 devices (mesh data 4 x fsdp 2), the data as 4 hosts read it."""
    workdir = tmp_path_factory.mktemp("one_process") / "w"
    config = smoke_config(**_overrides(env, progress="none"))
    result = train_and_evaluate(config, str(workdir), data_module=EmulatedHosts(HOSTS))
    return workdir, result


# ----------------------------------------------------------------------------- four hosts

# 200-234 s (fixtures: the 4-process launch and the in-process reference; 2 CPU cores shared
# with other jobs, load average ~8, 2026-11-30).
def test_four_hosts_equal_one_process(four_hosts, one_process):
    w4, r4, logs = four_hosts
    w1, r1 = one_process
    assert "on 8 devices, mesh {'data': 4, 'fsdp': 2}" in logs[0]
    assert r4["step"] == r1["step"] == 12 and not r4["preempted"]
    l4, l1 = train_losses(w4), train_losses(w1)
    assert_same_training(l4, l1)
    assert len(set(round(v, 4) for v in l4.values())) > 6  # the losses move: not a constant
    v4, v1 = load_variables(resolve_step_dir(w4)), load_variables(resolve_step_dir(w1))
    assert rel_err(v4, v1) < 2e-3  # see assert_same_training (measured 4.3e-4)
    # Eval: 360 test digits with batch 48 (7.5 batches; 90 per host, 8 local batches of 12 with 6
    # padded rows each): each counted once, and the same top-1 as the single process.
    assert r4["num_examples"] == r1["num_examples"] == 360
    for key in ("eval_top1", "eval_top5", "eval_loss"):
        e4, e1 = train_losses(w4, key), train_losses(w1, key)
        assert sorted(e4) == sorted(e1) == [6, 12]
        np.testing.assert_allclose(e4[6], e1[6], rtol=1e-5)  # before the drift
        np.testing.assert_allclose(e4[12], e1[12], rtol=1e-3)
    assert round(r4["eval_top1"] * 360) == round(r1["eval_top1"] * 360)
    assert os.path.isdir(os.path.join(resolve_step_dir(w4), "state", f"ocdbt.process_{HOSTS - 1}"))


def _example_ids(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row of ``reference`` (N, 64) that each image (B, 8, 8, C) is, by its channel-0 pattern
    standardised per image (so any normalisation (x - m) / s of the pipeline cancels)."""
    def z(a):
        a = a.reshape(len(a), -1).astype(np.float64)
        return (a - a.mean(1, keepdims=True)) / np.maximum(a.std(1, keepdims=True), 1e-9)
    za, zr = z(images[..., 0]), z(reference)
    dist = ((za[:, None, :] - zr[None]) ** 2).sum(-1)
    ids = dist.argmin(1)
    assert np.all(dist[np.arange(len(ids)), ids] < 1e-6), "an image is no digit of the split"
    return ids


# 5-8 s (data only, in this process).
def test_each_epoch_sees_every_example_once_across_hosts(env):
    train = digits_lib.digits_arrays()["train"]
    reference = train["image"][..., 0]
    assert len(np.unique(reference.reshape(len(reference), -1), axis=0)) == len(reference)
    config = smoke_config(**_overrides(env))
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    it = EmulatedHosts(HOSTS).make_train_iterator(
        "digits", global_batch_size=config.batch_size, image_size=8, seed=0, sharding=sharding,
        data_dir=env["data_dir"], augment="none")
    shard_sizes = [360, 359, 359, 359]  # tfds.even_splits of 1437 train digits over 4 hosts
    steps = it.hosts[0].steps_per_epoch
    assert steps == min(shard_sizes) // (config.batch_size // HOSTS) == 44
    for epoch in range(2):
        per_host = [[] for _ in range(HOSTS)]
        for _ in range(steps):
            for h, batch in enumerate(it.local_batches()):
                ids = _example_ids(batch["image"], reference)
                assert np.array_equal(train["label"][ids], batch["label"])
                per_host[h] += ids.tolist()
        seen = np.concatenate(per_host)
        assert len(seen) == len(set(seen.tolist())), f"epoch {epoch}: an example seen twice"
        # Left out this epoch: each host's shard remainder (shard size - 44 * 8), nothing else.
        assert len(train["label"]) - len(seen) == sum(n - steps * 8 for n in shard_sizes) == 29
        for a in range(HOSTS):
            for b in range(a):
                assert not set(per_host[a]) & set(per_host[b]), "two hosts share examples"
        if epoch == 0:
            first = per_host
    assert all(a != b for a, b in zip(first, per_host)), "each epoch is shuffled anew"
    for h in range(HOSTS):  # a host only ever reads its own shard, in both epochs
        assert len(set(first[h]) | set(per_host[h])) <= shard_sizes[h]


# ----------------------------------------------------------------------------- host faults

# 320-404 s on the loaded 2 cores above (three 4-process launches); measured there: SIGTERM to
# one process -> all 4 exited in 17-19 s, SIGKILL of one -> the 3 others exited in 7.6-9.0 s.
def test_sigterm_to_one_host_then_sigkill_of_one_host_resume_exactly(env, four_hosts, tmp_path):
    w4, _, _ = four_hosts
    workdir = tmp_path / "w"
    # 1. SIGTERM to process 1 only, once step 3 is committed: all stop at one step, save, exit 0.
    hosts = launch_cli(env, workdir, tmp_path / "logs_term")
    try:
        wait_for_step(workdir, hosts, above=0)
        t_term = time.monotonic()
        hosts.procs[1].send_signal(signal.SIGTERM)
        rcs = hosts.wait()
        term_s = time.monotonic() - t_term
        logs = [hosts.log(i) for i in range(HOSTS)]
    finally:
        hosts.reap()
    assert rcs == [0] * HOSTS, "\n".join(log[-2000:] for log in logs)
    stopped = last_json(logs[0])
    assert stopped["preempted"] and 3 <= stopped["step"] < 12
    assert committed_steps(workdir / CHECKPOINT_DIRNAME)[-1] == stopped["step"]  # all 4 committed it
    assert f"SIGTERM: saved step {stopped['step']}" in logs[0]
    # 2. Rerun; SIGKILL process 2 once a later step is committed: the others exit non-zero,
    #    with a message, within the heartbeat timeout instead of hanging in a collective.
    hosts = launch_cli(env, workdir, tmp_path / "logs_kill")
    try:
        wait_for_step(workdir, hosts, above=stopped["step"])
        t_kill = time.monotonic()
        os.killpg(hosts.procs[2].pid, signal.SIGKILL)
        survivors = [p for i, p in enumerate(hosts.procs) if i != 2]
        rcs = hosts.wait(timeout=HEARTBEAT_S + 90, procs=survivors)
        kill_s = time.monotonic() - t_kill
        logs = [hosts.log(i) for i in range(HOSTS)]
    finally:
        hosts.reap()
    last = committed_steps(workdir / CHECKPOINT_DIRNAME)[-1]
    assert stopped["step"] < last < 12
    for i in (0, 1, 3):
        assert rcs[i] != 0, logs[i][-2000:]
        assert ("a collective with the other processes failed" in logs[i]
                or "JAX distributed service detected fatal errors" in logs[i]), logs[i][-2000:]
    # 3. Rerun all: resumes from the last committed step and ends where the uninterrupted run did.
    logs = run_cli(env, workdir, tmp_path / "logs_resume")
    assert f"Resumed from {workdir / CHECKPOINT_DIRNAME}/{last} " in logs[0]
    assert last_json(logs[0])["step"] == 12
    # Same processes, mesh and batches as the uninterrupted run: equal to float32 rounding (measured:
    # bit-identical losses and weights after resuming twice, 2026-11-30).
    ref, got = train_losses(w4), train_losses(workdir)
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-6)
    assert rel_err(load_variables(resolve_step_dir(workdir)), load_variables(resolve_step_dir(w4))) < 1e-6
    print(f"\nSIGTERM to one process -> all 4 exited: {term_s:.1f} s; SIGKILL of one -> the 3 "
          f"others exited: {kill_s:.1f} s (heartbeat timeout {HEARTBEAT_S} s)")


# 80-129 s (one in-process run, one 2-process launch).
def test_checkpoint_of_four_hosts_restores_on_one_and_two_processes(env, four_hosts, tmp_path):
    """Step 6 of the 4-process run, restored on 1 process (mesh data 8) and on 2 processes x 2
    devices (mesh data 1 x fsdp 4), trains step 7 on the same batch: the same loss as the 4
    processes' own step 7."""
    w4, _, _ = four_hosts
    expected = train_losses(w4)[7]
    restored = {}
    for name in ("one", "two"):
        workdir = tmp_path / name
        shutil.copytree(w4 / CHECKPOINT_DIRNAME / "6", workdir / CHECKPOINT_DIRNAME / "6")
        shutil.copytree(w4 / CHECKPOINT_DIRNAME / "metadata", workdir / CHECKPOINT_DIRNAME / "metadata")
        restored[name] = workdir
    one = _overrides(env, total_steps=7, progress="none", **{"mesh.fsdp": 1})
    result = train_and_evaluate(smoke_config(**one), str(restored["one"]), data_module=EmulatedHosts(HOSTS))
    assert result["step"] == 7
    two = _overrides(env, total_steps=7, progress="none", **{"mesh.fsdp": 4, "mesh.data": 1})
    port = free_port()
    cmds = [[sys.executable, WORKER, "--workdir", str(restored["two"]), "--config", json.dumps(two),
             "--emulate_hosts", str(HOSTS), "--devices", "2", "--coordinator", f"127.0.0.1:{port}",
             "--num_processes", "2", "--process_id", str(i)] for i in range(2)]
    hosts = Hosts(cmds, env["env"], 2, tmp_path)
    try:
        rcs = hosts.wait()
        logs = [hosts.log(i) for i in range(2)]
    finally:
        hosts.reap()
    assert rcs == [0, 0], "\n".join(log[-3000:] for log in logs)
    for name, workdir in restored.items():
        losses = train_losses(workdir)
        assert sorted(losses) == [7], (name, losses)
        # Measured: bit-identical to the 4 processes' step 7 on both (2026-11-30).
        assert abs(losses[7] - expected) <= 2e-6 * abs(expected), (name, losses[7], expected)
    # The tolerance tells neighbouring steps apart (steps 6 and 7 differ by 4.4e-5 relative).
    assert abs(train_losses(w4)[6] - expected) > 10 * 2e-6 * abs(expected)
