"""eca_jax: ECA-Net (Efficient Channel Attention) in JAX/Flax."""
__version__ = "0.1.0"

from eca_jax.models import create_model, get_model_cfg, list_models  # noqa: E402

__all__ = ["create_model", "get_model_cfg", "list_models", "__version__"]
