"""Check a config and its cohort without computing any feature; list every problem."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .cohort import Cohort, check_cases, read_manifest
from .config import Config
from .errors import CaseError, CaseFailure
from .imageio import GeometryPolicy, check_scalar, geometry_mismatch, image_info, read_case_images, read_case_sequences
from .progress import progress as _progress

log = logging.getLogger(__name__)

__all__ = ["CohortReport", "check_routes", "load_cohort"]


@dataclass
class CohortReport:
    """The cohort as read, manifest-level problems, and per-case failures."""

    cohort: Cohort | None
    problems: list[str] = field(default_factory=list)  # manifest/config level: block any run
    failures: list[CaseFailure] = field(default_factory=list)  # per case
    notes: list[str] = field(default_factory=list)  # per case, what was adapted (not a problem)
    warnings: list[str] = field(default_factory=list)  # per case, what computes but means little

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures

    def lines(self) -> list[str]:
        return list(self.problems) + [f"case {f.case_id}: {f.reason}" for f in self.failures]


def load_cohort(config: Config, *, check_images: bool = True, progress: bool = False,
                labels: bool = True) -> CohortReport:
    """Read the manifest and check every case: files, integrity (gzip CRC, impossible values),
    geometry (from headers first), mask label, and what predicts a route's failure on the
    case (dimension against the mode, components, ROI voxels against the parameter file).
    ``labels=False``: label-free work (``--only extract``, ``radiodeep predict``); the manifest
    needs no label column, or may hold one label value."""
    cc = config.cohort
    label, _ = config.roi_label()
    try:
        cohort, problems = read_manifest(config.resolve(cc.manifest), mask_label=label,
                                         sequences=cc.sequences, positive_label=cc.positive_label,
                                         roi_name=cc.roi_name, mask_cache=config.cache_dir / "masks",
                                         labels=labels, columns=cc.columns)
    except ValueError as err:
        return CohortReport(None, [str(err)])
    if config.evaluation.scheme == "external" and labels:
        splits = {c.split for c in cohort.cases}
        for want in (config.evaluation.train_split, config.evaluation.test_split):
            if want not in splits:
                problems.append(f"evaluation.scheme external needs manifest column 'split' with value "
                                f"{want!r}; found {sorted(s for s in splits if s) or 'none'}")
    failures: list[CaseFailure] = []
    notes: list[str] = []
    warnings: list[str] = []
    if check_images:
        policy = GeometryPolicy.of(cc)
        needs = _route_needs(config)

        def check(case):
            _header_geometry(case, policy)
            said: list[str] = []
            image, mask = read_case_images(case, policy.tolerance, policy.resample_mask, notes=said)
            read_case_sequences(case, image, policy.tolerance)
            notes.extend(f"case {case.case_id}: {n}" for n in said)
            warned: list[str] = []
            try:
                _route_case_problems(case, image, mask, needs, config, warned)
            finally:
                warnings.extend(f"case {case.case_id}: {w}" for w in warned)

        failures = check_cases(_progress(cohort.cases, desc="checking cases", enabled=progress),
                               check, stage="input")
    return CohortReport(cohort, problems, failures, notes, warnings)


def _header_geometry(case, policy: GeometryPolicy) -> None:
    """Geometry from the headers alone, before any voxel is read (a mismatch is found cheaply;
    with resample_mask the mask's own is left to the reader)."""
    image = image_info(case.image, case.case_id, "image")
    check_scalar(image, case.case_id, "image", case.image)
    from .masks import dicom_kind

    # an RTSTRUCT/DICOM-SEG mask has no grid of its own: it is drawn on the image's grid
    others = [] if dicom_kind(case.mask, case.case_id) is not None else [("mask", case.mask)]
    others += [(f"sequence {i + 1} ({p.name})", p) for i, p in enumerate(case.sequences)]
    for what, path in others:
        other = image_info(path, case.case_id, what)
        check_scalar(other, case.case_id, what, path)
        if what == "mask" and policy.resample_mask:
            continue  # the reader resamples it
        problem = geometry_mismatch(image, other, policy.tolerance, what=what)
        if problem is not None:
            if what == "mask":
                raise CaseError(case.case_id, f"image/mask geometry mismatch: {problem} "
                                "(set cohort.resample_mask: true to resample the mask onto the image)")
            raise CaseError(case.case_id, f"{what} does not share the image's grid: {problem}")


@dataclass
class _Needs:
    """What the configured routes need of every case (read once from their settings)."""

    handcrafted_mode: str | None = None
    min_dims: int = 1
    min_size: int | None = None
    resampled: tuple[float, ...] | None = None
    plane: str = "axial"
    slice_how: str = "largest"


def _route_needs(config: Config) -> _Needs:
    needs = _Needs(plane=config.roi.plane, slice_how="centre" if config.roi.slice == "centre" else "largest")
    if config.features.handcrafted is not None:
        from .features.handcrafted import settings_from_config

        try:
            setting = settings_from_config(config).run_params.get("setting") or {}
        except Exception:  # noqa: BLE001 - the settings' own problems are listed by check_routes
            setting = {}
        needs.handcrafted_mode = config.features.handcrafted.mode
        needs.min_dims = int(setting.get("minimumROIDimensions") or 2)
        needs.min_size = int(setting["minimumROISize"]) if setting.get("minimumROISize") else None
        spacing = setting.get("resampledPixelSpacing")
        needs.resampled = tuple(float(s) for s in spacing) if spacing else None
    return needs


def _route_case_problems(case, image, mask, needs: _Needs, config: Config, warnings: list[str]) -> None:
    """Raise (in plain words) what would make a route fail on this case; append warnings."""
    from .roi import choose_slices, plane_axis

    cid = case.case_id
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise CaseError(cid, f"image is {dim}D; radiodeep reads 2D or 3D images")
    if dim == 2 and needs.handcrafted_mode == "3d":
        raise CaseError(cid, "image is 2D (a single slice) but features.handcrafted.mode is 3d: "
                             "use features.handcrafted.mode: 2d for 2D images")
    if dim == 2 and config.roi.plane != "axial":
        raise CaseError(cid, f"image is 2D (a single slice); roi.plane {config.roi.plane!r} is not available, "
                             "use 'axial'")
    values = sitk.GetArrayViewFromImage(image)
    if values.size and values.min() == values.max():
        warnings.append(f"the image is constant (every voxel is {float(values.min()):g}): texture and deep "
                        "features carry no information")
    if needs.handcrafted_mode is None:
        return
    m = sitk.GetArrayViewFromImage(mask)
    m = m[None] if m.ndim == 2 else m
    spacing = tuple(float(s) for s in image.GetSpacing())
    if dim == 2:
        spacing = spacing + (1.0,)
    if needs.handcrafted_mode == "2d":
        axis = plane_axis(needs.plane)
        k = choose_slices(m, axis, needs.slice_how)[0]
        index = [slice(None)] * 3
        index[axis] = slice(k, k + 1)
        m = m[tuple(index)]
        where = f"the {needs.plane} slice radiodeep uses in 2D mode"
    else:
        where = "the ROI"
    nz = np.nonzero(m)
    n = int(nz[0].size)
    extent = [int(ax.max() - ax.min() + 1) for ax in nz]
    n_dims = sum(e > 1 for e in extent)
    if n_dims < needs.min_dims:
        shape = " x ".join(str(e) for e in extent[::-1])
        raise CaseError(cid, f"{where} spans {n_dims} dimension(s) ({n} voxel(s), {shape} voxels); PyRadiomics "
                             f"needs at least minimumROIDimensions = {needs.min_dims}: the handcrafted route would "
                             "fail on this case (check the mask)")
    if needs.min_size is not None:
        estimate = float(n)
        if needs.resampled:
            new = [r if r > 0 else s for r, s in zip(needs.resampled, spacing)]
            estimate = n * float(np.prod(spacing[:len(new)])) / float(np.prod(new))
        if estimate < needs.min_size:
            about = "" if not needs.resampled else f" (about {estimate:.0f} after resampling to {list(needs.resampled)} mm)"
            raise CaseError(cid, f"{where} has {n} voxel(s){about}, fewer than the parameter file's minimumROISize "
                                 f"= {needs.min_size}: the handcrafted route would fail on this case")


def check_routes(config: Config) -> list[str]:
    """Every configured route's settings problems that show before any case is read (the
    handcrafted parameter file and its use; the deep route's backbone, layer, input size,
    device, weights on this machine), all at once."""
    from .features.routes import route_problems

    return route_problems(config)


def check_output_writable(path: Path) -> str | None:
    """None when ``path`` can be created and written, else the reason (a unique probe name:
    processes probing one folder together never disturb each other)."""
    from .outdir import check_writable

    return check_writable(path)
