"""Input-normalization constants shared by the models (their configs) and the data pipeline.

Dependency-free on purpose: ``eca_jax.models`` and ``eca_jax.data`` both import it, neither
imports the other. Mean and std are per RGB channel, for images scaled to [0, 1].
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # 224 / 256: torchvision's Resize(256) + CenterCrop(224)
INTERPOLATIONS = ("bilinear", "bicubic")  # the eval/train resizes eca_jax.data implements
DEFAULT_INTERPOLATION = "bilinear"
