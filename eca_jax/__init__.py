"""eca_jax: ECA-Net (Efficient Channel Attention) in JAX/Flax.

``eca_jax.create_model``, ``get_model_cfg`` and ``list_models`` are ``eca_jax.models``'; they are
looked up on first use (PEP 562), so ``import eca_jax.nn`` loads the layers without the model zoo.
"""
__version__ = "0.1.0"

_FROM_MODELS = ("create_model", "get_model_cfg", "list_models")
__all__ = [*_FROM_MODELS, "__version__"]


def __getattr__(name: str):
    if name in _FROM_MODELS:
        from eca_jax import models  # noqa: PLC0415 -- lazy on purpose, see the module docstring
        return getattr(models, name)
    raise AttributeError(f"module 'eca_jax' has no attribute {name!r}")
