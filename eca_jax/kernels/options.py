"""``ImplOptions``: which implementation the models use for their convolutions and BatchNorm tails.

Every switch only chooses HOW a result is computed, never WHAT: parameters, their paths and shapes,
and the results (up to float rounding of sums) are the same either way. True (the default) is the
fast path on XLA:CPU; False is the plain baseline that experiments/PERFORMANCE.md measured it against.

    from eca_jax.kernels import ImplOptions
    model = create_model("eca_resnet50", impl=ImplOptions(hand_written_backward=False))
    ImplOptions.parse("pointwise_as_dot=false,depthwise_shifted=0")   # command-line form

The dataclass is frozen (hashable), so it can be a Flax module attribute and a static jit argument.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

from eca_jax.kernels.conv import conv_general_dilated

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class ImplOptions:
    """Implementation switches (all True by default = the fast paths).

    Attributes:
      pointwise_as_dot: 1x1 convs as a matrix product with a custom VJP
        (:func:`eca_jax.kernels.pointwise_conv`) instead of XLA's convolution.
      depthwise_shifted: depthwise convs as shifted multiply-adds on the CPU backend
        (:func:`eca_jax.kernels.depthwise_conv_shifted`) instead of XLA's grouped convolution.
      depthwise_rows_grad: the depthwise kernel gradient from row slices (True) or from the kh*kw
        shifted windows of the input (False).
      small_input_im2col: dense convs on inputs smaller than the kernel as im2col + dot on the
        CPU backend (:func:`eca_jax.kernels.small_input_conv`).
      hand_written_backward: BatchNorm [-> ECA gate] [+ residual] [-> act] in training as one op with a
        hand-written backward (:func:`eca_jax.nn.fused.batch_norm_act`) instead of the unfused layers
        under autodiff.
      fused_block_tail: the end of a residual block, BatchNorm -> ECA -> + shortcut -> ReLU
        (:func:`eca_jax.models.tail.block_tail`), as one fused BatchNorm op (True) or as the plain
        layers one after another: BatchNorm, the attention module's own call, add, activation (False).
    """
    pointwise_as_dot: bool = True
    depthwise_shifted: bool = True
    depthwise_rows_grad: bool = True
    small_input_im2col: bool = True
    hand_written_backward: bool = True
    fused_block_tail: bool = True

    def conv_kwargs(self) -> dict[str, bool]:
        """The keyword switches of :func:`eca_jax.kernels.conv_general_dilated`."""
        return dict(pointwise_as_dot=self.pointwise_as_dot, depthwise_shifted=self.depthwise_shifted,
                    depthwise_rows_grad=self.depthwise_rows_grad, small_input_im2col=self.small_input_im2col)

    @property
    def conv_general_dilated(self) -> Callable:
        """:func:`eca_jax.kernels.conv_general_dilated` with these switches bound (for ``nn.Conv``)."""
        return partial(conv_general_dilated, **self.conv_kwargs())

    @classmethod
    def parse(cls, text: str) -> "ImplOptions":
        """From ``"name=bool,name=bool"`` (bool: true/false, 1/0, yes/no, on/off); "" gives the defaults.

        Raises ValueError naming an unknown switch (with the valid ones) or a value that is not a bool.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        values = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip().lower()
            if name not in names:
                raise ValueError(f"unknown implementation switch {name!r}; valid: {', '.join(names)}")
            if not sep or value not in _TRUE + _FALSE:
                raise ValueError(f"implementation switch {name!r} takes true or false, got {item!r}")
            values[name] = value in _TRUE
        return cls(**values)

    def describe(self) -> str:
        """The switches that differ from the defaults, as ``parse`` reads them ("default" if none)."""
        changed = [f"{f.name}={str(getattr(self, f.name)).lower()}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return ",".join(changed) or "default"
