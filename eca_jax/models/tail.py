"""The tail of a residual block, in the ECA paper's order: last BatchNorm -> attention -> + shortcut -> activation.

    y = bn(z)                 # the residual branch's last BatchNorm (z: its last conv's output)
    y = attention(y)          # ECA / CECA / SE ... : y * sigmoid(f(mean_hw y)), or nothing
    y = y + shortcut          # identity or downsample(x), or nothing (MobileNetV2's strided blocks)
    return act(y)             # ReLU in ResNets, none after MobileNetV2's projection

:func:`block_tail` is the one place that chooses how this is computed (``impl.fused_block_tail``):

* unfused: the four lines above, layer by layer: the BatchNorm module without fusion arguments,
  the attention module's own ``__call__`` (``ECA.__call__``, ``SE.__call__`` ...), an add and
  the activation;
* fused (the default, measured faster on CPU): one :class:`eca_jax.nn.fused.BatchNormAct` call
  that applies the ECA gate, the add and the activation in the same op, for no attention, ECA
  and CECA. Other attentions (SE and the Table-2 variants) always take the unfused path.

Both create the same variables (BatchNorm ``scale``/``bias``/``mean``/``var``; ECA's kernel at
``<attn>/conv/kernel`` through ``ECA.kernel``) and compute the same results up to float rounding.
"""
from __future__ import annotations

from typing import Any, Optional

import jax

from eca_jax.kernels import ImplOptions
from eca_jax.nn.eca import ECA
from eca_jax.nn.fused import BatchNormAct


def activation(y: jax.Array, act: Optional[str]) -> jax.Array:
    """``act`` of :mod:`eca_jax.nn.fused` as a plain layer: "relu", "relu6" or None (identity)."""
    if act == "relu":
        return jax.nn.relu(y)
    if act == "relu6":
        return jax.nn.relu6(y)
    if act is None:
        return y
    raise ValueError(f"block_tail: act must be 'relu', 'relu6' or None, got {act!r}")


def fuses(attention: Optional[Any], impl: ImplOptions = ImplOptions(), eca_types: tuple = (ECA,)) -> bool:
    """Whether :func:`block_tail` runs as one fused op for this attention and these switches.

    ``eca_types``: the classes whose gate the fused op can apply (linen's ECA/CECA; ``eca_jax.nnx``
    passes its own)."""
    return impl.fused_block_tail and (attention is None or isinstance(attention, eca_types))


def block_tail(norm: BatchNormAct, attention: Optional[Any], z: jax.Array,
               shortcut: Optional[jax.Array], act: Optional[str] = "relu",
               impl: ImplOptions = ImplOptions(), eca_types: tuple = (ECA,)) -> jax.Array:
    """``act(attention(norm(z)) + shortcut)``: the end of a residual block (see the module docstring).

    Args:
      norm: the branch's last BatchNorm (:func:`eca_jax.models.layers.batch_norm`).
      attention: an attention module (:func:`eca_jax.nn.make_attention`) or None.
      z: (N, H, W, C), the branch's last conv output. shortcut: None or an array shaped like ``z``.
      act: "relu", "relu6" or None. impl: ``impl.fused_block_tail`` picks the implementation.
      eca_types: see :func:`fuses` (the same function serves ``eca_jax.nnx``'s blocks).
    """
    if shortcut is not None and shortcut.shape != z.shape:
        raise ValueError(f"block_tail: shortcut shape {tuple(shortcut.shape)} != branch shape {tuple(z.shape)}")
    if fuses(attention, impl, eca_types):
        if attention is None:
            return norm(z, residual=shortcut, act=act)
        # ECA.kernel creates the same <attn>/conv/kernel parameter as ECA.__call__ would.
        return norm(z, residual=shortcut, eca_kernel=attention.kernel, act=act, eca_padding=attention.padding)
    y = norm(z)
    if attention is not None:
        y = attention(y)
    if shortcut is not None:
        y = y + shortcut
    return activation(y, act)
