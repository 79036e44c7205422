"""RTSTRUCT route against MIRP's NIfTI masks on the sarcoma data, and its speed.

    uv run python bench/bench_masks.py

Per series (3 patients x CT, MR T1, PET): Dice and volume difference between the
RTSTRUCT rasterised by radiodeep and MIRP's NIfTI mask of the same contour, voxels
only in one of them, and time to rasterise (cold: no mask cache) and to read back from
the mask cache. Also the DICOM-SEG examples (read time). Prints figures; asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radiodeep.imageio import read_image
from radiodeep.masks import read_dicom_mask

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    sts = SHARED / "sts_rtstruct"
    if not sts.exists():
        print(f"no data at {sts}")
        return 1
    print(f"{'series':<16}{'voxels':>9}{'MIRP':>9}{'Dice':>8}{'dV %':>8}{'only ours':>10}{'only MIRP':>10}"
          f"{'cold ms':>9}{'cached ms':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for patient in ("STS_001", "STS_002", "STS_003"):
            for modality in ("CT", "MR_T1", "PET"):
                d = sts / patient / modality
                image = read_image(d / "dicom" / "image")
                t0 = time.perf_counter()
                ours = read_dicom_mask("rtstruct", d / "dicom/mask/RS.dcm", d / "dicom/image", image, patient,
                                       roi="(?i)^gtv_mass", cache_dir=Path(tmp))
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                read_dicom_mask("rtstruct", d / "dicom/mask/RS.dcm", d / "dicom/image", image, patient,
                                roi="(?i)^gtv_mass", cache_dir=Path(tmp))
                warm = time.perf_counter() - t0
                a = sitk.GetArrayFromImage(ours) > 0
                b = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "nifti/mask/mask.nii.gz"))) > 0
                dice = 2 * (a & b).sum() / (a.sum() + b.sum())
                dv = 100 * (a.sum() - b.sum()) / b.sum()
                print(f"{patient + ' ' + modality:<16}{a.sum():>9}{b.sum():>9}{dice:>8.4f}{dv:>+8.2f}"
                      f"{(a & ~b).sum():>10}{(b & ~a).sum():>10}{cold * 1e3:>9.0f}{warm * 1e3:>10.0f}")
    seg = SHARED / "dicom_seg"
    for name, roi in (("data_3", 1), ("data_5", None)):
        image = read_image(seg / name / "image")
        t0 = time.perf_counter()
        m = read_dicom_mask("seg", seg / name / "mask/mask.dcm", seg / name / "image", image, name, roi=roi)
        print(f"DICOM-SEG {name} segment {roi or 1}: {int(sitk.GetArrayViewFromImage(m).sum())} voxels, "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms (series of {image.GetSize()[2]} slices)")
    from radiodeep.masks.rtstruct import fill_polygons

    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    body = np.stack([256 + 200 * np.cos(t), 256 + 180 * np.sin(t)], axis=1)
    t0 = time.perf_counter()
    for _ in range(50):
        filled = fill_polygons([body], 512, 512)
    print(f"fill: 512x512 slice, 2000-vertex ellipse: {(time.perf_counter() - t0) / 50 * 1e3:.1f} ms, "
          f"area {int(filled.sum())} px vs analytic {np.pi * 200 * 180:.0f}")
    print("(timings on a machine shared with other jobs: pessimistic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
