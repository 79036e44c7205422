"""Phantom cohorts: 3D lesions in a body/organ background, two outcome classes.

Each case is a small volume (NRRD) with its lesion mask and a label. Acquisition
varies per case (voxel spacing, noise, contrast, lesion position and size), and the
two classes differ the way real outcome classes might:

* ``short`` (the positive class): more heterogeneous inside, lobulated/spiculated margin;
* ``long``: more homogeneous, rounder.

The class parameters are drawn from overlapping distributions, so the task is
learnable but not trivial. Everything is deterministic per ``seed``; each case has
its own random stream, so case ``i`` is the same whatever the cohort size.

:class:`Acquisition` changes how a cohort is scanned (pixel spacing, noise level, a softer
reconstruction kernel as a Gaussian blur) without changing the lesions' classes:
:func:`make_cohort_pair` writes two cohorts that differ that way (a real shift for external
validation: train on cohort 1, test on cohort 2). The default acquisition gives exactly the
phantoms written before these options existed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["PhantomCase", "Acquisition", "ACQUISITIONS", "make_case", "make_cohort", "make_cohort_pair",
           "POSITIVE", "NEGATIVE"]

POSITIVE, NEGATIVE = "short", "long"
FOV_MM = (56.0, 72.0, 72.0)  # z, y, x physical extent


@dataclass(frozen=True)
class PhantomCase:
    image: np.ndarray  # (z, y, x) float32; HU for CT
    mask: np.ndarray  # (z, y, x) uint8
    spacing: tuple[float, float, float]  # (x, y, z) as SimpleITK wants it
    label: str
    extra: dict[str, np.ndarray]  # further MR sequences by name


@dataclass(frozen=True)
class Acquisition:
    """How a phantom cohort is acquired; the default is the original phantoms' acquisition.

    ``spacing_xy`` / ``spacing_z``: ranges (mm) the per-case spacing is drawn from;
    ``noise``: factor on the per-case noise level; ``blur_mm``: sigma (mm, in-plane; through-plane
    too) of a Gaussian applied to the image after the noise (a soft reconstruction kernel).
    """

    spacing_xy: tuple[float, float] = (0.7, 1.0)
    spacing_z: tuple[float, float] = (1.5, 3.0)
    noise: float = 1.0
    blur_mm: float = 0.0
    name: str = field(default="default", compare=False)


#: two scanners for external-validation phantoms: sharp/fine/noisy vs soft/coarse/quieter
ACQUISITIONS = {
    "cohort1": Acquisition(spacing_xy=(0.6, 0.8), spacing_z=(1.0, 1.5), noise=1.3, blur_mm=0.0,
                           name="cohort1"),
    "cohort2": Acquisition(spacing_xy=(0.9, 1.1), spacing_z=(2.5, 3.0), noise=0.6, blur_mm=0.8,
                           name="cohort2"),
}


def _grid(shape, spacing_zyx):
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing_zyx))
    return np.meshgrid(z, y, x, indexing="ij")


def make_case(index: int, seed: int = 0, modality: str = "ct", positive: bool | None = None,
              acquisition: Acquisition | None = None) -> PhantomCase:
    """One phantom case; ``positive`` defaults to alternating classes by index."""
    acq = acquisition or Acquisition()
    rng = np.random.default_rng([seed, index])
    if positive is None:
        positive = index % 2 == 0
    sxy = rng.uniform(*acq.spacing_xy)
    sz = rng.uniform(*acq.spacing_z)
    spacing_zyx = (sz, sxy, sxy)
    shape = tuple(int(round(f / s)) for f, s in zip(FOV_MM, spacing_zyx))
    Z, Y, X = _grid(shape, spacing_zyx)
    cz, cy, cx = (f / 2 for f in FOV_MM)

    # body and organ (lung for CT, brain-like parenchyma for MR)
    body = ((Y - cy) / 34.0) ** 2 + ((X - cx) / 35.0) ** 2 <= 1.0
    organ = ((Y - cy) / 27.0) ** 2 + ((X - cx) / 29.0) ** 2 <= 1.0

    # lesion: centre jittered inside the organ, radius by class (overlapping)
    r0 = rng.uniform(6.0, 11.0) + (1.5 if positive else 0.0)
    off = rng.uniform(-8, 8, size=3) * np.array([0.6, 1.0, 1.0])
    lz, ly, lx = cz + off[0], cy + off[1], cx + off[2]
    dz, dy, dx = Z - lz, Y - ly, X - lx
    r = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
    theta = np.arctan2(dy, dx)
    phi = np.arccos(np.clip(dz / r, -1, 1))
    lobul = rng.uniform(0.05, 0.22) if positive else rng.uniform(0.0, 0.12)
    spic = rng.uniform(0.10, 0.45) if positive else rng.uniform(0.0, 0.18)
    m = int(rng.integers(5, 10))
    p1, p2, p3 = rng.uniform(0, 2 * np.pi, 3)
    surface = r0 * (
        1.0
        + lobul * np.cos(3 * theta + p1) * np.sin(phi)
        + spic * np.maximum(0.0, np.cos(m * theta + p2)) ** 6 * np.sin(phi) ** 2
        + 0.5 * spic * np.maximum(0.0, np.cos(m * phi + p3)) ** 6
    )
    lesion = r <= surface

    # heterogeneity: smoothed noise field, stronger for the positive class
    het = rng.uniform(0.35, 1.0) if positive else rng.uniform(0.05, 0.55)
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                    sigma=(1.0, 1.5 / sxy, 1.5 / sxy))
    field /= field.std() + 1e-6
    necrosis = positive and rng.uniform() < 0.5
    core = r <= 0.45 * r0

    if modality == "ct":
        img = np.full(shape, -1000.0, np.float32)  # air
        img[body] = rng.uniform(20, 60)  # soft tissue
        parenchyma = -850.0 + 40.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        img[organ] = parenchyma[organ]
        contrast = rng.uniform(0.8, 1.2)
        lesion_val = (30.0 + 70.0 * het * field) * contrast
        if necrosis:
            lesion_val = np.where(core, lesion_val - 40.0, lesion_val)
        img[lesion] = lesion_val[lesion]
        img += acq.noise * rng.uniform(8.0, 30.0) * rng.standard_normal(shape).astype(np.float32)
        extra = {}
    elif modality == "mr":
        gain = rng.uniform(0.6, 1.6)  # arbitrary MR units vary between scanners
        bias = 1.0 + 0.15 * ((X - cx) / 36.0) + 0.1 * ((Y - cy) / 36.0)  # smooth bias field

        def sequence(tissue, organ_v, lesion_v, necro_v):
            v = np.full(shape, 5.0, np.float32)
            v[body] = tissue
            v[organ] = organ_v
            lv = lesion_v * (1.0 + 0.35 * het * field)
            if necrosis:
                lv = np.where(core, necro_v, lv)
            v[lesion] = lv[lesion]
            v = v * bias * gain
            return (v + acq.noise * rng.uniform(5.0, 20.0) * np.abs(rng.standard_normal(shape))).astype(np.float32)

        img = sequence(300.0, 400.0, 520.0, 250.0)  # T1 with contrast
        extra = {"t2": sequence(250.0, 350.0, 600.0, 800.0),
                 "flair": sequence(200.0, 300.0, 560.0, 150.0)}
    else:
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")

    if acq.blur_mm > 0:
        sigma = tuple(acq.blur_mm / s for s in spacing_zyx)
        img = ndimage.gaussian_filter(img, sigma)
        extra = {k: ndimage.gaussian_filter(v, sigma) for k, v in extra.items()}
    return PhantomCase(img.astype(np.float32), lesion.astype(np.uint8),
                       (sxy, sxy, sz), POSITIVE if positive else NEGATIVE, extra)


def _write(arr: np.ndarray, spacing, path: Path, origin) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    sitk.WriteImage(img, str(path), useCompression=True)


def make_cohort(out_dir: Path | str, n_cases: int = 40, seed: int = 0, modality: str = "ct",
                split: bool | str = False, acquisition: Acquisition | None = None,
                id_prefix: str = "") -> Path:
    """Write a phantom cohort (NRRD volumes, masks, ``manifest.csv``); return the manifest path.

    Classes are balanced (alternating). With ``split=True`` a ``split`` column
    assigns the first half of each class to ``train`` and the rest to ``test``; a string
    ``split`` puts every case in that split. ``id_prefix`` starts every case id.
    """
    if n_cases < 2:
        raise ValueError(f"a cohort needs at least 2 cases, got {n_cases}")
    modality = modality.lower()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_cases):
        case = make_case(i, seed=seed, modality=modality, acquisition=acquisition)
        cid = f"{id_prefix}{modality}{i:03d}"
        origin = (-FOV_MM[2] / 2, -FOV_MM[1] / 2, -100.0 + 3.0 * i)
        img_rel, mask_rel = f"images/{cid}.nrrd", f"masks/{cid}_mask.nrrd"
        _write(case.image, case.spacing, out / img_rel, origin)
        _write(case.mask, case.spacing, out / mask_rel, origin)
        row = {"case_id": cid, "image": img_rel, "mask": mask_rel, "label": case.label}
        for name, arr in case.extra.items():
            rel = f"images/{cid}_{name}.nrrd"
            _write(arr, case.spacing, out / rel, origin)
            row[name] = rel
        if isinstance(split, str):
            row["split"] = split
        elif split:
            row["split"] = "train" if (i // 2) < (n_cases // 4 + (n_cases % 4 > 0)) else "test"
        row["age"] = int(np.random.default_rng([seed, i, 7]).integers(45, 85))  # a covariate
        rows.append(row)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def make_cohort_pair(out_dir: Path | str, n_train: int = 20, n_test: int = 20, seed: int = 0,
                     modality: str = "ct", acquisitions: tuple[Acquisition, Acquisition] | None = None) -> Path:
    """Two phantom cohorts acquired differently (:data:`ACQUISITIONS`), one manifest.

    Cohort 1 (``c1_`` ids, ``split: train``) and cohort 2 (``c2_`` ids, ``split: test``, other
    lesions: seed + 1) are written under ``out_dir/cohort1`` and ``out_dir/cohort2``;
    ``out_dir/manifest.csv`` lists both (paths relative to it). Returns that manifest.
    """
    out = Path(out_dir)
    acqs = acquisitions or (ACQUISITIONS["cohort1"], ACQUISITIONS["cohort2"])
    rows, fields = [], None
    for k, (n, acq, split) in enumerate(((n_train, acqs[0], "train"), (n_test, acqs[1], "test")), start=1):
        sub = f"cohort{k}"
        m = make_cohort(out / sub, n_cases=n, seed=seed + k - 1, modality=modality, split=split,
                        acquisition=acq, id_prefix=f"c{k}_")
        with m.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = fields or reader.fieldnames
            for row in reader:
                for col in ("image", "mask", "t2", "flair"):
                    if row.get(col):
                        row[col] = f"{sub}/{row[col]}"
                rows.append(row)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
