"""eca_jax.kernels: model-agnostic convolution and pooling kernels rewritten for XLA:CPU speed.

Each computes the same values (and gradients) as the ``jax.lax`` / ``flax.linen`` operation it
replaces; :class:`ImplOptions` holds the switches that pick a kernel or its plain baseline.

    from eca_jax.kernels import conv_general_dilated, max_pool_shifted, ImplOptions
    nn.Conv(..., conv_general_dilated=ImplOptions().conv_general_dilated)
"""
from eca_jax.kernels.conv import (conv_general_dilated, depthwise_conv_shifted, on_cpu, pointwise_conv,
                                  small_input_conv)
from eca_jax.kernels.options import ImplOptions
from eca_jax.kernels.pool import max_pool_shifted
from eca_jax.kernels.windows import conv_out_hw, shifted_windows

__all__ = ["conv_general_dilated", "depthwise_conv_shifted", "on_cpu", "pointwise_conv", "small_input_conv",
           "max_pool_shifted", "conv_out_hw", "shifted_windows", "ImplOptions"]
