"""The block tail (last BN -> attention -> + shortcut -> activation): fused op vs the plain layers.

``ImplOptions(fused_block_tail=False)`` runs the tail layer by layer (BatchNorm, the attention
module's own ``__call__``, add, activation); the default runs it as one fused BatchNorm op. Both must
have the same variables (paths, shapes, initial values) and, with the same variables, the same
results in float32: eval logits and train logits / running statistics within a relative error of
1e-5 (max |fused - plain| / max |plain|), the parameter gradients within 1e-4 (L2, all leaves
together) and each gradient leaf within 2e-3 of its own largest entry.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eca_jax.kernels import ImplOptions
from eca_jax.models import create_model
from eca_jax.models.layers import batch_norm
from eca_jax.models.tail import block_tail, fuses
from eca_jax.nn.attention import SE, make_attention
from eca_jax.nn.eca import ECA

PLAIN = ImplOptions(fused_block_tail=False)
OUTPUT_RTOL = 1e-5      # logits and running statistics, float32
GRAD_RTOL = 1e-4        # all parameter gradients together (L2 norm of the difference / L2 norm), float32
# Every gradient leaf against its own largest entry. Looser: a k=1 ECA kernel's gradient is ONE
# sum over N * C cancelling terms (measured 2.6e-4 in eca_mobilenet_v2); test_fused.py compares
# the two backward passes in float64 at 1e-8.
GRAD_LEAF_RTOL = 2e-3

# id -> (registered name, overrides, image size). The ImageNet nets get 64x64 (2x2 at stride 32):
# training-mode BatchNorm over 1x1 maps of a few samples is ill-conditioned (two samples normalise
# to exactly +-1), so rounding would decide. On 2 busy cores even the CIFAR nets take 15-60 s
# (four compiles each), so the fast tier keeps one; CECA, SE and ReLU6 have fast tests below.
MODELS = {"eca_resnet8_cifar": ("eca_resnet8_cifar", {}, 32)}
SLOW_MODELS = {
    "ceca_resnet8_cifar": ("eca_resnet8_cifar", {"attn": "ceca"}, 32),
    "se_resnet8_cifar": ("resnet8_cifar", {"attn": "se", "attn_scope": "se", "attn_kwargs": {"reduction": 4}}, 32),
    "resnet8_cifar": ("resnet8_cifar", {}, 32),
    "eca_resnet18": ("eca_resnet18", {}, 64),
    "ecaresnet26t": ("ecaresnet26t", {}, 64),          # timm: deep stem, avg-pool shortcut, scope "se"
    "eca_mobilenet_v2": ("eca_mobilenet_v2", {}, 64),
}
# resnet18, se_resnet50 (2.5 min) and eca_mobilenet_v2 (86 s) passed too; left out of the
# whole-model comparison in CI for the suite's time budget: their tails (none; SE; ECA + residual
# without activation) are the resnet8_cifar and se_resnet8_cifar cases and
# test_block_tail_relu6_circular below.
# eca_resnet18 (41 s in the CI run of 2026-11-30) passed too and is left out likewise: its basic
# blocks have eca_resnet8_cifar's tails; ecaresnet26t keeps an ImageNet net at 64 px in CI.
NOT_COMPARED_IN_CI = {"eca_mobilenet_v2", "eca_resnet18"}


def _models(key: str) -> tuple[nn.Module, nn.Module]:
    name, overrides, _ = {**MODELS, **SLOW_MODELS}[key]
    fused = create_model(name, num_classes=10, **overrides)
    return fused, fused.clone(impl=PLAIN)


def _perturbed(variables, seed: int = 3):
    """Random, non-identity BatchNorm parameters and running statistics (other leaves unchanged)."""
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[0].key == "batch_stats":
            return jnp.asarray(0.3 * noise if "mean" in name else np.exp(0.5 * noise))     # var > 0
        if leaf.ndim == 1 and "scale" in name:
            return jnp.asarray(1.0 + 0.3 * noise)
        if leaf.ndim == 1 and "bias" in name:
            return leaf + 0.2 * noise
        return leaf
    return jax.tree_util.tree_map_with_path(perturb, variables)


def _input(n: int = 4, size: int = 32) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (n, size, size, 3)) * 1.3 + 0.4     # non-zero mean


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _shapes(tree):
    return {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_model(key: str) -> None:
    fused, plain = _models(key)
    x = _input(size={**MODELS, **SLOW_MODELS}[key][2])
    variables = jax.jit(fused.init)(jax.random.key(1), x[:1])
    plain_variables = jax.jit(plain.init)(jax.random.key(1), x[:1])
    # Same variable tree (paths, shapes) and the same initial values.
    assert _shapes(variables) == _shapes(plain_variables)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(plain_variables)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    variables = _perturbed(variables)

    eval_fused = jax.jit(fused.apply)(variables, x)
    eval_plain = jax.jit(plain.apply)(variables, x)
    assert float(np.std(eval_plain)) > 1e-3, "logits too flat to compare"
    assert _rel_err(eval_fused, eval_plain) < OUTPUT_RTOL

    labels = jnp.arange(x.shape[0]) % 10

    def train_grads(model):
        def loss(params):
            logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                        train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), labels]), (logits, state)
        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    grads, (logits, state) = train_grads(fused)
    grads_ref, (logits_ref, state_ref) = train_grads(plain)
    assert _rel_err(logits, logits_ref) < OUTPUT_RTOL
    assert _shapes(state) == _shapes(state_ref)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(state_ref)):
        assert _rel_err(a, b) < OUTPUT_RTOL, jax.tree_util.keystr(path)
    assert _shapes(grads) == _shapes(grads_ref)
    flat, flat_ref = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(t)]) for t in (grads, grads_ref))
    assert np.linalg.norm(flat - flat_ref) / np.linalg.norm(flat_ref) < GRAD_RTOL
    worst = max((_rel_err(a, b), jax.tree_util.keystr(path))
                for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref)))
    assert worst[0] < GRAD_LEAF_RTOL, f"{worst[1]}: relative error {worst[0]:.2e}"


@pytest.mark.parametrize("key", sorted(MODELS))
def test_fused_and_plain_tail_agree(key):
    _check_model(key)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(set(SLOW_MODELS) - NOT_COMPARED_IN_CI))
def test_fused_and_plain_tail_agree_slow(key):
    _check_model(key)


def _attention_calls(model: nn.Module, x: jax.Array) -> dict:
    """How often each attention class's ``__call__`` runs in one ``init``."""
    calls: dict = {}

    def count(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (ECA, SE)):
            calls[type(context.module).__name__] = calls.get(type(context.module).__name__, 0) + 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(count):
        jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return calls


@pytest.mark.parametrize("key, attention, blocks", [("eca_resnet8_cifar", "ECA", 3),
                                                    ("eca_mobilenet_v2", "ECA", 17),
                                                    ("se_resnet8_cifar", "SE", 3)])
def test_the_switch_picks_the_attention_modules_own_call(key, attention, blocks):
    """Plain: every block runs the attention module's ``__call__``. Fused: ECA never runs its own
    call (its kernel goes into the BatchNorm op); SE always does."""
    fused, plain = _models(key)
    x = jnp.zeros((1, 32, 32, 3))
    assert _attention_calls(plain, x) == {attention: blocks}
    assert _attention_calls(fused, x) == ({} if attention == "ECA" else {attention: blocks})


def test_switch_parses_and_decides_in_one_place():
    assert ImplOptions.parse("fused_block_tail=false") == PLAIN
    assert PLAIN.describe() == "fused_block_tail=false" and ImplOptions().fused_block_tail
    eca, se = make_attention("eca", k_size=3), make_attention("se", reduction=4)
    assert fuses(None) and fuses(eca) and fuses(make_attention("ceca", k_size=3))
    assert not fuses(se) and not fuses(None, PLAIN) and not fuses(eca, PLAIN)


class _Tail(nn.Module):
    """One tail on a feature map: ECA (circular) and ReLU6 are not used by the registered models."""
    impl: ImplOptions = ImplOptions()

    @nn.compact
    def __call__(self, z, shortcut, train: bool = False):
        return block_tail(batch_norm(train, name="bn", impl=self.impl), make_attention("ceca", k_size=5, name="eca"),
                          z, shortcut, act="relu6", impl=self.impl)


@pytest.mark.parametrize("train", [False, True])
def test_block_tail_relu6_circular(train):
    z = jax.random.normal(jax.random.key(0), (3, 5, 4, 16)) * 2 + 0.5
    shortcut = jax.random.normal(jax.random.key(1), z.shape) * 3
    variables = _perturbed(_Tail().init(jax.random.key(2), z, shortcut))
    assert _shapes(variables) == _shapes(_Tail(PLAIN).init(jax.random.key(2), z, shortcut))
    assert set(_shapes(variables["params"])) == {"['bn']['bias']", "['bn']['scale']", "['eca']['conv']['kernel']"}
    outs = [_Tail(impl).apply(variables, z, shortcut, train=train, mutable=["batch_stats"])
            for impl in (ImplOptions(), PLAIN)]
    (out, state), (out_ref, state_ref) = outs
    assert float(jnp.mean((out_ref > 0) & (out_ref < 6))) > 0.2      # both clips active, not saturated
    assert _rel_err(out, out_ref) < OUTPUT_RTOL
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_ref)):
        assert _rel_err(a, b) < OUTPUT_RTOL


def test_block_tail_rejects_a_mismatched_shortcut():
    z = jnp.ones((2, 4, 4, 8))
    with pytest.raises(ValueError, match="shortcut shape"):
        _Tail(PLAIN).init(jax.random.key(0), z, z[:, :2])
