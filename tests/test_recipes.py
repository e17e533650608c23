"""Today's training recipes in the trainer (issue 17): EMA, AdamW / LAMB, the recipe keys' checks,
and a run with every piece on that resumes exactly.

References: the EMA against its closed form; AdamW against ``torch.optim.AdamW`` (BatchNorm and
bias parameters in a group without weight decay, as timm's ``param_groups_weight_decay`` builds
it); LAMB against a NumPy transcription of the definition timm's ``Lamb`` implements (Adam moments
with bias correction, decoupled decay, trust ratio ||p|| / ||u|| on the decayed parameters only,
global-norm clipping to 1.0). Mixing and the losses are tested in test_mixing.py / test_losses.py,
RandAugment and erasing in test_augment.py, drop path in test_drop_path.py.
"""
from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eca_jax.train.config import make_config, validate_config
from eca_jax.train.ema import ema_decay_at, ema_update
from eca_jax.train.optim import make_optimizer


def _tree(rng: np.random.Generator) -> dict:
    """A parameter tree like a model's: conv kernel, dense kernel, BN scale and bias."""
    return {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
            "fc": {"kernel": rng.normal(size=(8, 5)).astype(np.float32),
                   "bias": rng.normal(size=(5,)).astype(np.float32)},
            "bn": {"scale": (1 + 0.1 * rng.normal(size=(8,))).astype(np.float32),
                   "bias": rng.normal(size=(8,)).astype(np.float32)}}


# ----------------------------------------------------------------------------- EMA

def test_ema_update_matches_its_closed_form():
    """ema_n = d^n ema_0 + (1 - d) sum_k d^(n-k) v_k for a constant decay d (float64 reference)."""
    rng = np.random.default_rng(0)
    decay, n = 0.9, 7
    ema0 = _tree(rng)
    values = [_tree(rng) for _ in range(n)]
    ema = jax.tree.map(jnp.asarray, ema0)
    for v in values:
        ema = ema_update(ema, jax.tree.map(jnp.asarray, v), decay)
    expected = jax.tree.map(
        lambda e0, *vs: decay ** n * e0.astype(np.float64) + (1 - decay) * sum(
            decay ** (n - k) * v.astype(np.float64) for k, v in enumerate(vs, start=1)),
        ema0, *values)
    for got, want in zip(jax.tree.leaves(ema), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # decay 1.0 leaves the average exactly as it was (the micro-steps of gradient accumulation)
    same = ema_update(ema, jax.tree.map(jnp.asarray, values[0]), 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(ema)))


def test_ema_warmup_is_tensorflows_num_updates_rule():
    for n in (0, 1, 5, 100, 10_000):
        want = min(0.999, (1 + n) / (10 + n))
        assert float(ema_decay_at(0.999, n, True)) == pytest.approx(want, rel=1e-6)
        assert float(ema_decay_at(0.999, n, False)) == pytest.approx(0.999, rel=1e-7)


def test_ema_in_the_train_step_moves_once_per_update():
    """With grad_accum_steps=2 the average moves on the second micro-step only, towards the
    updated weights and the batch statistics of that micro-step."""
    from eca_jax.models import create_model
    from eca_jax.train.recipe import Recipe
    from eca_jax.train.state import make_init_fn
    from eca_jax.train.step import make_train_step

    config = make_config(total_steps=4, grad_accum_steps=2, batch_size=8, learning_rate=0.1)
    tx, _ = make_optimizer(config, 10, 4)
    model = create_model("eca_resnet8_cifar", num_classes=10, widths=(4, 8, 8), stem_width=4)
    state = make_init_fn(model, tx, (1, 8, 8, 3), ema=True)(jax.random.PRNGKey(0))
    recipe = Recipe(ema_decay=0.75)
    step = jax.jit(make_train_step(model.apply, tx, 0.0, 1, recipe))
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32)}
    ema0 = state.ema
    state1, _ = step(state, batch)
    assert int(state1.step) == 0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state1.ema), jax.tree.leaves(ema0)))
    state2, _ = step(state1, batch)
    assert int(state2.step) == 1
    want = jax.tree.map(lambda e, v: 0.75 * e + 0.25 * v, ema0, state2.variables)
    for got, ref in zip(jax.tree.leaves(state2.ema), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-7)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state2.ema["params"]),
                                                        jax.tree.leaves(state2.params)))


# ----------------------------------------------------------------------------- optimizers

def _run_optax(config, params, grads_seq):
    tx, _ = make_optimizer(config, steps_per_epoch=10, total_steps=100)
    params = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(params)
    for g in grads_seq:
        updates, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def _grads(rng, like, n):
    return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), like) for _ in range(n)]


def test_adamw_equals_torch_adamw_with_the_usual_exclusions():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = _grads(rng, params, 5)
    config = make_config(total_steps=100, optimizer="adamw", learning_rate=3e-3, schedule="constant",
                         weight_decay=0.05, weight_decay_norm_and_bias=False, adam_b1=0.8, adam_b2=0.99)
    got = _run_optax(config, params, grads)

    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(p)) for p in leaves]
    decay = [t for t in tensors if t.ndim > 1]
    no_decay = [t for t in tensors if t.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.8, 0.99), eps=1e-8)
    for g in grads:
        for t, gl in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(gl)
        opt.step()
    want = jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def _lamb_reference(params, grads_seq, *, lr, wd, b1, b2, eps, clip):
    """timm's Lamb, transcribed from its definition in float64: clip the global gradient norm,
    Adam moments with bias correction, + wd * p on decayed (ndim > 1) parameters, and for those
    the trust ratio ||p|| / ||update|| (1 when either norm is 0); p -= lr * ratio * update."""
    leaves, treedef = jax.tree.flatten(params)
    p = [x.astype(np.float64) for x in leaves]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, g_tree in enumerate(grads_seq, start=1):
        g = [x.astype(np.float64) for x in jax.tree.leaves(g_tree)]
        norm = np.sqrt(sum((x ** 2).sum() for x in g))
        g = [x * min(1.0, clip / norm) for x in g]
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi ** 2
            update = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
            ratio = 1.0
            if p[i].ndim > 1:
                update = update + wd * p[i]
                w_norm, u_norm = np.linalg.norm(p[i]), np.linalg.norm(update)
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            p[i] = p[i] - lr * ratio * update
    return jax.tree.unflatten(treedef, p)


def test_lamb_equals_timms_definition():
    rng = np.random.default_rng(2)
    params = _tree(rng)
    grads = [jax.tree.map(lambda g: 3 * g, x) for x in _grads(rng, params, 5)]  # norms > 1: clipped
    config = make_config(total_steps=100, optimizer="lamb", learning_rate=5e-3, schedule="constant",
                         weight_decay=0.02, weight_decay_norm_and_bias=False, grad_clip_norm=1.0)
    got = _run_optax(config, params, grads)
    want = _lamb_reference(params, grads, lr=5e-3, wd=0.02, b1=0.9, b2=0.999, eps=1e-6, clip=1.0)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=1e-6)
    # BatchNorm/bias leaves took plain Adam steps (each at most about lr per element)
    moved = np.abs(np.asarray(got["bn"]["bias"]) - params["bn"]["bias"])
    assert 5e-3 < float(moved.max()) <= 5 * 5e-3 * 1.01


# ----------------------------------------------------------------------------- config checks

@pytest.mark.parametrize("overrides, names", [
    (dict(optimizer="lmab"), ["config.optimizer", "lamb"]),
    (dict(loss="focal"), ["config.loss", "bce"]),
    (dict(bce_target_threshold=0.2), ["config.bce_target_threshold", "config.loss='bce'"]),
    (dict(mixup_alpha=-0.1), ["config.mixup_alpha"]),
    (dict(cutmix_alpha=1.0, batch_size=2, grad_accum_steps=2), ["cutmix_alpha", "grad_accum_steps", ">= 2"]),
    (dict(mix_prob=1.5), ["config.mix_prob"]),
    (dict(random_erasing=2.0), ["config.random_erasing"]),
    (dict(ema_decay=1.0), ["config.ema_decay"]),
    (dict(ema_warmup=True), ["config.ema_warmup", "config.ema_decay"]),
    (dict(adam_eps=1e-6), ["config.adam_eps", "sgd"]),
    (dict(train_interpolation="nearest"), ["config.train_interpolation"]),
    (dict(randaugment="rand-m9-x3"), ["config.randaugment", "x"]),
])
def test_bad_recipe_combinations_name_their_keys(overrides, names):
    config = make_config(**{"total_steps": 10, "batch_size": 8, **overrides})
    with pytest.raises(ValueError) as info:
        validate_config(config)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


# ----------------------------------------------------------------------------- a run with all of it

def _modern(data_dir, **overrides):
    base = dict(
        model="eca_resnet8_cifar", model_kwargs=dict(widths=(4, 8, 8), stem_width=4,
                                                      drop_path_rate=0.1, drop_rate=0.1),
        dataset="digits", data_dir=str(data_dir), image_size=16, eval_image_size=20,
        augment="inception_crop_flip", randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25,
        train_interpolation="bicubic", batch_size=16, grad_accum_steps=2, total_steps=4,
        eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1, progress="none",
        optimizer="lamb", learning_rate=5e-3, weight_decay=0.02, weight_decay_norm_and_bias=False,
        grad_clip_norm=1.0, schedule="cosine", warmup_steps=2, loss="bce", bce_target_threshold=0.2,
        mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, ema_decay=0.9, ema_warmup=True,
        async_checkpointing=False)
    base.update(overrides)
    return make_config(**base)


class _StopAfter:
    """The eca_jax.data module, except that the train stream sends this process SIGTERM (the
    trainer's preemption signal) while the loop fetches batch ``n``."""

    def __init__(self, n: int):
        from eca_jax import data
        self._data, self._n = data, n

    def __getattr__(self, name):
        return getattr(self._data, name)

    def make_train_iterator(self, *args, **kwargs):
        inner, n = self._data.make_train_iterator(*args, **kwargs), self._n

        class _It:
            count = 0

            def __iter__(self):
                return self

            def __next__(self):
                self.count += 1
                if self.count == n:
                    os.kill(os.getpid(), signal.SIGTERM)
                return next(inner)

            def get_state(self):
                return inner.get_state()

        return _It()


def _state_arrays(workdir, step):
    from eca_jax.checkpoints import load
    raw, ema = load(workdir, step=step), load(workdir, step=step, ema=True)
    return raw.variables, ema.variables


@pytest.fixture(scope="module")
def modern_run(tmp_path_factory):
    from eca_jax.train.loop import train_and_evaluate
    root = tmp_path_factory.mktemp("modern")
    result = train_and_evaluate(_modern(root / "data"), str(root / "straight"))
    return root, result


@pytest.mark.slow
def test_everything_on_resumes_exactly(modern_run):
    """RandAugment + erasing + bicubic crops, mixup/CutMix, BCE with threshold, LAMB with
    clipping, drop path + dropout, EMA with warmup, gradient accumulation: stopped by SIGTERM
    after update 2 (micro-batch 4) and resumed, the run ends bit for bit where the uninterrupted
    one does (weights, BatchNorm statistics, EMA)."""
    from eca_jax.train.loop import train_and_evaluate
    root, straight = modern_run
    assert straight["step"] == 4 and "eval_ema_top1" in straight
    workdir = str(root / "resumed")
    first = train_and_evaluate(_modern(root / "data"), workdir, data_module=_StopAfter(4))
    assert first["preempted"] and first["step"] == 2
    second = train_and_evaluate(_modern(root / "data"), workdir)
    assert second["step"] == 4 and not second["preempted"]
    want_raw, want_ema = _state_arrays(str(root / "straight"), 4)
    got_raw, got_ema = _state_arrays(workdir, 4)
    for got, want in ((got_raw, want_raw), (got_ema, want_ema)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert np.array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got_raw), jax.tree.leaves(got_ema)))


@pytest.mark.slow
def test_ema_weights_are_what_evaluate_and_export_select(modern_run, tmp_path):
    """evaluate --ema reproduces the loop's EMA metrics; convert --to torch --ema writes the EMA
    weights; a run without EMA refuses --ema with a message that names config.ema_decay."""
    from eca_jax.checkpoints import CheckpointReadError, load
    from eca_jax.convert.__main__ import main as convert_main
    from eca_jax.evaluate import evaluate_checkpoint
    root, straight = modern_run
    workdir = str(root / "straight")
    result = evaluate_checkpoint(workdir, ema=True)
    assert result["ema"] and result["step"] == 4
    assert result["top1"] == pytest.approx(straight["eval_ema_top1"], abs=1e-6)
    assert result["loss"] == pytest.approx(straight["eval_ema_loss"], rel=1e-5)
    raw = evaluate_checkpoint(workdir)
    assert raw["loss"] == pytest.approx(straight["eval_loss"], rel=1e-5)

    torch = pytest.importorskip("torch")
    out = tmp_path / "ema.pth"
    assert convert_main([workdir, str(out), "--to", "torch", "--ema"]) == 0
    state_dict = torch.load(out, weights_only=True)
    ema = load(workdir, ema=True).variables
    fc = ema["params"]["fc"]["kernel"] if "fc" in ema["params"] else None
    if fc is not None:
        np.testing.assert_array_equal(state_dict["fc.weight"].numpy(), np.asarray(fc).T)

    from train_helpers import SyntheticData, tiny_config

    from eca_jax.train.loop import train_and_evaluate
    plain = tmp_path / "plain"  # the smallest run without an EMA
    train_and_evaluate(tiny_config(total_steps=1, eval_every_steps=1, checkpoint_every_steps=1,
                                   async_checkpointing=False), str(plain), data_module=SyntheticData())
    with pytest.raises(CheckpointReadError, match="config.ema_decay"):
        load(str(plain), ema=True)


# ----------------------------------------------------------------------------- the RSB configs

def _rsb(arg):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "configs", "imagenet_rsb.py")
    spec = importlib.util.spec_from_file_location("_config_imagenet_rsb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("arg, size, params", [
    ("a2", 224, 25_576_264 + 86), ("a3", 160, 25_576_264 + 86),
    ("a2,eca_resnet50", 224, 25_557_032 + 80), ("a3,eca_resnet50", 160, 25_557_032 + 80)])
def test_rsb_configs_load_validate_and_build(arg, size, params):
    """Both procedures for both models: valid, the recipe's keys as published, the architecture's
    exact parameter count (drop path adds none), LAMB's state built abstractly."""
    from test_configs import abstract_build
    config = _rsb(arg)
    validate_config(config)
    assert config.image_size == size and config.eval_image_size == 224
    assert (config.optimizer, config.loss, config.bce_target_threshold) == ("lamb", "bce", 0.2)
    assert (config.mixup_alpha, config.cutmix_alpha, config.batch_size) == (0.1, 1.0, 2048)
    state, logits = abstract_build(config)
    assert logits.shape == (2, 1000)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)) == params
    with pytest.raises(ValueError, match="unknown procedure 'a1'"):
        _rsb("a1")
