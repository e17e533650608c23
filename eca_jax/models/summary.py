"""Model summaries: exact parameter counts, attention parameters and MACs/FLOPs at a given input size.

MACs count the multiply-accumulates of convolutions, dense layers and the attention gates' own
products (ECA: C*k per image and layer, SE-Var2: C), as the paper and the release's README do; FLOPs = 2 * MACs.
The release's README quotes base-1024 units (24.37M params = 25,557,112 / 1024**2; 3.86 G =
MACs / 1024**3): both are reported. Shapes are traced with ``jax.eval_shape``; nothing is computed.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

from eca_jax.nn.attention import ATTENTION_LAYERS, ECANS, SEGC, SEVar2
from eca_jax.nn.eca import ECA

_ATTENTION_TYPES = tuple(cls for cls in ATTENTION_LAYERS.values() if isinstance(cls, type))


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    name: str
    input_size: int
    params: int
    attention_params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def table(self) -> str:
        """Human-readable lines: SI units and the release's base-1024 units."""
        return "\n".join([
            f"model             {self.name}",
            f"parameters        {self.params:,}  ({self.params / 1e6:.2f} M; {self.params / 1024 ** 2:.2f} M base-1024)",
            f"attention params  {self.attention_params:,}",
            f"MACs @{self.input_size}        {self.macs:,}  ({self.macs / 1e9:.3f} G; "
            f"{self.macs / 1024 ** 3:.3f} G base-1024)",
            f"FLOPs @{self.input_size}       {self.flops:,}  ({self.flops / 1e9:.3f} G)",
        ])


def _layer_macs(module: nn.Module, args: tuple, out: Any) -> int:
    """MACs of one call of a conv / dense / attention layer, from its input and output shapes."""
    if isinstance(module, nn.Conv):
        in_channels = args[0].shape[-1]
        return math.prod(out.shape[:-1]) * out.shape[-1] * math.prod(module.kernel_size) \
            * in_channels // module.feature_group_count
    if isinstance(module, nn.Dense):
        return math.prod(out.shape[:-1]) * out.shape[-1] * args[0].shape[-1]
    if not args:
        return 0
    x = args[0]
    if isinstance(module, ECANS):
        # k from the (C, k) kernel the layer created: k_size is None when k is adaptive (Eq. 12).
        taps = module.get_variable("params", "kernel").shape[-1]
        return x.shape[0] * x.shape[-1] * taps
    if isinstance(module, SEGC):
        return x.shape[0] * x.shape[-1] ** 2 // module.groups_for(x.shape[-1])
    if isinstance(module, SEVar2):   # one weight per channel: C products
        return x.shape[0] * x.shape[-1]
    return 0


def summarize(model: nn.Module, input_size: int = 224, name: str = "", in_chans: int = 3) -> ModelSummary:
    """Counts parameters, attention parameters and MACs of ``model`` on one (1, S, S, C) image."""
    attention_paths: list[tuple[str, ...]] = []
    macs = [0]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__":
            if isinstance(module, _ATTENTION_TYPES):
                attention_paths.append(tuple(module.path))
            macs[0] += _layer_macs(module, args, out)
        elif context.method_name == "kernel" and isinstance(module, ECA):
            # ECA's kernel is fetched once per call, also when the gate is fused into a BatchNorm
            # (eca_jax.nn.fused): the gate's k MACs per channel of the one image are counted here.
            attention_paths.append(tuple(module.path))
            macs[0] += args[0] * module.kernel_size_for(args[0])
        return out

    def init():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros((1, input_size, input_size, in_chans)), train=False)

    shapes = jax.eval_shape(init)
    flat = traverse_util.flatten_dict(shapes.get("params", {}))
    params = sum(math.prod(v.shape) for v in flat.values())
    attention = sum(math.prod(v.shape) for path, v in flat.items()
                    if any(path[:len(p)] == p for p in attention_paths))
    return ModelSummary(name or type(model).__name__, input_size, params, attention, macs[0])


def main(argv: Optional[list[str]] = None) -> None:
    from eca_jax.models.registry import create_model, get_model_cfg, list_models
    parser = argparse.ArgumentParser(prog="python -m eca_jax.models",
                                     description="Parameter count and MACs of registered models.")
    parser.add_argument("names", nargs="*", help="model names or fnmatch patterns (e.g. 'eca*')")
    parser.add_argument("--list", action="store_true", help="list registered models with their counts")
    parser.add_argument("--size", type=int, default=224, help="input size for MACs (default 224)")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        print(f"{'model':<20} {'params':>13} {'attn':>6} {'GMACs@' + str(args.size):>11} {'layout':>12}")
        for name in list_models():
            s = summarize(create_model(name), args.size, name)
            print(f"{name:<20} {s.params:>13,} {s.attention_params:>6,} {s.macs / 1e9:>11.3f} "
                  f"{get_model_cfg(name).torch_layout:>12}")
        return
    for pattern in args.names:
        for name in (list_models(pattern) if any(c in pattern for c in "*?[") else [pattern]):
            print(summarize(create_model(name), args.size, name).table())
            print()
