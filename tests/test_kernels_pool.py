"""eca_jax.kernels.pool: the shifted-slice max pool equals nn.max_pool's values and PyTorch's
gradient (the first maximum of each window in row-major order), ties included."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from eca_jax.kernels import pool
from eca_jax.models import layers

STEM = ((3, 3), (2, 2), ((1, 1), (1, 1)))   # MaxPool2d(3, stride=2, padding=1)


def _inputs(kind, shape, seed=0):
    """float32 NHWC; ``kind``: normal (tie-free, almost surely), relu (many windows of exact zeros),
    int (0, 1, 2: ties everywhere), zeros, or ties (a batch of relu, int and zeros samples)."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        parts = [_inputs(k, (1,) + tuple(shape[1:]), seed + i) for i, k in enumerate(("relu", "int", "zeros"))]
        return np.concatenate([parts[i % 3] for i in range(shape[0])])
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(shape), 0)
    elif kind == "int":
        x = rng.integers(0, 3, shape)
    else:
        x = np.zeros(shape)
    return x.astype(np.float32)


def _cotangent(shape, seed=1):
    """Small integers: every sum of them is exact, whatever the order."""
    return np.random.default_rng(seed).integers(-3, 4, shape).astype(np.float32)


def _ours(x, window, strides, padding):
    return pool.max_pool_shifted(x, window, strides, padding)


def _flax(x, window, strides, padding):
    return nn.max_pool(x, window, strides=strides, padding=padding)


def _vjp(f, x, dy, window, strides, padding):
    """Jitted (value, input gradient) of ``f`` for the output cotangent ``dy``."""
    def run(x, dy):
        y, pull = jax.vjp(lambda x: f(x, window, strides, padding), x)
        return y, pull(dy)[0]
    return jax.jit(run)(jnp.asarray(x), jnp.asarray(dy))


def _torch_grad(x, dy, window, strides, padding):
    """PyTorch's max-pool input gradient for NHWC ``x`` and ``dy`` (symmetric padding)."""
    assert all(lo == hi for lo, hi in padding)
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, window, strides, tuple(p[0] for p in padding))
    yt.backward(torch.tensor(np.transpose(dy, (0, 3, 1, 2))))
    return np.transpose(xt.grad.numpy(), (0, 2, 3, 1))


def _out_shape(x_shape, window, strides, padding):
    n, h, w, c = x_shape
    return (n, (h + sum(padding[0]) - window[0]) // strides[0] + 1,
            (w + sum(padding[1]) - window[1]) // strides[1] + 1, c)


@pytest.mark.parametrize("shape", [(2, 112, 112, 3), (2, 113, 113, 2), (2, 7, 7, 5), (2, 8, 9, 4),
                                   (2, 1, 1, 2), (2, 2, 3, 2)])
def test_values_equal_nn_max_pool(shape):
    x = jnp.asarray(np.concatenate([_inputs("normal", (1,) + shape[1:]), _inputs("relu", (1,) + shape[1:])]))
    ours, ref = jax.jit(_ours, static_argnums=(1, 2, 3))(x, *STEM), _flax(x, *STEM)
    assert ours.shape == ref.shape == _out_shape(shape, *STEM)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("shape", [(3, 112, 112, 3), (3, 113, 113, 2), (3, 7, 7, 5), (3, 8, 9, 4),
                                   (3, 1, 1, 2), (3, 2, 3, 2)])
def test_gradient_equals_torch_with_ties(shape):
    """Ties (zeros after a ReLU, small integers) route each output's gradient to the first maximum."""
    x = _inputs("ties", shape)
    dy = _cotangent(_out_shape(shape, *STEM))
    _, dx = _vjp(_ours, x, dy, *STEM)
    np.testing.assert_array_equal(dx, _torch_grad(x, dy, *STEM))


@pytest.mark.parametrize("shape", [(2, 112, 112, 3), (1, 113, 113, 2), (2, 7, 8, 5)])
def test_gradient_equals_jax_without_ties(shape):
    x = _inputs("normal", shape)
    dy = np.random.default_rng(2).standard_normal(_out_shape(shape, *STEM)).astype(np.float32)
    y, dx = _vjp(_ours, x, dy, *STEM)
    y_ref, dx_ref = _vjp(_flax, x, dy, *STEM)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)   # sums of up to 4 gradients, any order


def test_jax_max_pool_gradient_tie_rule_is_first_max():
    """What the docstring claims of nn.max_pool's own gradient (select_and_scatter_add, select ge) on
    XLA:CPU: the first maximum in row-major window order, like PyTorch."""
    x = _inputs("ties", (3, 9, 10, 3))
    dy = _cotangent(_out_shape(x.shape, *STEM))
    np.testing.assert_array_equal(_vjp(_flax, x, dy, *STEM)[1], _torch_grad(x, dy, *STEM))


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), ((0, 0), (0, 0))),
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((5, 5), (2, 2), ((2, 2), (2, 2))),
    ((3, 2), (3, 1), ((1, 1), (0, 0))),
    ((1, 1), (2, 2), ((0, 0), (0, 0))),
])
def test_other_windows_and_strides(window, strides, padding):
    x = _inputs("ties", (3, 11, 10, 3), seed=sum(window) + sum(strides))
    dy = _cotangent(_out_shape(x.shape, window, strides, padding))
    y, dx = _vjp(_ours, x, dy, window, strides, padding)
    np.testing.assert_array_equal(y, _flax(jnp.asarray(x), window, strides, padding))
    np.testing.assert_array_equal(dx, _torch_grad(x, dy, window, strides, padding))


def test_asymmetric_padding_matches_jax():
    window, strides, padding = (3, 3), (2, 2), ((0, 1), (1, 2))
    x = _inputs("normal", (2, 8, 9, 3))
    dy = _cotangent(_out_shape(x.shape, window, strides, padding))
    y, dx = _vjp(_ours, x, dy, window, strides, padding)
    y_ref, dx_ref = _vjp(_flax, x, dy, window, strides, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)


def test_all_minus_inf_windows_route_to_first_input_like_torch():
    """nn.max_pool routes these gradients into the -inf padding (drops them); PyTorch and we do not."""
    x = np.full((1, 5, 6, 2), -np.inf, np.float32)
    x[0, 3:, 4:, :] = 1.0   # some windows finite, the others all -inf
    dy = _cotangent(_out_shape(x.shape, *STEM))
    y, dx = _vjp(_ours, x, dy, *STEM)
    np.testing.assert_array_equal(y, _flax(jnp.asarray(x), *STEM))
    np.testing.assert_array_equal(dx, _torch_grad(x, dy, *STEM))


def test_bfloat16():
    x = _inputs("ties", (3, 13, 12, 4)).astype(jnp.bfloat16)
    dy = _cotangent(_out_shape(x.shape, *STEM)).astype(jnp.bfloat16)
    y, dx = _vjp(_ours, x, dy, *STEM)
    assert y.dtype == dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, _flax(jnp.asarray(x), *STEM))
    # bfloat16 inputs are exact in float32; small integer gradients sum exactly in both.
    expected = _torch_grad(np.asarray(x, np.float32), np.asarray(dy, np.float32), *STEM)
    np.testing.assert_array_equal(np.asarray(dx, np.float32), expected)


def test_under_jit_grad_and_vmap():
    x = jnp.asarray(_inputs("relu", (3, 2, 9, 9, 2)))

    def loss(x):
        return jnp.sum(jnp.sin(jax.vmap(lambda xi: pool.max_pool_shifted(xi))(x)))
    g = jax.jit(jax.grad(loss))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(jax.vmap(lambda xi: _flax(xi, *STEM))(x))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def test_stem_pool_uses_it_on_cpu():
    x = _inputs("ties", (3, 10, 9, 3))
    dy = _cotangent(_out_shape(x.shape, *STEM))
    grad = jax.grad(lambda x: jnp.vdot(layers.max_pool_3x3_s2(x), dy))
    cpu = jax.jit(grad).lower(x).as_text()   # chosen by the lowering platform (both are traced)
    assert "select_and_scatter" not in cpu and "reduce_window" not in cpu
    tpu = jax.jit(grad).trace(x).lower(lowering_platforms=("tpu",)).as_text()
    assert "select_and_scatter" in tpu or "reduce_window" in tpu     # nn.max_pool there
    np.testing.assert_array_equal(jax.jit(grad)(x), _torch_grad(x, dy, *STEM))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank 4"):
        pool.max_pool_shifted(jnp.zeros((4, 4, 2)))
    with pytest.raises(TypeError, match="floating"):
        pool.max_pool_shifted(jnp.zeros((1, 4, 4, 2), jnp.int32))
    with pytest.raises(ValueError, match="padding"):
        pool.max_pool_shifted(jnp.zeros((1, 4, 4, 2)), (3, 3), (2, 2), ((3, 3), (1, 1)))
    with pytest.raises(ValueError, match="does not fit"):
        pool.max_pool_shifted(jnp.zeros((1, 1, 1, 2)), (3, 3), (2, 2), ((0, 0), (0, 0)))
