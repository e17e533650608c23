"""What identifies the model a checkpoint holds, and how to rebuild that model.

A signature is stored with every checkpoint eca_jax writes: in a training step's metadata
({"model", "num_classes", "model_kwargs", "config"}) and in a converted directory's
``eca_jax_convert.json`` ({"arch", "num_classes", "model_kwargs"}). :class:`ModelSignature` reads
both; ``build()`` gives the Flax module, :func:`abstract_variables` its variable shapes.

Input settings: ``input_settings`` holds the eval-input keys a checkpoint carries explicitly
(a training config's ``image_size``, ``eval_*``, ``mean``/``std``; for converted weights the size
they are evaluated at); whatever is absent comes from the model's ``ModelCfg``
(:mod:`eca_jax.data.transforms` ``resolve_eval_settings`` applies the precedence).
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from eca_jax.checkpoints.errors import CheckpointMismatchError
from eca_jax.models import ModelCfg, create_model, get_model_cfg

SIGNATURE_KEYS = ("model", "num_classes", "model_kwargs")
# Keys of a training config that say how its eval images are prepared.
INPUT_KEYS = ("image_size", "eval_image_size", "eval_resize_size", "eval_crop_pct", "eval_interpolation",
              "mean", "std")


def _tuples(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples create_model takes (k_size=[3, 5, 5, 7] -> (3, 5, 5, 7))."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (kwargs or {}).items()}


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """model: registered name; num_classes; model_kwargs: create_model overrides (k_size, widths,
    ...); input_settings: explicit eval-input keys (see the module docstring); config: the whole
    training config saved with a training checkpoint ({} otherwise)."""
    model: str
    num_classes: int
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model_cfg(self) -> ModelCfg:
        return get_model_cfg(self.model)

    def build(self, **overrides: Any) -> nn.Module:
        """``create_model(model, num_classes, **model_kwargs, **overrides)`` (e.g. dtype=, impl=)."""
        return create_model(self.model, num_classes=self.num_classes, **{**_tuples(self.model_kwargs), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The stored form {"model", "num_classes", "model_kwargs"} (JSON types)."""
        return normalize({"model": self.model, "num_classes": self.num_classes, "model_kwargs": dict(self.model_kwargs)})

    def describe(self) -> str:
        return describe(self.to_dict())

    @classmethod
    def from_training(cls, stored: Mapping[str, Any]) -> "ModelSignature":
        """From a training step's custom metadata ({"model", "num_classes", "model_kwargs", "config"})."""
        config = dict(stored.get("config") or {})
        return cls(model=stored["model"], num_classes=int(stored["num_classes"]),
                   model_kwargs=dict(stored.get("model_kwargs") or {}),
                   input_settings={k: config[k] for k in INPUT_KEYS if config.get(k) is not None}, config=config)

    @classmethod
    def from_converted(cls, metadata: Mapping[str, Any]) -> "ModelSignature":
        """From a converted directory's metadata ({"arch", "num_classes", "model_kwargs"}; also
        used for a PyTorch file): released weights are evaluated at the model's test size
        (``test_input_size``, else ``input_size``)."""
        cfg = get_model_cfg(metadata["arch"])
        return cls(model=metadata["arch"], num_classes=int(metadata["num_classes"]),
                   model_kwargs=dict(metadata.get("model_kwargs") or {}),
                   input_settings={"image_size": int(cfg.test_input_size or cfg.input_size)})


def abstract_variables(module: nn.Module, image_size: int = 64) -> dict[str, Any]:
    """{"params", "batch_stats"} of ``module`` as ShapeDtypeStructs (``jax.eval_shape``; nothing is
    computed). ``image_size``: the side of the NHWC example input (shapes do not depend on it)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, getattr(module, "in_chans", 3)), jnp.float32)
    variables = jax.eval_shape(partial(module.init, train=False), jax.random.key(0), x)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def normalize(signature: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip (tuples -> lists), so stored and fresh signatures compare equal."""
    return json.loads(json.dumps(dict(signature), default=str))


def describe(signature: Mapping[str, Any]) -> str:
    kwargs = signature.get("model_kwargs") or {}
    extra = f", model_kwargs={kwargs}" if kwargs else ""
    return f"model {signature.get('model')!r} with num_classes={signature.get('num_classes')}{extra}"


def check_signature(found: Mapping[str, Any], expected: Mapping[str, Any], where: str,
                    hint: str = "") -> None:
    """Raises CheckpointMismatchError if ``found`` differs from ``expected`` in SIGNATURE_KEYS."""
    found, expected = normalize(found), normalize(expected)
    diff = [k for k in SIGNATURE_KEYS if (found.get(k) or None) != (expected.get(k) or None)]
    if diff:
        raise CheckpointMismatchError(
            f"{where} holds checkpoints of {describe(found)}, but the config asks for "
            f"{describe(expected)} (differs in {', '.join(diff)}).{hint}")
