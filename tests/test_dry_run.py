"""The dry run (``python -m eca_jax.train ... --dry_run``): its per-device bytes are the bytes the
real sharded train state holds on each device, its compiled-step figures add up, and it names
unknown datasets instead of guessing."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from eca_jax.train import dry_run as D
from eca_jax.train.config import make_config


def _config(**overrides):
    base = dict(model="eca_resnet8_cifar", model_kwargs=dict(widths=(4, 8, 8), stem_width=4), dataset="digits",
                image_size=8, batch_size=16, total_epochs=3.0, mesh=dict(data=2, fsdp=4), fsdp_min_size=64,
                progress="none")
    base.update(overrides)
    return make_config(**base)


def _actual_bytes_per_device(tree) -> dict:
    """Sum of ``shard.data.nbytes`` over each device's addressable shards of every array in ``tree``."""
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


@pytest.mark.parametrize("fsdp", [1, 4])
def test_bytes_per_device_equal_the_real_sharded_state(fsdp):
    """Build the real state (jit(init, out_shardings)) on the 8 CPU devices and sum its shards."""
    from eca_jax.train.export import plan_without_data
    from eca_jax.train.state import init_state

    config = _config(mesh=dict(data=8 // fsdp, fsdp=fsdp))
    report = D.dry_run(config, compile=False)
    sizes = D.KNOWN_DATASETS["digits"]
    plan = plan_without_data(config, sizes.num_train, sizes.num_classes)
    state = init_state(plan.init_fn, jax.random.PRNGKey(0), plan.shardings)
    actual = _actual_bytes_per_device((state.params, state.opt_state))
    assert len(actual) == 8
    predicted = D.bytes_per_device((plan.abstract.params, plan.abstract.opt_state),
                                   (plan.shardings.params, plan.shardings.opt_state))
    assert predicted == actual  # every device, exactly
    assert report["state_bytes"]["params_and_opt_state"] == max(actual.values())
    assert report["state_bytes"]["params"] == max(_actual_bytes_per_device(state.params).values())
    whole = sum(x.nbytes for x in jax.tree.leaves(state))
    assert report["state_bytes"]["checkpoint"] == whole
    if fsdp == 1:  # replicated: every device holds everything
        assert max(actual.values()) == sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    else:  # FSDP shards the large kernels: each device holds well under the whole
        assert max(actual.values()) < 0.5 * sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))


def test_report_on_digits_prints_every_field():
    report = D.dry_run(_config(), steps_per_second=4.0, compile=False)
    text = D.format_report(report)
    for needle in ("devices: 8 cpu in 1 process(es); mesh {'data': 2, 'fsdp': 4}",
                   "batch: global 16, per host 16, per device 2",
                   "steps: 89 per epoch, 267 in total (3.00 epochs)",  # 1437 // 16 = 89
                   "per device: params ", "params+optimizer", "checkpoint:",
                   "4 steps/s = 64 images/s per host -> 0.2 CPU cores per host"):
        assert needle in text, (needle, text)
    assert "compiled train step" not in text
    assert report["input"]["cores_per_host"] == pytest.approx(64 / D.INPUT_IMAGES_PER_CPU_SECOND)


@pytest.mark.slow  # about 15 s on 2 CPU cores (compiles the FSDP train step for 8 devices)
def test_compiled_step_memory_adds_up():
    """XLA's per-device arguments of the compiled step are exactly the state's shards plus the
    batch's on one device (uint8 images, as the trainer ships them); the state is donated."""
    report = D.dry_run(_config(), steps_per_second=4.0)
    assert "compiled train step per device (XLA memory_analysis, cpu)" in D.format_report(report)
    b, m = report["state_bytes"], report["step_memory"]
    state_per_device = b["params_and_opt_state"] + b["batch_stats"] + 4 + 8  # + step int32, rng uint32 (2,)
    batch_per_device = 2 * 8 * 8 * 3 + 2 * 4  # uint8 images, int32 labels
    assert m["argument"] == state_per_device + batch_per_device
    assert m["total"] >= m["argument"] and m["alias"] > 0  # the state is donated


def test_imagenet_sizes_need_no_data_and_unknown_datasets_are_named(tmp_path):
    config = _config(dataset="imagenet2012", data_dir=str(tmp_path), batch_size=256, total_epochs=2.0,
                     mesh=dict(data=8, fsdp=1))
    report = D.dry_run(config, compile=False)
    assert (report["num_train"], report["num_eval"]) == (1_281_167, 50_000)
    assert (report["steps_per_epoch"], report["total_steps"]) == (5004, 10008)  # 1281167 // 256
    assert report["per_device_batch"] == 32
    with pytest.raises(ValueError, match="sizes of dataset 'cifar10' are not known"):
        D.dry_run(_config(dataset="cifar10", data_dir=str(tmp_path)), compile=False)
    with pytest.raises(ValueError, match="steps_per_second"):
        D.dry_run(config, steps_per_second=0.0, compile=False)
    np.testing.assert_equal(D.KNOWN_DATASETS["digits"].num_train, 1437)
