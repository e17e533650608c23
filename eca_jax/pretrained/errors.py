"""The exceptions of :mod:`eca_jax.pretrained` (ValueErrors, like the checkpoint layer's), each one line naming the fix."""


class PretrainedError(ValueError):
    """Weights that cannot be found, fetched, checked or converted."""


class NotCachedError(PretrainedError):
    """Offline (or no network, or a file a person must download) and nothing cached."""


class IntegrityError(PretrainedError):
    """A downloaded or given file whose size, hash or architecture is not the published one (it was quarantined)."""
