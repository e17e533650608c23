"""Getting a weight file onto disk, checked: the hub through ``huggingface_hub``, plain URLs through
``torch.hub.download_url_to_file`` (a temp file beside the target, renamed when complete, a tqdm
bar), the release's cloud-drive files by a person (we say which file, from where, to where).

Every file is checked before it is used (:func:`check`): size and SHA-256 when the manifest has them,
the published hash prefix (torchvision), the hub's LFS etag (the SHA-256 it serves). A file that fails
is moved to the cache's ``quarantine/`` and never converted. Interrupted downloads leave only the
client's temp file, which both clients remove.

Offline (``HF_HUB_OFFLINE=1``) or without network, a file that is not on disk raises
:class:`~eca_jax.pretrained.errors.NotCachedError` naming the file, its source, the cache and
``ECA_JAX_CACHE``.
"""
from __future__ import annotations

import os
import re
import urllib.error
from typing import Optional

from eca_jax.checkpoints.torch_files import sha256
from eca_jax.pretrained import cache
from eca_jax.pretrained.errors import IntegrityError, NotCachedError, PretrainedError
from eca_jax.pretrained.manifest import HUB, MANUAL, Weights

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once at import; we read it per call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def local_path(entry: Weights) -> str:
    """Where a non-hub file is (or must be put): ``<cache>/downloads/<filename>``."""
    return os.path.join(cache.downloads_dir(), entry.filename)


def not_cached(entry: Weights, why: str) -> NotCachedError:
    """The one message for "not on disk and cannot be fetched now"."""
    if entry.source == MANUAL:
        how = f"{entry.note}, then put it at {local_path(entry)}"
    else:
        how = f"copy {entry.filename} from {entry.where} to {local_path(entry)}"
    return NotCachedError(
        f"{why}: pretrained weights {entry.name} ({entry.filename}, from {entry.where}) are not in the cache "
        f"{cache.root()}. {how[0].upper() + how[1:]}, or pass pretrained='/path/to/{entry.filename}', or set "
        f"{cache.ENV} to a cache that has them.")


def check(path: str, entry: Weights, served_sha256: Optional[str] = None, quarantine: bool = True) -> str:
    """Returns the file's SHA-256 if its size and hash are the published ones; otherwise quarantines
    the file (``quarantine``; a user's own file stays) and raises IntegrityError naming what differs."""
    problem = None
    size = os.path.getsize(path)
    digest = sha256(path)
    expected = entry.sha256 or served_sha256
    if entry.size is not None and size != entry.size:
        problem = f"size {size} bytes, expected {entry.size}"
    elif expected and digest != expected:
        problem = f"SHA-256 {digest[:16]}..., expected {expected[:16]}..."
    elif entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
        problem = f"SHA-256 {digest[:16]}..., expected one starting {entry.sha256_prefix}"
    if problem:
        moved = f" Moved to {cache.quarantine(path)};" if quarantine else ""
        raise IntegrityError(f"{path} is not the published {entry.filename} of {entry.name} (from {entry.where}): "
                             f"{problem}.{moved} nothing was converted. Download it again.")
    return digest


def fetch(entry: Weights, progress: bool = True) -> tuple[str, str]:
    """(path, sha256) of ``entry``'s checked file on disk, downloading it if needed."""
    if entry.source == HUB:
        return _fetch_hub(entry, progress)
    path = local_path(entry)
    if not os.path.exists(path):
        if entry.source == MANUAL:
            raise not_cached(entry, "This file cannot be downloaded by a program")
        if offline():
            raise not_cached(entry, "Offline (HF_HUB_OFFLINE is set)")
        _download_url(entry, path, progress)
    return path, check(path, entry)


def _download_url(entry: Weights, path: str, progress: bool) -> None:
    import torch.hub  # noqa: PLC0415 -- torch is needed to read these .pth files anyway
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, path, hash_prefix=None, progress=progress)
    except urllib.error.URLError as e:
        if isinstance(e, urllib.error.HTTPError):
            raise PretrainedError(f"Downloading {entry.url} failed: HTTP {e.code} {e.reason}.") from None
        raise not_cached(entry, f"No network ({e.reason})") from None
    except (OSError, ValueError) as e:  # http.client.IncompleteRead, a reset connection, ...
        raise IntegrityError(f"Downloading {entry.filename} from {entry.url} was interrupted "
                             f"({type(e).__name__}: {e}); nothing was kept, try again.") from None


def _fetch_hub(entry: Weights, progress: bool) -> tuple[str, str]:
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 -- only the hub needs it
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars  # noqa: PLC0415
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        path = hf_hub_download(entry.repo_id, entry.filename, cache_dir=cache.hub_dir(),
                               endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=offline(),
                               etag_timeout=30)
    except LocalEntryNotFoundError as e:
        raise not_cached(entry, "Offline (HF_HUB_OFFLINE is set)" if offline() else
                         f"The hub cannot be reached ({str(e).splitlines()[0]})") from None
    except HfHubHTTPError as e:
        raise PretrainedError(f"The hub refused {entry.filename} of {entry.repo_id}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # huggingface_hub's size check ("Consistency check failed"), a dropped connection
        raise IntegrityError(f"Downloading {entry.filename} from {entry.where} failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0]}); nothing was kept, try again.") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    blob = os.path.basename(os.path.realpath(path))
    return path, check(path, entry, served_sha256=blob if _SHA256.match(blob) else None)
