"""What the input checks cost: reading a phantom CT case with and without the gzip CRC check and
the value checks, the header-only geometry read, and `validate` per case.

    .venv/bin/python bench/bench_inputs.py [--cases 8]

Prints figures only (no thresholds). The CRC check runs once per file version and process
(workers forked after validation inherit what the parent verified).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=8)
    args = ap.parse_args()

    from radiodeep import imageio
    from radiodeep.config import parse_config
    from radiodeep.synth import make_cohort
    from radiodeep.validate import load_cohort

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(Path(tmp), n_cases=args.cases, seed=0)
        images = sorted((Path(tmp) / "images").glob("*.nrrd"))
        plain, checked, crc, header, nii_plain, nii_crc = [], [], [], [], [], []
        for p in images:
            plain.append(_best(lambda: sitk.ReadImage(str(p))))
            imageio._verified.cache_clear()
            crc.append(_best(lambda: (imageio._verified.cache_clear(), imageio.verify_compressed(p))))
            checked.append(_best(lambda: (imageio._verified.cache_clear(), imageio.read_image(p))))
            header.append(_best(lambda: imageio.image_info(p)))
            nii = p.with_suffix(".nii.gz")
            sitk.WriteImage(sitk.ReadImage(str(p)), str(nii), useCompression=True)
            nii_plain.append(_best(lambda: sitk.ReadImage(str(nii))))
            nii_crc.append(_best(lambda: (imageio._verified.cache_clear(), imageio.verify_compressed(nii))))
        size = sitk.ReadImage(str(images[0])).GetSize()
        print(f"## input checks, {len(images)} phantom CT volumes (about {size}), gzip NRRD; median of best-of-3")
        print(f"SimpleITK read alone            {statistics.median(plain) * 1e3:8.1f} ms")
        print(f"gzip CRC check alone (NRRD)     {statistics.median(crc) * 1e3:8.1f} ms")
        print(f"radiodeep read_image (all checks){statistics.median(checked) * 1e3:7.1f} ms")
        print(f"header-only geometry            {statistics.median(header) * 1e3:8.2f} ms")
        print(f"SimpleITK read .nii.gz          {statistics.median(nii_plain) * 1e3:8.1f} ms")
        print(f"gzip CRC check alone (.nii.gz)  {statistics.median(nii_crc) * 1e3:8.1f} ms")
        cfg = parse_config({"cohort": {"manifest": str(manifest), "positive_label": "short"},
                            "features": {"handcrafted": {"params": None, "settings": {"binWidth": 25}}}},
                           base_dir=tmp)
        for run in ("first (imports PyRadiomics)", "again"):
            imageio._verified.cache_clear()
            t0 = time.perf_counter()
            report = load_cohort(cfg)
            dt = time.perf_counter() - t0
            print(f"validate, every check, {run}: {dt / len(images) * 1e3:.1f} ms per case (ok: {report.ok})")


if __name__ == "__main__":
    main()
