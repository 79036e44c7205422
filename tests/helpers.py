"""Small real files for tests: tiny volumes and masks written with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_volume(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def tiny_case(folder: Path, cid: str, *, shape=(8, 24, 24), label_value=1, empty=False, seed=0,
              mask_spacing=None, mask_shape=None) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 50, size=shape).astype(np.float32)
    mshape = mask_shape or shape
    mask = np.zeros(mshape, np.uint8)
    if not empty:
        z, y, x = (s // 2 for s in mshape)
        mask[z - 2:z + 2, y - 4:y + 4, x - 4:x + 4] = label_value
    ip = write_volume(folder / f"{cid}.nrrd", img)
    mp = write_volume(folder / f"{cid}_mask.nrrd", mask, spacing=mask_spacing or (1.0, 1.0, 2.0))
    return ip, mp


def tiny_cohort_rows(folder: Path, n: int = 4) -> list[dict]:
    """Manifest rows of ``n`` tiny cases written under ``folder/data`` (labels alternate)."""
    rows = []
    for i in range(n):
        img, mask = tiny_case(folder / "data", f"c{i}", seed=i)
        rows.append({"case_id": f"c{i}", "image": f"data/{img.name}", "mask": f"data/{mask.name}",
                     "label": "short" if i % 2 else "long"})
    return rows


def write_manifest(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return path
