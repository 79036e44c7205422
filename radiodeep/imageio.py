"""Reading images and masks (NIfTI, NRRD, MHA, DICOM series) and checking geometry.

No DICOM header field is ever copied out of here: callers get pixel data and
geometry only, so the manifest's case id is the only identifier that leaves the inputs.

Nothing is computed on garbage: a compressed input (``.gz``, an NRRD with a gzip
payload) has its gzip CRC verified when it is first read in a process (SimpleITK
does not check it), and voxel values that cannot be real (NaN or infinite, or
outside what the file's stored type and scaling can hold) are refused, naming the
case and the file. Geometry can be read from headers alone (:func:`image_info`).
"""

from __future__ import annotations

import functools
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CaseError

__all__ = ["GeometryPolicy", "read_image", "image_info", "ImageInfo", "geometry_mismatch", "resample_like", "mask_labels",
           "read_case_images", "read_case_sequences", "check_scalar", "verify_compressed", "check_values"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class GeometryPolicy:
    """The cohort's one geometry policy, used by validation and by every route alike:
    masks and sequences agree with their image within ``tolerance`` (relative), or the
    mask is resampled onto the image when ``resample_mask`` allows it."""

    tolerance: float = 1e-3
    resample_mask: bool = False

    @classmethod
    def of(cls, cohort_cfg) -> "GeometryPolicy":
        """From a ``CohortConfig`` (or anything with ``geometry_tolerance`` and ``resample_mask``)."""
        if cohort_cfg is None:
            return cls()
        if isinstance(cohort_cfg, GeometryPolicy):
            return cohort_cfg
        return cls(float(cohort_cfg.geometry_tolerance), bool(cohort_cfg.resample_mask))


# --------------------------------------------------------------------------- integrity
def _gzip_problem(path: Path, offset: int = 0) -> str | None:
    """None when the gzip stream(s) from ``offset`` to the end decompress with valid CRCs."""
    try:
        with path.open("rb") as raw:
            raw.seek(offset)
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                while fh.read(_CHUNK):
                    pass
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None


def _nrrd_payload(path: Path) -> tuple[Path, int] | None:
    """Where a gzip-encoded NRRD's compressed data lies (file, offset), or None for other encodings."""
    fields: dict[str, str] = {}
    offset = 0
    with path.open("rb") as fh:
        if not fh.read(4) == b"NRRD":
            return None
        fh.seek(0)
        for line in fh:
            offset += len(line)
            text = line.decode("latin-1").strip()
            if not text:
                break
            if ":" in text and not text.startswith("#"):
                key, _, value = text.partition(":")
                fields[key.strip().lower()] = value.lstrip("=").strip()
            if offset > 1 << 20:
                return None
    if fields.get("encoding", "").lower() not in ("gzip", "gz"):
        return None
    detached = fields.get("data file") or fields.get("datafile")
    if detached:
        if detached.upper().startswith("LIST") or "%" in detached:
            return None  # several data files: left to the reader
        return (path.parent / detached, 0)
    return (path, offset)


def _compressed_part(path: Path) -> tuple[Path, int] | None:
    """The gzip data of an input (file, offset), or None when it holds none."""
    if path.name.lower().endswith(".gz"):
        return (path, 0)
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        return _nrrd_payload(path)
    return None


@functools.lru_cache(maxsize=4096)
def _verified(path: str, offset: int, size: int, mtime_ns: int) -> str | None:
    """The integrity problem of a gzip stream (None: sound), once per file version and process."""
    return _gzip_problem(Path(path), offset)


def verify_compressed(path: Path | str, case_id: str = "?", what: str = "image") -> None:
    """Raise :class:`CaseError` when a compressed input is damaged (gzip CRC or stream error)."""
    p = Path(path)
    if not p.is_file():
        return
    part = _compressed_part(p)
    if part is None:
        return
    data, offset = part
    if not data.is_file():
        raise CaseError(case_id, f"{what} file {p} names a data file that is not there: {data}")
    st = data.stat()
    problem = _verified(str(data.resolve()), offset, st.st_size, st.st_mtime_ns)
    if problem is not None:
        where = f"{what} file {p}" + (f" (its data file {data.name})" if data != p else "")
        raise CaseError(case_id, f"{where} is damaged: its compressed data fail the gzip check "
                                 f"({problem}); copy the file again from its source")


_NIFTI_INT_RANGES = {  # NIfTI datatype code -> range of the stored integers
    2: (0, 255), 256: (-128, 127), 4: (-32768, 32767), 512: (0, 65535),
    8: (-2**31, 2**31 - 1), 768: (0, 2**32 - 1), 1024: (-2**63, 2**63 - 1), 1280: (0, 2**64 - 1),
}


def _stored_range(reader: sitk.ImageFileReader) -> tuple[float, float, str] | None:
    """For a NIfTI file of scaled integers: the range its values can take, and the stored type."""
    keys = set(reader.GetMetaDataKeys())
    if not {"datatype", "scl_slope", "scl_inter"} <= keys:
        return None
    try:
        code = int(reader.GetMetaData("datatype"))
        slope = float(reader.GetMetaData("scl_slope"))
        inter = float(reader.GetMetaData("scl_inter"))
    except ValueError:
        return None
    if code not in _NIFTI_INT_RANGES:
        return None
    if slope == 0 or not np.isfinite(slope):
        slope, inter = 1.0, 0.0  # NIfTI: a zero slope means no scaling
    lo, hi = (v * slope + (inter if np.isfinite(inter) else 0.0) for v in _NIFTI_INT_RANGES[code])
    return min(lo, hi), max(lo, hi), f"NIfTI datatype {code} (scaled by {slope:g}, {inter:+g})"


def check_values(img: sitk.Image, case_id: str = "?", what: str = "image", path: Path | str | None = None,
                 stored: tuple[float, float, str] | None = None) -> None:
    """Raise :class:`CaseError` for voxel values that cannot be real: NaN or infinite, or outside
    the range ``stored`` (low, high, description) the file's stored type can hold."""
    arr = sitk.GetArrayViewFromImage(img)
    where = f"{what} file {path}" if path is not None else what
    if arr.dtype.kind == "f":
        flat = arr.reshape(-1)
        step = 1 << 22  # in chunks: no temporary the size of the volume
        bad = sum(int(c.size - np.count_nonzero(np.isfinite(c)))
                  for c in (flat[i:i + step] for i in range(0, flat.size, step)))
        if bad:
            raise CaseError(case_id, f"{where} holds {bad} NaN or infinite voxel value(s) of {arr.size}; "
                                     "fix or re-export the image")
    if stored is not None and arr.size:
        lo, hi, desc = stored
        vmin, vmax = float(arr.min()), float(arr.max())
        tol = 1e-6 * max(abs(lo), abs(hi), 1.0)
        if vmin < lo - tol or vmax > hi + tol:
            raise CaseError(case_id, f"{where} holds values [{vmin:g}, {vmax:g}] outside what its stored "
                                     f"type can hold ({desc}: [{lo:g}, {hi:g}]): the file is damaged")


# --------------------------------------------------------------------------- reading
def read_image(path: Path | str, case_id: str = "?", what: str = "image") -> sitk.Image:
    """Read a volume from a file or a folder holding one DICOM series.

    Compressed data are verified first and impossible voxel values refused
    (:class:`CaseError` naming the case and the file)."""
    path = Path(path)
    if not path.exists():
        raise CaseError(case_id, f"{what} file not found: {path}")
    stored = None
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise CaseError(case_id, f"{what} folder holds no DICOM series: {path}")
            if len(series) > 1:
                raise CaseError(case_id, f"{what} folder holds {len(series)} DICOM series; "
                                         f"point the manifest at one series folder: {path}")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            reader.MetaDataDictionaryArrayUpdateOff()
            reader.LoadPrivateTagsOff()
            img = reader.Execute()
        else:
            verify_compressed(path, case_id, what)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            stored = _stored_range(reader)
            img = reader.Execute()
    except CaseError:
        raise
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise CaseError(case_id, f"cannot read {what} {path}: {first}") from None
    img = _strip_metadata(img)
    check_values(img, case_id, what, path, stored)
    return img


def _strip_metadata(img: sitk.Image) -> sitk.Image:
    # drop every header key (patient name, ids, dates...) so nothing identifying travels on
    for key in img.GetMetaDataKeys():
        img.EraseMetaData(key)
    return img


@dataclass(frozen=True)
class ImageInfo:
    """A volume's geometry from its header (no voxel read); answers like a ``sitk.Image``."""

    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel_id: int

    @classmethod
    def of(cls, img) -> "ImageInfo":
        return cls(img.GetDimension(), tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                   tuple(img.GetDirection()), int(img.GetNumberOfComponentsPerPixel()), int(img.GetPixelID()))

    def GetDimension(self) -> int:  # noqa: N802 - sitk.Image's names
        return self.dimension

    def GetSize(self):  # noqa: N802
        return self.size

    def GetSpacing(self):  # noqa: N802
        return self.spacing

    def GetOrigin(self):  # noqa: N802
        return self.origin

    def GetDirection(self):  # noqa: N802
        return self.direction

    def GetNumberOfComponentsPerPixel(self) -> int:  # noqa: N802
        return self.components

    def GetPixelID(self) -> int:  # noqa: N802
        return self.pixel_id


def image_info(path: Path | str, case_id: str = "?", what: str = "image") -> ImageInfo:
    """A file's geometry from its header only (``ImageFileReader.ReadImageInformation``); a
    DICOM series folder or a format without a separate header is read whole."""
    path = Path(path)
    if not path.exists():
        raise CaseError(case_id, f"{what} file not found: {path}")
    if path.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            pass  # not a header SimpleITK reads alone: read_image says why
        else:
            return ImageInfo(reader.GetDimension(), tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                             tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                             int(reader.GetNumberOfComponents()), int(reader.GetPixelID()))
    return ImageInfo.of(read_image(path, case_id, what))


def _shape_words(img) -> str:
    n = img.GetNumberOfComponentsPerPixel()
    dim = img.GetDimension()
    if n > 1:
        return (f"a {dim}D image with {n} values per voxel (a vector image: RGB, or a 4D series such as "
                f"several time points or channels read as {n} components)")
    return f"a {dim}D image"


def geometry_mismatch(image, mask, tol: float = 1e-3, what: str = "mask") -> str | None:
    """Describe how ``mask`` (or another image on the same grid, named ``what``) differs from
    ``image`` in geometry, or None when they agree. Either may be a ``sitk.Image`` or an
    :class:`ImageInfo` (header only).

    ``tol`` is relative: spacings within ``tol`` of each other, origins within ``tol``
    of a voxel, direction cosines within ``tol``.
    """
    ni, nm = image.GetNumberOfComponentsPerPixel(), mask.GetNumberOfComponentsPerPixel()
    if ni != nm:
        return f"the image is {_shape_words(image)}, the {what} {_shape_words(mask)}"
    if image.GetDimension() != mask.GetDimension():
        words = {4: " (a 4D series: several volumes, e.g. time points; radiodeep needs one 3D volume)",
                 2: " (a single slice)"}
        return (f"dimension differs: image {image.GetDimension()}D{words.get(image.GetDimension(), '')}, "
                f"{what} {mask.GetDimension()}D{words.get(mask.GetDimension(), '')}")
    if image.GetSize() != mask.GetSize():
        return f"size differs: image {tuple(image.GetSize())}, {what} {tuple(mask.GetSize())}"
    isp, msp = np.array(image.GetSpacing()), np.array(mask.GetSpacing())
    if not np.allclose(isp, msp, rtol=tol, atol=0):
        return f"spacing differs: image {_rounded(isp, 4)}, {what} {_rounded(msp, 4)}"
    io, mo = np.array(image.GetOrigin()), np.array(mask.GetOrigin())
    if np.any(np.abs(io - mo) > tol * isp):
        return f"origin differs: image {_rounded(io, 3)}, {what} {_rounded(mo, 3)}"
    idir, mdir = np.array(image.GetDirection()), np.array(mask.GetDirection())
    if np.any(np.abs(idir - mdir) > tol):
        return f"direction differs between image and {what}"
    return None


def _rounded(values, digits: int) -> tuple[float, ...]:
    """Plain floats for messages (numpy 2 would print np.float64(0.5))."""
    return tuple(round(float(v), digits) for v in values)


def resample_like(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Resample a label map onto an image's grid (always nearest neighbour)."""
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())


def mask_labels(mask: sitk.Image) -> list[int]:
    """The non-zero label values of a mask, ascending."""
    arr = sitk.GetArrayViewFromImage(mask)
    if arr.size and arr.dtype.kind in "uib" and arr.min() >= 0 and int(arr.max()) < 1 << 16:
        counts = np.bincount(arr.ravel().astype(np.intp, copy=False))  # several times faster than sorting
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    return [int(v) for v in np.unique(arr) if v != 0]


def check_scalar(img, case_id: str, what: str, path) -> None:
    """Raise :class:`CaseError` unless ``img`` (an image or :class:`ImageInfo`) has one value per voxel."""
    n = img.GetNumberOfComponentsPerPixel()
    if n != 1:
        raise CaseError(case_id, f"{what} {path} is {_shape_words(img)}; radiodeep needs a scalar (grey) "
                                 "image: one value per voxel")


def _on_grid(image, other, tol: float, case_id: str, what: str, resample: bool,
             notes: list[str] | None):
    """``other`` on ``image``'s grid under the cohort's one geometry policy: equal within ``tol``
    is made exact; a difference is an error, or (``resample``) resampled nearest neighbour."""
    problem = geometry_mismatch(image, other, tol, what=what)
    if problem is not None:
        if not resample:
            if what == "mask":
                raise CaseError(case_id, f"image/mask geometry mismatch: {problem} "
                                "(set cohort.resample_mask: true to resample the mask onto the image)")
            raise CaseError(case_id, f"{what} does not share the image's grid: {problem}")
        other = resample_like(other, image)
        if notes is not None:
            notes.append(f"{what} resampled onto the image ({problem})")
    elif (other.GetSpacing(), other.GetOrigin(), other.GetDirection()) != (
            image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        other.CopyInformation(image)  # equal within tolerance: make it exact for later stages
    return other


def read_case_images(case, tol: float = 1e-3, resample_mask: bool = False, notes: list[str] | None = None):
    """Read a case's image and mask, check them, return ``(image, mask)``.

    The returned mask is binary (uint8, 1 inside the ROI) for ``case.mask_label``.
    Raises :class:`CaseError` naming the case and the reason. When ``notes`` is a list,
    what was adapted (the mask resampled, one label used of several) is appended to it.
    """
    image = read_image(case.image, case.case_id, "image")
    check_scalar(image, case.case_id, "image", case.image)
    dicom_mask = _dicom_mask(case, image, notes)
    if dicom_mask is not None:
        return image, dicom_mask
    mask = read_image(case.mask, case.case_id, "mask")
    check_scalar(mask, case.case_id, "mask", case.mask)
    mask = _on_grid(image, mask, tol, case.case_id, "mask", resample_mask, notes)
    labels = mask_labels(mask)
    if not labels:
        raise CaseError(case.case_id, "mask is empty (no non-zero voxel)")
    if case.mask_label not in labels:
        raise CaseError(case.case_id, f"mask has no voxel with label {case.mask_label} "
                        f"(labels present: {labels})")
    if len(labels) > 1 and notes is not None:
        notes.append(f"mask holds labels {labels}; label {case.mask_label} is the ROI (mask_label)")
    binary = sitk.Cast(mask == case.mask_label, sitk.sitkUInt8)
    return image, binary


def read_case_sequences(case, image: sitk.Image, tol: float = 1e-3) -> list[sitk.Image]:
    """A case's MR sequences (``case.sequences``), each checked against the image's grid with the
    cohort's tolerance and made exact (never resampled: a sequence elsewhere is an error)."""
    out = []
    for i, p in enumerate(case.sequences):
        what = f"sequence {i + 1} ({Path(p).name})"
        seq = read_image(p, case.case_id, what)
        check_scalar(seq, case.case_id, what, p)
        out.append(_on_grid(image, seq, tol, case.case_id, what, False, None))
    return out


def _dicom_mask(case, image: sitk.Image, notes: list[str] | None) -> sitk.Image | None:
    """The mask of a case whose ``mask`` is an RTSTRUCT or DICOM-SEG file, on the image's
    grid (see :mod:`radiodeep.masks`); None for a label-map mask."""
    from .masks import dicom_kind, read_dicom_mask

    kind = dicom_kind(case.mask, case.case_id)
    if kind is None:
        return None
    mask = read_dicom_mask(kind, case.mask, case.image, image, case.case_id,
                           roi=getattr(case, "roi_name", None), cache_dir=getattr(case, "mask_cache", None),
                           notes=notes)
    if not mask_labels(mask):
        raise CaseError(case.case_id, f"mask is empty: ROI of {case.mask.name} covers no voxel centre of the image")
    return mask
