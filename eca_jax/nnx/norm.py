"""``BatchNormAct`` as a native ``flax.nnx`` module: BatchNorm [-> ECA gate] [+ residual] [-> act].

The nnx twin of :class:`eca_jax.nn.BatchNormAct`: the same variables (``nnx.Param`` ``scale``/``bias``
and ``nnx.BatchStat`` ``mean``/``var``, all (C,)), the same pure functions
(:func:`eca_jax.nn.batch_norm_act` in training with its hand-written backward,
:func:`eca_jax.nn.batch_norm_act_inference` with the running statistics), the same running-average
update (``momentum`` is the weight of the old value; biased batch variance).

``use_running_average`` is the mode: ``model.train()`` sets it False, ``model.eval()`` True.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from eca_jax.nn import checks
from eca_jax.nn.fused import (_check_activation, batch_norm_act, batch_norm_act_autodiff,
                              batch_norm_act_inference)
from eca_jax.nnx.attention import check_channels


class BatchNormAct(nnx.Module):
    """BatchNorm over the last axis of ``(N, *spatial, C)`` that can fuse an ECA gate, a residual
    add and an activation: ``out = act(bn(z) * sigmoid(conv1d_k(mean bn(z))) + residual)``.

    Call: ``bn(z, residual=None, eca_kernel=None, act=None, eca_padding="zero")``; ``eca_kernel``
    is None, a (k,) / (k, 1, 1) array or a callable of the channel count (e.g. ``ECA(...).kernel``).
    """

    def __init__(self, num_features: int, *, use_running_average: bool = False, momentum: float = 0.99,
                 epsilon: float = 1e-5, dtype: Any = None, param_dtype: Any = jnp.float32,
                 scale_init: Callable = nnx.initializers.ones, bias_init: Callable = nnx.initializers.zeros,
                 hand_written_backward: bool = True, rngs: Optional[nnx.Rngs] = None):
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype
        self.hand_written_backward = hand_written_backward
        key = jax.random.key(0) if rngs is None else rngs.params()   # the inits are constants
        self.scale = nnx.Param(scale_init(key, (num_features,), param_dtype))
        self.bias = nnx.Param(bias_init(key, (num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, z: jax.Array, residual: Optional[jax.Array] = None,
                 eca_kernel: Union[None, jax.Array, Callable[[int], jax.Array]] = None,
                 act: Optional[str] = None, eca_padding: str = "zero") -> jax.Array:
        check_channels(z, self.num_features, type(self).__name__)
        _check_activation(act)
        checks.check_padding(eca_padding)
        if callable(eca_kernel):
            eca_kernel = eca_kernel(self.num_features)
        if residual is not None and residual.shape != z.shape:
            raise ValueError(f"BatchNormAct: residual shape {tuple(residual.shape)} != input shape {tuple(z.shape)}")
        if self.dtype is not None:
            z = z.astype(self.dtype)
        scale, bias = self.scale[...], self.bias[...]
        if self.use_running_average:
            return batch_norm_act_inference(z, scale, bias, self.mean[...], self.var[...], residual, eca_kernel,
                                            act, eca_padding, self.epsilon)
        train_fn = batch_norm_act if self.hand_written_backward else batch_norm_act_autodiff
        out, mean, var = train_fn(z, scale, bias, residual, eca_kernel, act, eca_padding, self.epsilon)
        self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
        self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
        return out
