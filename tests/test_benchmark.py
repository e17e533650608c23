"""experiments/benchmark.py works end to end at a tiny size (no timing assertions)."""
import csv
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import benchmark as bm  # noqa: E402

TINY = bm.Setup(batch_size=2, image_size=64, dtype="fp32", device="cpu")


def test_weights_copied_from_torch_give_the_same_logits():
    """The eca_jax model with the PyTorch reference's weights computes the same logits."""
    spec = bm.MODELS["eca_resnet10_tiny"]
    torch_model = spec.torch_builder(0)
    batch = bm.make_batch(TINY, 10)
    c_jax = bm.jax_contender("eca_resnet10_tiny", spec, torch_model, batch, TINY, "infer")
    c_torch = bm.torch_contender("eca_resnet10_tiny", torch_model, batch, TINY, "infer", compiled=False)
    assert c_jax.logits.shape == (2, 10)
    assert np.abs(c_jax.logits).max() > 1e-3  # not a trivially zero output
    np.testing.assert_allclose(c_jax.logits, c_torch.logits, rtol=1e-4, atol=1e-4)


def test_weight_mapping_rejects_another_architecture():
    spec = bm.MODELS["resnet10_tiny"]
    torch_model = bm.MODELS["eca_resnet10_tiny"].torch_builder(0)  # has ECA kernels the Flax model lacks
    with pytest.raises(ValueError, match="unexpected, first .layer1.0.eca.conv.weight"):
        bm.jax_contender("resnet10_tiny", spec, torch_model, bm.make_batch(TINY, 10), TINY, "infer")


def test_train_steps_update_the_weights(monkeypatch):
    """The jax contender runs the trainer's own step (eca_jax.train.step) with the trainer's optimizer;
    PyTorch's SGD follows the same recipe, so both take the same steps from the same weights."""
    import eca_jax.train.step as train_step_lib
    built = []
    make = train_step_lib.make_train_step
    monkeypatch.setattr(train_step_lib, "make_train_step", lambda *a, **k: built.append(a) or make(*a, **k))
    spec = bm.MODELS["resnet10_tiny"]
    torch_model = spec.torch_builder(0)
    batch = bm.make_batch(TINY, 10)
    c_jax = bm.jax_contender("resnet10_tiny", spec, torch_model, batch, TINY, "train")
    c_torch = bm.torch_contender("resnet10_tiny", torch_model, batch, TINY, "train", compiled=False)
    assert len(built) == 1
    losses_jax = [float(c_jax.step()) for _ in range(3)]
    losses_torch = [float(c_torch.step()) for _ in range(3)]
    assert all(np.isfinite(losses_jax + losses_torch))
    assert losses_jax[-1] != losses_jax[0] and losses_torch[-1] != losses_torch[0]
    # (both contenders took one step when built, their first call)
    np.testing.assert_allclose(losses_jax, losses_torch, rtol=1e-3)


def test_trainer_optimizer_is_the_release_recipe():
    config, _ = bm.trainer_optimizer(TINY)
    assert (config.learning_rate, config.momentum, config.weight_decay, config.schedule) == (TINY.lr, 0.9, 1e-4, "step")


def test_impl_switches_reach_the_model():
    """Setup.impl (--impl) builds the model with those ImplOptions; same logits as the default build."""
    from eca_jax.kernels import ImplOptions
    spec = bm.MODELS["eca_resnet10_tiny"]
    torch_model = spec.torch_builder(0)
    batch = bm.make_batch(TINY, 10)
    setup = bm.dataclasses.replace(TINY, impl="pointwise_as_dot=false,hand_written_backward=false")
    c_default = bm.jax_contender("eca_resnet10_tiny", spec, torch_model, batch, TINY, "infer")
    c_plain = bm.jax_contender("eca_resnet10_tiny", spec, torch_model, batch, setup, "infer")
    np.testing.assert_allclose(c_plain.logits, c_default.logits, rtol=1e-4, atol=1e-4)
    # the 1x1 shortcut convs stay XLA convolutions instead of becoming dots
    assert c_plain.compiled.as_text().count(" convolution(") > c_default.compiled.as_text().count(" convolution(")
    assert ImplOptions.parse(setup.impl) == ImplOptions(pointwise_as_dot=False, hand_written_backward=False)


def test_run_group_report_and_files(tmp_path):
    rows = []
    for mode in ("infer", "train"):
        rows += bm.run_group(["eca_resnet10_tiny", "resnet10_tiny"], mode, TINY, ["jax", "torch_eager"],
                             repeats=1, min_sample_s=0.0, warmup_steps=1, log=lambda s: None)
    assert len(rows) == 8
    jax_eca = next(r for r in rows if r["model"] == "eca_resnet10_tiny" and r["mode"] == "train"
                   and r["framework"] == "jax")
    assert jax_eca["images_per_s"] > 0 and np.isfinite(jax_eca["speedup_vs_torch_eager"])
    assert np.isfinite(jax_eca["eca_overhead"])
    meta = dict(bm.machine_info("cpu"), command="pytest", date="2000-01-01 00:00", device="cpu", threads=1,
                batch_size=2, image_size=64, dtype="fp32", repeats=1, xla_flags="")
    csv_path, md_path = bm.write_results(rows, meta, str(tmp_path))
    with open(csv_path) as f:
        assert len(list(csv.DictReader(f))) == 8
    table = open(md_path).read()
    assert "| eca_resnet10_tiny | train |" in table and "ECA overhead" in table


def test_groups_pair_eca_models_with_their_plain_twins():
    assert bm.groups_of(["eca_resnet50", "resnet50", "mobilenet_v2", "eca_mobilenet_v2"]) == \
        [["eca_resnet50", "resnet50"], ["eca_mobilenet_v2", "mobilenet_v2"]]
    assert bm.groups_of(["resnet50"]) == [["resnet50"]]


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        bm.parse_args(["--models", "not_a_model"])
    with pytest.raises(SystemExit):
        bm.parse_args(["--modes", "fly"])
