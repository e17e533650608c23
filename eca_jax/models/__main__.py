"""``python -m eca_jax.models eca_resnet50`` / ``python -m eca_jax.models --list``."""
from eca_jax.models.summary import main

main()
