"""ROI preparation: a 3D image and its mask -> the 2D (or 2.5D) inputs of the deep route.

What the CNN sees decides what the deep features can say, so every step is explicit:

1. **Slice choice** along the configured plane (``roi.plane``: axial, coronal or
   sagittal): the slice with the largest ROI area, every slice that holds the ROI,
   or the centre slice of the ROI's extent.
2. **In-plane resampling** of the chosen slice(s) to ``roi.spacing_mm`` before
   cropping (image: linear, anti-aliased when coarsening; mask: nearest neighbour).
   Without ``spacing_mm`` the native grid is kept, except that strongly anisotropic
   in-plane pixels (coronal/sagittal planes of thick-slice scans) are resampled to
   square pixels of the finer spacing so the anatomy is not squashed.
3. **Intensity mapping** to [0, 1]: CT windows (preset name or [low, high] HU;
   default ``lung``), MR percentile clipping then min-max or z-score, with the
   statistics taken within the ROI or the whole slice.
4. **Crop**: ``exact`` (ROI bounding box plus ``margin_px``), ``window`` (a fixed
   window of ``window_mm`` or ``window_px`` centred on the ROI centroid) or
   ``masked`` (exact, with everything outside the ROI set to ``roi.background``);
   optionally padded to a square (``aspect: pad``), then resized to ``roi.size``.
   Borders are padded, never wrapped: a crop that runs off the slice is filled with
   the darkest mapped value of that slice (air for CT).
5. **Channel composition** into the 3-channel input an ImageNet network expects.

Everything here is pure: images in, arrays out, no file I/O (the contact sheet
lives in :mod:`radiodeep.qc`). Problems with one case raise
:class:`radiodeep.errors.CaseError` (``stage="roi"``) naming the case; problems
with the settings themselves raise ``ValueError``.

Conventions
-----------
* Arrays are in SimpleITK order ``(z, y, x)``; ``plane_axis`` gives the array axis
  a plane cuts across (axial 0, coronal 1, sagittal 2), which is also PyRadiomics'
  ``force2Ddimension``.
* No reorientation by direction cosines is done. A coronal slice is ``(z, x)`` and
  a sagittal slice ``(z, y)``; their rows are flipped so that increasing ``z``
  (superior in LPS/RAS scans) points up. Crop boxes refer to this flipped slice.
* ``slices`` strategy: channels are the slices ``k-1, k, k+1`` along the plane
  axis; at the first or last slice of the image the edge slice is repeated (so
  R == G at the first slice, G == B at the last). With ``slice: all`` each chosen
  slice gets its own neighbours. An image with a single slice along the plane
  axis is refused.
* MR mapping for ``slices`` uses the statistics of the centre slice for all three
  channels (so they stay comparable); for ``sequences`` each sequence is
  normalised on its own.
* z-scores are clipped to [-3, 3] and mapped linearly to [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.transform import resize as _sk_resize

from .config import CT_PRESETS, RoiConfig
from .errors import CaseError
from .imageio import geometry_mismatch

__all__ = [
    "RoiViews",
    "prepare_case",
    "slice_mask",
    "largest_slice",
    "plane_axis",
    "choose_slices",
    "view_tags",
    "window_bounds",
    "apply_window",
    "normalise_mr",
    "roi_box",
    "window_box",
    "PLANES",
    "CHANNEL_STRATEGIES",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_CT_WINDOWS",
    "ZSCORE_CLIP",
]

log = logging.getLogger(__name__)

PLANES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
CHANNEL_STRATEGIES: tuple[str, ...] = ("r", "g", "b", "grey3", "each", "ct_windows", "slices", "sequences")
DEFAULT_CT_WINDOW = "lung"
DEFAULT_CT_WINDOWS: tuple[str, str, str] = ("lung", "mediastinum", "bone")
ZSCORE_CLIP = 3.0  # z-scores in [-ZSCORE_CLIP, ZSCORE_CLIP] map linearly onto [0, 1]
ANISOTROPY_TOLERANCE = 0.01  # relative in-plane spacing difference tolerated without resampling
MAX_SLICE_SIDE = 8192  # refuse a resampled slice larger than this on a side
_STAGE = "roi"
_RGB = {"r": 0, "g": 1, "b": 2}
_EPS = 1e-6


@dataclass(frozen=True)
class RoiViews:
    """The deep route's inputs for one case.

    ``views`` maps a tag (the channel strategy name; ``'r'``, ``'g'``, ``'b'`` for
    ``each``) to a float32 array ``(n_slices, 3, size, size)`` in [0, 1].
    ``grey`` is the single-channel crop before channel composition, for QC.
    ``boxes`` holds, per slice, the crop box ``(row0, row1, col0, col1)`` (end
    exclusive, before any pad-to-square) in the pixels of the oriented, resampled
    slice whose spacing is ``pixel_spacing`` (rows, cols) in mm; a box may run
    beyond the slice (that part is padded). ``notes`` says what was adapted
    (label used, fallbacks, resampling) in words.
    """

    case_id: str
    views: dict[str, np.ndarray]
    slice_indices: tuple[int, ...]
    grey: np.ndarray
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    notes: tuple[str, ...] = field(default=())

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.views)

    @property
    def n_slices(self) -> int:
        return len(self.slice_indices)


# --------------------------------------------------------------------------- small pure helpers
def plane_axis(plane: str) -> int:
    """The array axis (SimpleITK order z, y, x) a plane cuts across: axial 0, coronal 1, sagittal 2."""
    try:
        return PLANES[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}; choose one of {sorted(PLANES)}") from None


def view_tags(channels: str) -> tuple[str, ...]:
    """The tags ``prepare_case`` returns for a channel strategy (``each`` -> r, g, b)."""
    if channels not in CHANNEL_STRATEGIES:
        raise ValueError(f"unknown channel strategy {channels!r}; choose one of {list(CHANNEL_STRATEGIES)}")
    return ("r", "g", "b") if channels == "each" else (channels,)


def _areas(mask_array: np.ndarray, axis: int) -> np.ndarray:
    m = np.asarray(mask_array)
    if m.ndim != 3:
        raise ValueError(f"mask array must be 3D (z, y, x), got shape {m.shape}")
    if not -3 <= axis <= 2:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    axis %= 3
    other = tuple(i for i in range(3) if i != axis)
    return np.count_nonzero(m, axis=other)


def largest_slice(mask_array: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most ROI voxels (ties: the lowest index).

    ``mask_array`` is in SimpleITK order (z, y, x); any non-zero voxel counts.
    Raises ``ValueError`` for an empty mask.
    """
    areas = _areas(mask_array, axis)
    if areas.size == 0 or areas.max() == 0:
        raise ValueError("mask is empty (no non-zero voxel)")
    return int(np.argmax(areas))


def choose_slices(mask_array: np.ndarray, axis: int, how: str) -> tuple[int, ...]:
    """Slice indices along ``axis`` for ``how`` in {'largest', 'all', 'centre'}.

    ``all``: every slice holding the ROI, ascending. ``centre``: the middle of the
    ROI's extent along the axis (lower middle for an even count); if the ROI skips
    that slice (several components), the nearest slice that holds it (ties: lower).
    """
    areas = _areas(mask_array, axis)
    held = np.flatnonzero(areas)
    if held.size == 0:
        raise ValueError("mask is empty (no non-zero voxel)")
    if how == "largest":
        return (int(np.argmax(areas)),)
    if how == "all":
        return tuple(int(i) for i in held)
    if how == "centre":
        mid = (int(held[0]) + int(held[-1])) // 2
        return (int(held[np.argmin(np.abs(held - mid))]),)
    raise ValueError(f"unknown slice choice {how!r}; choose 'largest', 'all' or 'centre'")


def window_bounds(window: str | tuple[float, float] | Sequence[float] | None) -> tuple[float, float]:
    """``(low, high)`` in HU of a CT window: a preset name (level/width), ``[low, high]``, or None (lung)."""
    if window is None:
        window = DEFAULT_CT_WINDOW
    if isinstance(window, str):
        if window not in CT_PRESETS:
            raise ValueError(f"unknown CT window preset {window!r}; choose one of {sorted(CT_PRESETS)}")
        level, width = CT_PRESETS[window]
        return float(level - width / 2.0), float(level + width / 2.0)
    lo, hi = (float(v) for v in window)
    if not lo < hi:
        raise ValueError(f"window [low, high] needs low < high, got [{lo}, {hi}]")
    return lo, hi


def apply_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto [0, 1] and clip (float32)."""
    v = np.asarray(values, dtype=np.float32)
    out = (v - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _mr_params(reference: np.ndarray, percentiles: tuple[float, float], method: str):
    """Clip bounds and the linear map of MR normalisation, or None where degenerate."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if ref.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(ref, percentiles))
    scale = max(1.0, abs(lo), abs(hi))
    if not hi - lo > _EPS * scale:
        return None
    if method == "minmax":
        a = 1.0 / (hi - lo)
        return lo, hi, a, -lo * a
    if method == "zscore":
        c = np.clip(ref, lo, hi)
        mu, sd = float(c.mean()), float(c.std())
        if not sd > _EPS * scale:
            return None
        a = 1.0 / (2.0 * ZSCORE_CLIP * sd)
        return lo, hi, a, 0.5 - mu * a
    raise ValueError(f"unknown MR normalisation {method!r}; choose 'minmax' or 'zscore'")


def _apply_mr(values: np.ndarray, params) -> np.ndarray:
    if params is None:
        return np.zeros(np.shape(values), dtype=np.float32)
    lo, hi, a, b = params
    v = np.clip(np.asarray(values, dtype=np.float64), lo, hi)
    return np.clip(v * a + b, 0.0, 1.0).astype(np.float32)


def normalise_mr(values: np.ndarray, reference: np.ndarray | None = None,
                 percentiles: tuple[float, float] = (1.0, 99.0), method: str = "minmax") -> np.ndarray:
    """MR intensities -> [0, 1] (float32).

    Percentile bounds of ``reference`` (default: ``values`` itself; pass the ROI
    voxels for ``region: roi``) clip ``values``; then ``minmax`` maps the bounds to
    0 and 1, ``zscore`` standardises with the clipped reference's mean and standard
    deviation and maps z in [-3, 3] to [0, 1]. A constant reference gives zeros.
    """
    ref = values if reference is None else reference
    return _apply_mr(values, _mr_params(ref, percentiles, method))


def roi_box(mask2d: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """Bounding box ``(row0, row1, col0, col1)`` (end exclusive) of a 2D mask, grown by ``margin``."""
    rows = np.flatnonzero(np.any(mask2d, axis=1))
    cols = np.flatnonzero(np.any(mask2d, axis=0))
    if rows.size == 0:
        raise ValueError("mask slice is empty")
    m = int(margin)
    return int(rows[0]) - m, int(rows[-1]) + 1 + m, int(cols[0]) - m, int(cols[-1]) + 1 + m


def window_box(centre: tuple[float, float], side: tuple[int, int]) -> tuple[int, int, int, int]:
    """A ``side``-pixel box whose centre lies within half a pixel of ``centre`` (row, col)."""
    box = []
    for c, s in zip(centre, side):
        start = int(np.floor(c - (s - 1) / 2.0 + 0.5))
        box += [start, start + int(s)]
    return tuple(box)  # type: ignore[return-value]


# --------------------------------------------------------------------------- validation
def _fail(case_id: str, reason: str) -> CaseError:
    return CaseError(case_id, reason, stage=_STAGE)


def _as_volume(img: sitk.Image, case_id: str, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array (z, y, x) and spacing (z, y, x) of a 2D or 3D scalar image (2D -> one slice)."""
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise _fail(case_id, f"{what} has {img.GetNumberOfComponentsPerPixel()} components per pixel; "
                             "expected a scalar (grey) image")
    dim = img.GetDimension()
    arr = sitk.GetArrayViewFromImage(img)
    sp = tuple(float(s) for s in img.GetSpacing())[::-1]
    if dim == 2:
        return arr[None], (1.0, sp[0], sp[1])
    if dim == 3:
        return arr, sp  # type: ignore[return-value]
    raise _fail(case_id, f"{what} is {dim}D; expected a 2D or 3D image")


def _binary_mask(mask: sitk.Image, image: sitk.Image, case_id: str, mask_label: int | None,
                 notes: list[str]) -> np.ndarray:
    problem = geometry_mismatch(image, mask)
    if problem is not None:
        raise _fail(case_id, f"mask does not share the image's grid ({problem}); "
                             "resample it first (cohort.resample_mask: true)")
    arr, _ = _as_volume(mask, case_id, "mask")
    nz = arr[arr != 0]
    if nz.size == 0:
        raise _fail(case_id, "mask is empty (no non-zero voxel)")
    labels = [int(v) for v in np.unique(nz)]
    if mask_label is None:
        if len(labels) > 1:
            raise _fail(case_id, f"mask holds several labels {labels}; name the ROI's label "
                                 "(cohort.mask_label) to choose one")
        label = labels[0]
        if label != 1:
            notes.append(f"mask holds the single label {label}; used it as the ROI")
    else:
        label = int(mask_label)
        if label not in labels:
            raise _fail(case_id, f"mask has no voxel with label {label} (labels present: {labels})")
        if len(labels) > 1:
            notes.append(f"mask holds labels {labels}; used label {label} (cohort.mask_label)")
    return np.asarray(arr == label)


# --------------------------------------------------------------------------- slice_mask
def slice_mask(image: sitk.Image, mask: sitk.Image, roi: RoiConfig, case_id: str,
               *, mask_label: int | None = None) -> tuple[sitk.Image, int]:
    """The mask restricted to one slice, for the handcrafted route's 2D mode.

    The slice is the largest (``slice: largest`` or ``all``) or the centre one
    along ``roi.plane``. Returns a binary uint8 mask (1 = ROI) on the input's
    geometry, and the slice index along ``plane_axis(roi.plane)``; pass that axis
    to PyRadiomics as ``force2Ddimension`` with ``force2D: true``. A 2D image gives
    its mask back with index 0 (axial only).
    """
    notes: list[str] = []
    img_arr, _ = _as_volume(image, case_id, "image")
    m = _binary_mask(mask, image, case_id, mask_label, notes)
    for n in notes:
        log.info("case %s: %s", case_id, n)
    axis = plane_axis(roi.plane)
    if image.GetDimension() == 2 and axis != 0:
        raise _fail(case_id, f"image is 2D (a single slice); plane {roi.plane!r} is not available, use 'axial'")
    how = "centre" if roi.slice == "centre" else "largest"
    k = choose_slices(m, axis, how)[0]
    keep = np.zeros_like(m, dtype=np.uint8)
    index = [slice(None)] * 3
    index[axis] = k
    keep[tuple(index)] = m[tuple(index)]
    out = sitk.GetImageFromArray(keep[0] if image.GetDimension() == 2 else keep)
    out.CopyInformation(mask)
    return out, int(k)


# --------------------------------------------------------------------------- resampling and resizing
def _target_spacing(spacing: tuple[float, float], roi: RoiConfig, notes: list[str]) -> tuple[float, float]:
    if roi.spacing_mm is not None:
        return float(roi.spacing_mm), float(roi.spacing_mm)
    sa, sb = spacing
    if max(sa, sb) > (1.0 + ANISOTROPY_TOLERANCE) * min(sa, sb):
        t = min(sa, sb)
        notes.append(f"in-plane pixels {sa:.4g} x {sb:.4g} mm are anisotropic; "
                     f"resampled to square {t:.4g} mm pixels")
        return t, t
    return sa, sb


def _resample(planes: np.ndarray, spacing: tuple[float, float], target: tuple[float, float],
              order: int) -> np.ndarray:
    """Resample the last two axes of ``planes`` from ``spacing`` to ``target`` mm.

    Extent-aligned: new pixel ``o`` covers ``[o, o + 1) * target`` mm from the slice's
    edge. ``order=1``: separable linear interpolation, Gaussian anti-aliasing along an
    axis that is coarsened (sigma = (factor - 1) / 2 input pixels, as skimage does);
    ``order=0``: nearest neighbour (the input pixel under the new pixel's centre).
    Coordinates beyond the edge are clamped to it (never wrapped).
    """
    out = planes if order == 0 else planes.astype(np.float32, copy=False)
    for ax, (s, t) in zip((-2, -1), zip(spacing, target)):
        if abs(s - t) <= 1e-9 * max(s, t):
            continue
        n = out.shape[ax]
        f = t / s  # input pixels per output pixel
        m = max(1, int(round(n / f)))
        pos = (np.arange(m) + 0.5) * f  # new pixel centres, in input-edge coordinates
        if order == 0:
            idx = np.clip(np.floor(pos).astype(np.intp), 0, n - 1)
            out = np.take(out, idx, axis=ax)
            continue
        if f > 1.0:
            out = ndimage.gaussian_filter1d(out, sigma=(f - 1.0) / 2.0, axis=ax, mode="nearest")
        x = np.clip(pos - 0.5, 0.0, n - 1.0)
        i0 = np.floor(x).astype(np.intp)
        i1 = np.minimum(i0 + 1, n - 1)
        w = (x - i0).astype(np.float32)
        shape = [1] * out.ndim
        shape[ax] = m
        w = w.reshape(shape)
        out = np.take(out, i0, axis=ax) * (1.0 - w) + np.take(out, i1, axis=ax) * w
    return out.astype(np.float32, copy=False) if order else out


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation at pixel centres, edges repeated: the sampling of
    ``skimage.transform.resize(order=1, mode="edge")`` (``ndimage.zoom`` with ``grid_mode``)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = x - i0
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1.0 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights


def _resize(stack: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(C, h, w)`` to ``(C, size, size)``; anti-aliased when shrinking."""
    c, h, w = stack.shape
    if (h, w) == (size, size):
        return stack.astype(np.float32, copy=True)
    if h <= size and w <= size:  # enlarging (the published 56 px window): two small matrix products,
        # the values of skimage's resize (bit for bit on square crops) at a twentieth of its time
        out = _linear_weights(h, size) @ stack.astype(np.float64) @ _linear_weights(w, size).T
    else:
        out = _sk_resize(stack, (c, size, size), order=1, mode="edge", anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _resize_mask(mask2d: np.ndarray, size: int) -> np.ndarray:
    if mask2d.shape == (size, size):
        return mask2d.copy()
    out = _sk_resize(mask2d.astype(np.float32), (size, size), order=0, mode="edge", anti_aliasing=False,
                     preserve_range=True)
    return out > 0.5


def _extract(planes: np.ndarray, box: tuple[int, int, int, int], fill) -> np.ndarray:
    """``planes[..., r0:r1, c0:c1]`` where the box may run off the slice (filled, never wrapped)."""
    r0, r1, c0, c1 = box
    a, b = planes.shape[-2:]
    out = np.empty(planes.shape[:-2] + (r1 - r0, c1 - c0), dtype=planes.dtype)
    fill = np.asarray(fill, dtype=planes.dtype)
    out[...] = fill.reshape(fill.shape + (1, 1)) if fill.ndim else fill
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, a), max(c0, 0), min(c1, b)
    if sr0 < sr1 and sc0 < sc1:
        out[..., sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = planes[..., sr0:sr1, sc0:sc1]
    return out


def _pad_square(stack: np.ndarray, fill) -> np.ndarray:
    h, w = stack.shape[-2:]
    s = max(h, w)
    if h == w:
        return stack
    top, left = (s - h) // 2, (s - w) // 2
    return _extract(stack, (-top, s - top, -left, s - left), fill)


# --------------------------------------------------------------------------- prepare_case
def _check_settings(roi: RoiConfig, channels: str) -> None:
    view_tags(channels)
    if not 0.0 <= roi.background <= 1.0:
        raise ValueError(f"roi.background must be in [0, 1] (it is set after intensity mapping), "
                         f"got {roi.background}")
    if roi.crop == "window" and roi.window_mm is None and roi.window_px is None:
        raise ValueError("crop 'window' needs roi.window_px or roi.window_mm")
    if channels == "ct_windows" and roi.intensity.modality != "CT":
        raise ValueError("channel strategy 'ct_windows' needs roi.intensity.modality: CT")
    window_bounds(roi.intensity.window)
    for w in roi.intensity.windows or DEFAULT_CT_WINDOWS:
        window_bounds(w)


def prepare_case(image: sitk.Image, mask: sitk.Image, roi: RoiConfig, channels: str, case_id: str,
                 sequences: Sequence[sitk.Image] | None = None, *, mask_label: int | None = None) -> RoiViews:
    """Turn one case's image and mask into the deep route's network inputs.

    ``mask`` shares the image's grid; normally it is already binary (1 = ROI, as
    :func:`radiodeep.imageio.read_case_images` returns it). A mask holding several
    labels needs ``mask_label`` (the label used is recorded in ``notes``).
    ``sequences``: three images on the image's grid, for ``channels='sequences'``.

    Returns :class:`RoiViews`; raises :class:`CaseError` (stage ``roi``) naming
    the case for data it cannot handle, ``ValueError`` for impossible settings.
    """
    case_id = str(case_id)
    _check_settings(roi, channels)
    notes: list[str] = []
    vol, spacing_zyx = _as_volume(image, case_id, "image")
    m = _binary_mask(mask, image, case_id, mask_label, notes)
    axis = plane_axis(roi.plane)
    n_along = vol.shape[axis]
    if image.GetDimension() == 2 and axis != 0:
        raise _fail(case_id, f"image is 2D (a single slice); plane {roi.plane!r} is not available, use 'axial'")

    seq_vols: list[np.ndarray] = []
    if channels == "sequences":
        if sequences is None or len(sequences) != 3:
            got = "none" if sequences is None else str(len(sequences))
            raise _fail(case_id, f"channel strategy 'sequences' needs three sequence images, got {got}")
        for i, s in enumerate(sequences):
            problem = geometry_mismatch(image, s, what=f"sequence {i + 1}")
            if problem is not None:
                raise _fail(case_id, f"sequence {i + 1} of 3 does not share the image's grid ({problem})")
            seq_vols.append(_as_volume(s, case_id, f"sequence {i + 1}")[0])
    if channels == "slices" and n_along < 2:
        raise _fail(case_id, f"channel strategy 'slices' needs neighbouring slices (k-1, k, k+1), but the "
                             f"image has a single slice along the {roi.plane} axis")

    # planes of the chosen slices, oriented: (n, A, B); rows of coronal/sagittal flipped (z up)
    ks = choose_slices(m, axis, roi.slice)
    sp_plane = tuple(spacing_zyx[i] for i in range(3) if i != axis)
    flip = axis != 0

    def plane(v: np.ndarray, k: int) -> np.ndarray:
        p = np.take(v, k, axis=axis)
        return p[::-1] if flip else p

    if min(plane(vol, 0).shape) < 2:
        raise _fail(case_id, f"the {roi.plane} slices of this image are {plane(vol, 0).shape} pixels: a line, "
                             "not a plane; choose another roi.plane")

    # raw source planes: (n, P, A, B); source 0 is the grey (main image) plane
    sources: list[list[np.ndarray]] = []
    for k in ks:
        row = [plane(vol, k)]
        if channels == "slices":
            row += [plane(vol, min(max(j, 0), n_along - 1)) for j in (k - 1, k, k + 1)]
        elif channels == "sequences":
            row += [plane(s, k) for s in seq_vols]
        sources.append(row)
    raw = np.asarray(sources, dtype=np.float32)
    if not np.all(np.isfinite(raw)):
        raise _fail(case_id, "image holds non-finite values (NaN or inf) on the chosen slice(s)")
    masks = np.asarray([plane(m, k) for k in ks], dtype=bool)

    # in-plane resampling (image linear, mask nearest neighbour)
    target = _target_spacing(sp_plane, roi, notes)
    new_shape = [int(round(n * s / t)) for n, s, t in zip(raw.shape[-2:], sp_plane, target)]
    if max(new_shape) > MAX_SLICE_SIDE:
        raise _fail(case_id, f"resampling the {raw.shape[-2]}x{raw.shape[-1]} slice from "
                             f"{sp_plane[0]:.4g} x {sp_plane[1]:.4g} mm to {target[0]:.4g} mm pixels gives "
                             f"{new_shape[0]}x{new_shape[1]} pixels (limit {MAX_SLICE_SIDE}); "
                             "set a coarser roi.spacing_mm")
    raw_r = _resample(raw, sp_plane, target, order=1)
    masks_r = _resample(masks, sp_plane, target, order=0)
    for i in range(len(ks)):
        if not masks_r[i].any():
            # a tiny ROI can fall between the new pixel centres: keep the pixel under its centroid
            cy, cx = np.argwhere(masks[i]).mean(axis=0)
            ry = int(np.clip(np.floor((cy + 0.5) * sp_plane[0] / target[0]), 0, masks_r.shape[1] - 1))
            rx = int(np.clip(np.floor((cx + 0.5) * sp_plane[1] / target[1]), 0, masks_r.shape[2] - 1))
            masks_r[i, ry, rx] = True
            notes.append(f"slice {ks[i]}: the ROI is smaller than one {target[0]:.4g} mm pixel; "
                         "kept the pixel under its centroid")

    # intensity mapping on the whole resampled slices -> (n, Q, A', B') in [0, 1]
    mapped = _map_intensity(raw_r, masks_r, roi, channels, ks, notes)

    # crop, pad, resize
    size = roi.size
    if roi.crop == "window":
        if roi.window_mm is not None:
            side = tuple(max(1, int(round(roi.window_mm / t))) for t in target)
        else:
            side = (int(roi.window_px), int(roi.window_px))
    out = np.empty((len(ks), mapped.shape[1], size, size), dtype=np.float32)
    boxes = []
    for i in range(len(ks)):
        mk = masks_r[i]
        if roi.crop == "window":
            centre = tuple(float(c) for c in np.argwhere(mk).mean(axis=0))
            box = window_box(centre, side)  # type: ignore[arg-type]
        else:
            box = roi_box(mk, roi.margin_px)
        boxes.append(box)
        fill = mapped[i].reshape(mapped.shape[1], -1).min(axis=1)  # the darkest value: air for CT
        crop = _extract(mapped[i], box, fill)
        mcrop = _extract(mk, box, False)
        if roi.aspect == "pad":
            crop = _pad_square(crop, fill)
            mcrop = _pad_square(mcrop, False)
        res = _resize(crop, size)
        if roi.crop == "masked":
            res[:, ~_resize_mask(mcrop, size)] = np.float32(roi.background)
        out[i] = res

    for n in notes:
        log.info("case %s: %s", case_id, n)
    return RoiViews(
        case_id=case_id,
        views=_compose(out, channels),
        slice_indices=tuple(int(k) for k in ks),
        grey=np.ascontiguousarray(out[:, 0]),
        boxes=tuple(boxes),
        pixel_spacing=(float(target[0]), float(target[1])),
        notes=tuple(notes),
    )


def _map_intensity(raw: np.ndarray, masks: np.ndarray, roi: RoiConfig, channels: str,
                   ks: tuple[int, ...], notes: list[str]) -> np.ndarray:
    """Raw source planes (n, P, A, B) -> mapped channels (n, Q, A, B) in [0, 1].

    Channel 0 is always the grey image; for ct_windows / slices / sequences
    channels 1..3 are the RGB planes.
    """
    it = roi.intensity
    n = raw.shape[0]
    extra = channels in ("ct_windows", "slices", "sequences")
    out = np.empty((n, 4 if extra else 1) + raw.shape[-2:], dtype=np.float32)
    if it.modality == "CT":
        lo, hi = window_bounds(it.window)
        out[:, 0] = apply_window(raw[:, 0], lo, hi)
        if channels == "ct_windows":
            for c, w in enumerate(it.windows or DEFAULT_CT_WINDOWS):
                out[:, 1 + c] = apply_window(raw[:, 0], *window_bounds(w))
        elif extra:  # slices / sequences: the configured window on each plane
            out[:, 1:] = apply_window(raw[:, 1:4], lo, hi)
        return out

    # MR: statistics per slice, within the ROI or the whole slice
    for i in range(n):
        def params(src: int, what: str):
            p = None
            if it.region == "roi":
                p = _mr_params(raw[i, src][masks[i]], it.percentiles, it.normalise)
                if p is None:
                    notes.append(f"slice {ks[i]}: {what} is constant within the ROI; "
                                 "normalised over the whole slice instead")
            if p is None:
                p = _mr_params(raw[i, src], it.percentiles, it.normalise)
                if p is None:
                    notes.append(f"slice {ks[i]}: {what} is constant over the slice; mapped to 0")
            return p

        p0 = params(0, "the image")
        out[i, 0] = _apply_mr(raw[i, 0], p0)
        if channels == "slices":  # the centre slice's mapping for all three, so they stay comparable
            out[i, 1:] = _apply_mr(raw[i, 1:4], p0)
        elif channels == "sequences":
            for c in range(3):
                out[i, 1 + c] = _apply_mr(raw[i, 1 + c], params(1 + c, f"sequence {c + 1}"))
    return out


def _compose(mapped: np.ndarray, channels: str) -> dict[str, np.ndarray]:
    """(n, Q, S, S) mapped crops -> {tag: (n, 3, S, S)} float32 in [0, 1]."""
    grey = mapped[:, 0]
    n, s = grey.shape[0], grey.shape[-1]

    def one(c: int) -> np.ndarray:
        v = np.zeros((n, 3, s, s), dtype=np.float32)
        v[:, c] = grey
        return v

    if channels in _RGB:
        return {channels: one(_RGB[channels])}
    if channels == "each":
        return {t: one(c) for t, c in _RGB.items()}
    if channels == "grey3":
        return {"grey3": np.ascontiguousarray(np.repeat(grey[:, None], 3, axis=1))}
    return {channels: np.ascontiguousarray(mapped[:, 1:4])}
