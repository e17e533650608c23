"""The errors of the checkpoint layer. All are ValueErrors whose message names the file, key or
argument at fault, so a command line prints them as one ``error: ...`` line."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used as asked."""


class ConversionError(CheckpointError):
    """A PyTorch checkpoint or converted directory cannot be read or converted."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to another model (name, number of classes or architecture kwargs)."""


class CheckpointReadError(CheckpointError):
    """A checkpoint cannot be used as asked: corrupt metadata, no eval metrics for ``best``."""


class ShapeMismatchError(ConversionError, CheckpointMismatchError):
    """Variables or state-dict entries do not fit the model: missing, unexpected or mis-shaped
    keys. Both a ConversionError and a CheckpointMismatchError, for callers of either kind."""


class UnreadableCheckpointError(ConversionError):
    """The file is missing, truncated, corrupt or not a checkpoint at all."""


class UnsafePickleError(ConversionError):
    """torch.load(weights_only=True) refused the file because its pickle holds code."""


class AmbiguousArchitectureError(ConversionError):
    """The keys and shapes fit several registered models (or none cleanly); pass ``arch=``."""


class UnknownArchitectureError(ConversionError):
    """The keys and shapes fit no registered model."""
