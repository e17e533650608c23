"""eca_jax.kernels.conv: the rewritten 1x1 and depthwise convs equal XLA's convolution, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eca_jax.kernels import conv


def _xla_conv(x, w, stride, pad, groups=1):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn,
                                        feature_group_count=groups)


def _ours(x, w, stride, pad, groups=1, **switches):
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    return conv.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn,
                                     feature_group_count=groups, **switches)


def _inputs(shape, kshape, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, shape), jax.random.normal(kw, kshape) * 0.3


def _check(x, w, stride, pad, groups=1, tol=1e-5):
    """Values and both gradients of a non-linear loss agree with XLA's convolution."""
    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w, stride, pad, groups)))
    np.testing.assert_allclose(_ours(x, w, stride, pad, groups), _xla_conv(x, w, stride, pad, groups),
                               rtol=tol, atol=tol)
    g_ref = jax.grad(loss(_xla_conv), argnums=(0, 1))(x, w)
    g_new = jax.grad(loss(_ours), argnums=(0, 1))(x, w)
    for a, b in zip(g_new, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,hw", [(1, (7, 9)), (2, (8, 8)), (2, (9, 7))])
def test_pointwise_matches_xla(stride, hw):
    x, w = _inputs((2,) + hw + (5,), (1, 1, 5, 6))
    _check(x, w, stride, ((0, 0), (0, 0)))


@pytest.mark.parametrize("k,stride,hw", [(3, 1, (7, 9)), (3, 2, (8, 8)), (3, 2, (9, 7)), (5, 1, (6, 6)), (5, 2, (11, 7))])
def test_depthwise_matches_xla(k, stride, hw):
    c = 4
    x, w = _inputs((2,) + hw + (c,), (k, k, 1, c), seed=k + stride)
    _check(x, w, stride, ((k // 2, k // 2),) * 2, groups=c)


@pytest.mark.parametrize("k,stride,hw", [(3, 1, (2, 2)), (3, 2, (2, 2)), (3, 1, (1, 1)), (3, 1, (2, 5)), (5, 1, (3, 4))])
def test_small_input_conv_matches_xla(k, stride, hw):
    """Inputs smaller than the kernel (YNNPACK declines them): im2col + dot."""
    x, w = _inputs((3,) + hw + (6,), (k, k, 6, 5), seed=k * 10 + stride)
    _check(x, w, stride, ((k // 2, k // 2),) * 2)


def test_depthwise_kernel_grad_formulations_agree():
    """The row-slice kernel gradient equals the per-tap-window one (the experiment switch)."""
    x, w = _inputs((2, 9, 7, 3), (3, 3, 1, 3), seed=3)
    pad = ((1, 1), (1, 1))
    grads = [jax.grad(lambda w: jnp.sum(jnp.cos(_ours(x, w, 2, pad, 3, depthwise_rows_grad=rows))))(w)
             for rows in (True, False)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switch,x_shape,w_shape,stride,pad,groups", [
    ("pointwise_as_dot", (2, 8, 8, 5), (1, 1, 5, 6), 2, ((0, 0), (0, 0)), 1),
    ("depthwise_shifted", (2, 8, 8, 4), (3, 3, 1, 4), 1, ((1, 1), (1, 1)), 4),
    ("small_input_im2col", (2, 2, 2, 6), (3, 3, 6, 5), 1, ((1, 1), (1, 1)), 1),
])
def test_switched_off_paths_are_xlas_convolution(switch, x_shape, w_shape, stride, pad, groups):
    """switch=False hands exactly that case to XLA; the default (True) takes the rewrite, same values."""
    x, w = _inputs(x_shape, w_shape, seed=7)
    off = jax.jit(lambda x, w: _ours(x, w, stride, pad, groups, **{switch: False}))
    np.testing.assert_array_equal(off(x, w), jax.jit(lambda x, w: _xla_conv(x, w, stride, pad, groups))(x, w))
    assert "convolution" in off.lower(x, w).as_text()
    on = jax.jit(lambda x, w: _ours(x, w, stride, pad, groups))
    assert "convolution" not in on.lower(x, w).as_text()
    np.testing.assert_allclose(on(x, w), off(x, w), rtol=1e-5, atol=1e-5)


def test_impl_options_bind_the_switches():
    from eca_jax.kernels import ImplOptions
    opts = ImplOptions.parse("pointwise_as_dot=false, hand_written_backward=0")
    assert opts == ImplOptions(pointwise_as_dot=False, hand_written_backward=False)
    assert hash(opts) == hash(ImplOptions(pointwise_as_dot=False, hand_written_backward=False))
    assert opts.describe() == "pointwise_as_dot=false,hand_written_backward=false"
    assert ImplOptions.parse("") == ImplOptions() and ImplOptions().describe() == "default"
    assert opts.conv_general_dilated.keywords == dict(pointwise_as_dot=False, depthwise_shifted=True,
                                                      depthwise_rows_grad=True, small_input_im2col=True)
    with pytest.raises(ValueError, match="unknown implementation switch 'pointwise'.*valid: pointwise_as_dot"):
        ImplOptions.parse("pointwise=false")
    with pytest.raises(ValueError, match="takes true or false"):
        ImplOptions.parse("depthwise_shifted=maybe")


def test_bfloat16_depthwise_accumulates_in_float32():
    x, w = _inputs((1, 6, 6, 8), (3, 3, 1, 8), seed=5)
    ref = _xla_conv(x, w, 1, ((1, 1), (1, 1)), 8)
    out = _ours(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, ((1, 1), (1, 1)), 8)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_other_convs_fall_through_to_xla():
    x, w = _inputs((2, 8, 8, 3), (3, 3, 3, 4))
    np.testing.assert_array_equal(_ours(x, w, 2, ((1, 1), (1, 1))), _xla_conv(x, w, 2, ((1, 1), (1, 1))))
    # grouped but not depthwise (2 groups of 2 channels)
    x, w = _inputs((1, 5, 5, 4), (3, 3, 2, 4))
    np.testing.assert_array_equal(_ours(x, w, 1, ((1, 1), (1, 1)), 2), _xla_conv(x, w, 1, ((1, 1), (1, 1)), 2))
