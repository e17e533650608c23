"""``python -m eca_jax.models --pretrained``: every published weight, cached or not, with sizes."""
from __future__ import annotations

import os
from typing import Optional

from eca_jax.checkpoints import converted
from eca_jax.pretrained import cache
from eca_jax.pretrained.download import local_path
from eca_jax.pretrained.manifest import HUB, Manifest, current


def _mb(n: Optional[int]) -> str:
    return "?" if not n else f"{n / 1e6:.1f} MB"


def _hub_file(w) -> Optional[str]:
    """The hub file if huggingface_hub has it in our cache (no request)."""
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415
    found = try_to_load_from_cache(w.repo_id, w.filename, cache_dir=cache.hub_dir())
    return found if isinstance(found, str) else None


def rows(manifest: Optional[Manifest] = None) -> list[dict]:
    """One dict per entry: name, source, licence, top1 (@size), file size (if known or on disk), cached (converted dir size)."""
    out = []
    for w in (manifest or current()).entries:
        dst = cache.converted_dir(w.name)
        on_disk = local_path(w) if w.source != HUB else _hub_file(w)
        size = w.size or (os.path.getsize(on_disk) if on_disk and os.path.isfile(on_disk) else None)
        out.append({"name": w.name, "source": w.source, "licence": w.licence, "file": w.filename,
                    "top1": f"{w.top1:.2f} @{w.top1_size}" if w.top1 else "?", "file_size": size,
                    "cached": cache.size_of(dst) if converted.is_converted_dir(dst) else None})
    return out


def table(manifest: Optional[Manifest] = None) -> str:
    lines = [f"cache: {cache.root()} (set {cache.ENV} to move it)",
             f"{'weights':<30} {'source':<7} {'top-1':>11} {'licence':<13} {'file':>9} {'cached':>10}"]
    for r in rows(manifest):
        cached = _mb(r["cached"]) if r["cached"] else "no"
        lines.append(f"{r['name']:<30} {r['source']:<7} {r['top1']:>11} {r['licence']:<13} {_mb(r['file_size']):>9} "
                     f"{cached:>10}")
    lines.append("source: hub = Hugging Face hub, url = plain download, manual = cloud drive, a person downloads it")
    return "\n".join(lines)
