"""eca_jax.nn: the public layer API (Flax linen, NHWC).

    import eca_jax.nn as enn
    y = enn.ECA()(x)                       # adaptive k from C; enn.ECA(k_size=3) fixes it
    y = enn.eca_gate(x, kernel)            # the same computation as a pure function
    attn = enn.make_attention("se_var2")   # any layer of the paper's Table 2 by name
    attn = enn.make_attention("SE-GC2")    # or a row with the paper's settings (eca_jax.nn.rows)
    attn = enn.make_attention("CBAM")      # Table 3's CBAM and GC block, as timm builds them
    y = enn.BatchNormAct(name="bn")(z, residual=r, eca_kernel=enn.ECA(name="eca").kernel, act="relu")
"""
from eca_jax.nn.eca import (CECA, ECA, PADDING_MODES, apply_gate, channel_conv1d, eca_gate,
                            eca_kernel_size, global_avg_pool)
from eca_jax.nn.attention import (ATTENTION_LAYERS, ECANS, SE, SEGC, SEVar1, SEVar2, SEVar3,
                                  layer_names, make_attention, resolve_attention)
from eca_jax.nn.context import CBAM, GlobalContext
from eca_jax.nn.rows import KSWEEP, ROWS, TABLE2, TABLE3, Row, find_row, get_row, row_names
from eca_jax.nn.fused import BatchNormAct, batch_norm_act, batch_norm_act_inference
from eca_jax.nn.nnx_bridge import to_nnx

__all__ = [
    "ECA", "CECA", "ECANS", "SE", "SEVar1", "SEVar2", "SEVar3", "SEGC", "CBAM", "GlobalContext",
    "ATTENTION_LAYERS", "PADDING_MODES", "make_attention", "resolve_attention", "layer_names",
    "Row", "ROWS", "TABLE2", "TABLE3", "KSWEEP", "find_row", "get_row", "row_names", "eca_kernel_size", "eca_gate",
    "channel_conv1d", "global_avg_pool", "apply_gate", "to_nnx",
    "BatchNormAct", "batch_norm_act", "batch_norm_act_inference",
]
