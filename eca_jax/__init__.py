"""eca_jax: ECA-Net (Efficient Channel Attention) in JAX/Flax.

``eca_jax.get_model_cfg`` and ``list_models`` are ``eca_jax.models``'; ``eca_jax.create_model`` is
``eca_jax.models.create_model`` plus ``pretrained=``:

    model = eca_jax.create_model("ecaresnet50d")                       # flax Module, no weights
    model = eca_jax.create_model("ecaresnet50d", pretrained=True)      # the same Module bound to its
    logits = model(x_nhwc, train=False)                                # published weights
    module, variables = model.unbind()

``pretrained``: True (default tag), a tag ("miil_in1k") or a weight file's path; see
:mod:`eca_jax.pretrained` (cache, downloads, input settings: ``eca_jax.pretrained.load``).
Everything is looked up on first use (PEP 562), so ``import eca_jax.nn`` loads the layers without the model zoo.
"""
__version__ = "0.1.0"

_FROM_MODELS = ("get_model_cfg", "list_models")
__all__ = ["create_model", *_FROM_MODELS, "__version__"]


def create_model(name: str, pretrained=False, **kwargs):
    """``eca_jax.models.create_model(name, **kwargs)``; with ``pretrained`` the module comes bound to
    the published weights (``model(x, train=False)``; ``model.unbind()`` -> (module, variables)).

    With weights, ``kwargs`` may change how the module computes (dtype, impl, ...), not its shapes:
    ``num_classes`` other than the file's is an error (fine-tune with ``init_from_reset_head``).
    ``manifest=`` / ``progress=`` go to :func:`eca_jax.pretrained.load`. When torch is installed,
    the first conversion runs --verify's logits check (relative error <= 1e-4) before caching
    (``verify=False`` skips it).
    """
    from eca_jax import models  # noqa: PLC0415 -- lazy on purpose, see the module docstring
    if not pretrained:
        return models.create_model(name, **kwargs)
    from eca_jax import pretrained as weights  # noqa: PLC0415
    options = {k: kwargs.pop(k) for k in ("manifest", "progress") if k in kwargs}
    loaded = weights.load(name, pretrained, verify=_torch_verify() if kwargs.pop("verify", True) else None, **options)
    num_classes = kwargs.pop("num_classes", None)
    if num_classes is not None and num_classes != loaded.signature.num_classes:
        raise ValueError(f"create_model({name!r}, pretrained=...): the weights have {loaded.signature.num_classes} "
                         f"classes, not num_classes={num_classes}; to fine-tune on {num_classes} classes train with "
                         f"--config.init_from=pretrained://{name} --config.init_from_reset_head=True.")
    module = loaded.signature.build(**kwargs) if kwargs else loaded.module
    return module.bind(loaded.variables)


def _torch_verify():
    """--verify's check (needs torch), or None without torch."""
    try:
        import torch  # noqa: F401, PLC0415
    except ImportError:
        return None
    from eca_jax.convert.verify import verify  # noqa: PLC0415
    return verify


def __getattr__(name: str):
    if name in _FROM_MODELS:
        from eca_jax import models  # noqa: PLC0415 -- lazy on purpose, see the module docstring
        return getattr(models, name)
    raise AttributeError(f"module 'eca_jax' has no attribute {name!r}")
