"""Cache of rasterised masks: ``<cache_dir>/<key>.npz`` (bit-packed mask + the notes).

The key hashes the mask file's bytes (SHA-256), the ROI asked for, the image grid
(size, spacing, origin, direction), the series' slice references and the rule version,
so a changed RTSTRUCT, ROI choice, image or rule recomputes, and nothing else does.
Writes are atomic. Notes never hold header fields, only ROI names and counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from .dicomfiles import SeriesSlices

__all__ = ["mask_key", "load", "save"]


def mask_key(mask_path: Path, image: sitk.Image, slices: SeriesSlices, roi, rule: str, extra=None) -> str:
    h = hashlib.sha256()
    with open(mask_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    geometry = {
        "file": h.hexdigest(), "roi": None if roi is None else str(roi), "rule": rule, "extra": extra,
        "size": list(image.GetSize()), "spacing": [round(v, 6) for v in image.GetSpacing()],
        "origin": [round(v, 4) for v in image.GetOrigin()],
        "direction": [round(v, 6) for v in image.GetDirection()],
        "slices": sorted(slices.uid_to_slice.items()),
        "positions": [round(float(v), 4) for v in slices.positions],
    }
    return hashlib.sha256(json.dumps(geometry, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def load(cache_dir: Path | None, key: str, image: sitk.Image) -> tuple[sitk.Image, list[str]] | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(v) for v in z["shape"])
            arr = np.unpackbits(z["bits"], count=int(np.prod(shape))).reshape(shape)
            notes = json.loads(str(z["notes"]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable entry: recompute
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    return mask, notes


def save(cache_dir: Path | None, key: str, mask: sitk.Image, notes: list[str]) -> None:
    if cache_dir is None:
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayViewFromImage(mask)
    with atomic_path(cache_dir / f"{key}.npz") as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, bits=np.packbits(arr.ravel() > 0), shape=np.array(arr.shape),
                            notes=np.array(json.dumps(notes)))
