"""eca_jax.models: the model zoo (``create_model``, ``list_models``) and the architectures."""
from eca_jax.models.registry import (ModelCfg, create_model, get_model_cfg, list_models, register_model,
                                   resolve_model_name)
from eca_jax.models.resnet import ResNet, ResidualBlock
from eca_jax.models.mobilenet_v2 import InvertedResidual, MobileNetV2
from eca_jax.models import zoo  # noqa: F401  (registers the architectures)
from eca_jax.models.summary import ModelSummary, summarize

__all__ = ["ModelCfg", "create_model", "get_model_cfg", "list_models", "register_model", "resolve_model_name", "ResNet",
           "ResidualBlock", "MobileNetV2", "InvertedResidual", "ModelSummary", "summarize"]
