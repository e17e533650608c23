"""The model zoo as native ``flax.nnx`` modules: ``create_model(name, rngs=...)``.

The architecture is read from the linen module that :func:`eca_jax.models.create_model` returns
(its dataclass fields: block, layers, widths, stem, attn, k_size, ...), so zoo configurations live
in one place (:mod:`eca_jax.models.zoo`). Every registered model is a :class:`ResNet` or a
:class:`MobileNetV2`, both native here.

    from flax import nnx
    import eca_jax.nnx as ennx
    model = ennx.create_model("eca_resnet50", rngs=nnx.Rngs(0))
    model.eval(); logits = model(x)            # x (N, H, W, 3) float -> (N, 1000) float32
    model.train(); logits = model(x)           # batch statistics; running averages updated in place

Modes: a new model is in training mode (NNX's convention, like ``nnx.BatchNorm``); ``model.eval()``
switches BatchNorm to the running statistics and dropout / stochastic depth off (``drop_rate``,
``drop_path_rate`` and MobileNetV2's ``dropout``: keys from the ``rngs``'s "dropout" stream, forked
into each such layer; a model with both rates 0 holds no RNG stream, as before). ``nnx.state(model,
nnx.Param)`` / ``nnx.state(model, nnx.BatchStat)`` have the linen ``params`` / ``batch_stats`` paths.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from eca_jax.models import MobileNetV2 as LinenMobileNetV2, ResNet as LinenResNet
from eca_jax.models import create_model as create_linen_model
from eca_jax.models.layers import check_image_batch, drop_path_rates, global_pool, max_pool_3x3_s2
from eca_jax.models.mobilenet_v2 import FEATURE_INDICES, INVERTED_RESIDUAL_SETTINGS, make_divisible
from eca_jax.models.resnet import EXPANSION, attention_stage_k
from eca_jax.nnx.blocks import InvertedResidual, ResidualBlock, batch_norm, classifier, conv2d


def _common(cfg: Any, rngs: nnx.Rngs) -> dict:
    return dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, impl=cfg.impl, rngs=rngs)


class ResNet(nnx.Module):
    """:class:`eca_jax.models.ResNet` in NNX, built from a linen ``ResNet`` configuration ``cfg``.

    Children: the stem (``conv1``/``bn1``, or ``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``,
    ``conv1.6``, ``bn1`` for deep stems), blocks ``layer{s}.{i}`` (each with a ``drop_path`` when
    ``cfg.drop_path_rate > 0``), ``head_drop`` (an ``nnx.Dropout`` when ``cfg.drop_rate > 0``, else None) and ``fc``.
    Call: ``model(x, return_features=False)``, x (N, H, W, in_chans) float -> (N, num_classes)
    float32 logits or {"C2": ..., "C5": ...}.
    """

    def __init__(self, cfg: LinenResNet, *, rngs: nnx.Rngs):
        cfg._check_config()
        common = _common(cfg, rngs)
        self.stem, self.in_chans, self.dtype = cfg.stem, cfg.in_chans, cfg.dtype
        self._build_stem(cfg, common)
        in_channels = cfg.stem_width * (2 if cfg.stem.startswith("deep") else 1)
        stage_k, stages = attention_stage_k(cfg.attn, cfg.k_size, len(cfg.layers)), []
        block_drop_path = iter(drop_path_rates(sum(cfg.layers), cfg.drop_path_rate))
        for stage, (num_blocks, planes) in enumerate(zip(cfg.layers, cfg.widths)):
            out_channels, names = planes * EXPANSION[cfg.block], []
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                needs_shortcut = stride != 1 or in_channels != out_channels
                names.append(f"layer{stage + 1}.{index}")
                setattr(self, names[-1], ResidualBlock(
                    in_channels, cfg.block, planes, stride,
                    shortcut=("avg" if cfg.avg_down else "conv") if needs_shortcut else None,
                    attn=cfg.attn, attn_scope=cfg.attn_scope, attn_kwargs=cfg._stage_attn_kwargs(stage_k[stage]),
                    zero_init_last_bn=cfg.zero_init_last_bn, drop_path_rate=next(block_drop_path), **common))
                in_channels = out_channels
            stages.append(tuple(names))
        self.stages = tuple(stages)
        self.head_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs) if cfg.drop_rate > 0 else None
        self.fc = classifier(in_channels, cfg.num_classes, param_dtype=cfg.param_dtype, rngs=rngs)

    def _build_stem(self, cfg: LinenResNet, common: dict) -> None:
        width = cfg.stem_width
        if cfg.stem in ("conv7", "conv3"):
            kernel, stride = (7, 2) if cfg.stem == "conv7" else (3, 1)
            self.conv1, self.bn1 = conv2d(cfg.in_chans, width, kernel, stride, **common), batch_norm(width, **common)
            return
        first = 3 * width // 4 if cfg.stem == "deep_tiered" else width
        setattr(self, "conv1.0", conv2d(cfg.in_chans, first, 3, 2, **common))
        setattr(self, "conv1.1", batch_norm(first, **common))
        setattr(self, "conv1.3", conv2d(first, width, 3, 1, **common))
        setattr(self, "conv1.4", batch_norm(width, **common))
        setattr(self, "conv1.6", conv2d(width, 2 * width, 3, 1, **common))
        self.bn1 = batch_norm(2 * width, **common)

    def _stem(self, x: jax.Array) -> jax.Array:
        if self.stem == "conv7":
            return max_pool_3x3_s2(self.bn1(self.conv1(x), act="relu"))
        if self.stem == "conv3":
            return self.bn1(self.conv1(x), act="relu")
        x = getattr(self, "conv1.1")(getattr(self, "conv1.0")(x), act="relu")
        x = getattr(self, "conv1.4")(getattr(self, "conv1.3")(x), act="relu")
        return max_pool_3x3_s2(self.bn1(getattr(self, "conv1.6")(x), act="relu"))

    def __call__(self, x: jax.Array, return_features: bool = False):
        check_image_batch(x, self.in_chans, type(self).__name__)
        x = self._stem(x.astype(self.dtype))
        features = {}
        for stage, names in enumerate(self.stages):
            for name in names:
                x = getattr(self, name)(x)
            features[f"C{stage + 2}"] = x
        if return_features:
            return features
        pooled = global_pool(x).astype(jnp.float32)
        return self.fc(pooled if self.head_drop is None else self.head_drop(pooled))


class MobileNetV2(nnx.Module):
    """:class:`eca_jax.models.MobileNetV2` in NNX, built from a linen ``MobileNetV2`` configuration ``cfg``.

    Children: ``features.0.0/.1`` (stem), ``features.1`` .. ``features.17`` (inverted residuals),
    ``features.18.0/.1`` (last 1x1 conv + BN), ``dropout`` (an ``nnx.Dropout`` holding its own RNG
    stream, seeded from ``rngs``; no linen variable) and ``classifier.1``.
    Call: ``model(x, return_features=False)`` -> float32 logits or {"C2".."C5"}.
    """

    def __init__(self, cfg: LinenMobileNetV2, *, rngs: nnx.Rngs):
        layer = cfg._block_attention(16, 16)[0]
        if layer not in (None, "eca"):
            raise ValueError(f"eca_jax.nnx's MobileNetV2 takes attn='eca' or None, got {cfg.attn!r} "
                             "(the linen model takes every row)")
        common = _common(cfg, rngs)
        self.in_chans, self.dtype = cfg.in_chans, cfg.dtype
        in_channels = cfg._channels(32)
        setattr(self, "features.0.0", conv2d(cfg.in_chans, in_channels, 3, 2, **common))
        setattr(self, "features.0.1", batch_norm(in_channels, **common))
        index = 1
        block_drop_path = drop_path_rates(sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTINGS), cfg.drop_path_rate,
                                          last_gets_full_rate=False)
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            out_channels = cfg._channels(c)
            for repeat in range(n):
                setattr(self, f"features.{index}", InvertedResidual(
                    in_channels, out_channels, int(round(in_channels * t)), s if repeat == 0 else 1, expand=t != 1,
                    eca_k=cfg._block_k(c, out_channels), drop_path_rate=block_drop_path[index - 1], **common))
                in_channels, index = out_channels, index + 1
        release = cfg.layout == "release"
        last = int(1280 * max(1.0, cfg.width_mult)) if release else make_divisible(1280 * max(1.0, cfg.width_mult))
        setattr(self, f"features.{index}.0", conv2d(in_channels, last, 1, **common))
        setattr(self, f"features.{index}.1", batch_norm(last, **common))
        self.num_blocks = index - 1
        rate = cfg.dropout if cfg.dropout is not None else (0.25 if release else 0.2)
        self.dropout = nnx.Dropout(rate, rngs=rngs)
        setattr(self, "classifier.1", classifier(last, cfg.num_classes, param_dtype=cfg.param_dtype,
                                                 kernel_init=nnx.initializers.normal(0.01),
                                                 bias_init=nnx.initializers.zeros, rngs=rngs))

    def __call__(self, x: jax.Array, return_features: bool = False):
        check_image_batch(x, self.in_chans, type(self).__name__)
        child = lambda name: getattr(self, name)  # noqa: E731
        x = child("features.0.1")(child("features.0.0")(x.astype(self.dtype)), act="relu6")
        features = {}
        for index in range(1, self.num_blocks + 1):
            x = child(f"features.{index}")(x)
            if index in FEATURE_INDICES:
                features[FEATURE_INDICES[index]] = x
        last = self.num_blocks + 1
        x = child(f"features.{last}.1")(child(f"features.{last}.0")(x), act="relu6")
        features[FEATURE_INDICES[last]] = x
        if return_features:
            return features
        return child("classifier.1")(self.dropout(global_pool(x).astype(jnp.float32)))


def from_linen(module: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """The native NNX twin of a linen zoo module (``ResNet`` or ``MobileNetV2``), freshly initialised."""
    if isinstance(module, LinenResNet):
        return ResNet(module, rngs=rngs)
    if isinstance(module, LinenMobileNetV2):
        if module.layout not in ("release", "torchvision"):
            raise ValueError(f"MobileNetV2 layout must be 'release' or 'torchvision', got {module.layout!r}")
        return MobileNetV2(module, rngs=rngs)
    raise TypeError(f"no native NNX twin for {type(module).__name__}; wrap it with eca_jax.nn.to_nnx")


def create_model(name: str, *, rngs: nnx.Rngs, num_classes: int = 1000, pretrained: Any = False,
                 **kwargs: Any) -> nnx.Module:
    """A registered model (:func:`eca_jax.models.list_models`) as a native ``nnx.Module``.

    ``kwargs`` override architecture attributes exactly as in :func:`eca_jax.models.create_model`
    (``k_size``, ``attn``, ``dtype``, ``impl`` ...); unknown names raise the same ValueError.
    Parameters are drawn from ``rngs.params()`` (independently of linen's ``init``: load linen
    weights with :func:`eca_jax.nnx.load_linen_variables`).

    ``pretrained`` (True, a tag or a file path, as ``eca_jax.create_model``): the published weights
    from :func:`eca_jax.pretrained.load` (``manifest=``/``progress=`` go there), loaded and checked;
    the model comes back in eval mode. ``num_classes`` must then be the file's.
    """
    if pretrained:
        return _pretrained(name, pretrained, rngs=rngs, num_classes=num_classes, **kwargs)
    linen = create_linen_model(name, num_classes=num_classes, **kwargs)
    # Built under nnx.jit: the initialisers compile as one program (eager creation compiles every
    # distinct random op on its own: ~25 s for a ResNet-18 on CPU, against a few seconds).
    return nnx.jit(lambda r: from_linen(linen, rngs=r))(rngs)


def _pretrained(name: str, spec: Any, *, rngs: nnx.Rngs, num_classes: int, **kwargs: Any) -> nnx.Module:
    from eca_jax import pretrained  # noqa: PLC0415 -- only weights need the download/cache machinery
    from eca_jax.nnx.variables import load_linen_variables  # noqa: PLC0415
    options = {k: kwargs.pop(k) for k in ("manifest", "progress") if k in kwargs}
    loaded = pretrained.load(name, spec, **options)
    if num_classes != loaded.signature.num_classes:
        raise ValueError(f"nnx create_model({name!r}, pretrained=...): the weights have "
                         f"{loaded.signature.num_classes} classes, not num_classes={num_classes}.")
    linen = loaded.signature.build(**kwargs)
    model = nnx.jit(lambda r: from_linen(linen, rngs=r))(rngs)
    load_linen_variables(model, loaded.variables)
    model.eval()
    return model
