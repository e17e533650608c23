"""eca_jax.nnx: native ``flax.nnx`` layers and models that load (and give back) the linen weights.

    from flax import nnx
    import eca_jax.nnx as ennx
    eca = ennx.ECA(256, rngs=nnx.Rngs(0))                      # built from C; param conv/kernel (k, 1, 1)
    model = ennx.create_model("eca_resnet50", rngs=nnx.Rngs(0))
    ennx.load_linen_variables(model, variables)              # linen {"params", "batch_stats"} -> model
    variables = ennx.linen_variables(model)                  # and back
    model.eval(); logits = model(x)                          # == linen apply(variables, x, train=False)

Paths: children are stored under their linen names (dots included, e.g. ``getattr(model, "layer1.0")``),
so ``nnx.state(model, nnx.Param)`` has exactly the linen ``params`` paths and
``nnx.state(model, nnx.BatchStat)`` the ``batch_stats`` paths.
"""
from eca_jax.nnx.attention import (ATTENTION_LAYERS, CECA, ECA, ECANS, SE, SEGC, SEVar1, SEVar2, SEVar3,
                                   make_attention)
from eca_jax.nnx.blocks import InvertedResidual, ResidualBlock
from eca_jax.nnx.models import MobileNetV2, ResNet, create_model, from_linen
from eca_jax.nnx.norm import BatchNormAct
from eca_jax.nnx.sharding import batch_sharding, shard_model, state_shardings
from eca_jax.nnx.variables import linen_variables, load_linen_variables

__all__ = [
    "ECA", "CECA", "ECANS", "SE", "SEVar1", "SEVar2", "SEVar3", "SEGC", "ATTENTION_LAYERS", "make_attention",
    "BatchNormAct", "ResidualBlock", "InvertedResidual", "ResNet", "MobileNetV2", "create_model", "from_linen",
    "linen_variables", "load_linen_variables", "shard_model", "state_shardings", "batch_sharding",
]
