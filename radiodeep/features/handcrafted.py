"""The handcrafted route: PyRadiomics features, with the researcher's own parameter file.

* The parameter file (``features.handcrafted.params``) is read and used as is;
  inline ``features.handcrafted.settings`` are merged over its ``setting`` section.
  PyRadiomics validates the result before any case is read.
* ``mode: 3d`` runs PyRadiomics over the whole ROI. ``mode: 2d`` runs it on the
  one slice the ROI stage chooses (``roi.plane``, ``roi.slice``) with ``force2D``;
  see :func:`mode_params` for what 2D changes. Image filters (LoG, wavelet, ...)
  run whenever the parameter file enables them.
* One table per route, indexed by case id, with PyRadiomics' own column names
  (``original_glcm_Contrast``); PyRadiomics' ``diagnostics_*`` go to a separate
  table and never to a model.
* Cases run in parallel (``execution.n_jobs`` local processes or a Dask cluster);
  every worker reads its own case, so memory is one volume per worker. Each
  finished case is cached at once (see :mod:`radiodeep.features.store`): a rerun,
  or a run after a crash or Ctrl-C, computes only what is missing.
* A case that fails (unreadable input, a PyRadiomics error, an empty ROI after
  resampling, a NaN or infinite feature value) becomes a
  :class:`~radiodeep.errors.CaseFailure` with its reason; never a silent NaN.

The ROI label is the parameter file's ``label`` unless ``cohort.mask_label`` sets
one (naming two different labels is refused when the config is read); a manifest
``mask_label`` column still chooses per case. Masks are binarised on reading for
that label; the label used is recorded in the provenance. Geometry checks are the
cohort's (:class:`~radiodeep.imageio.GeometryPolicy`).

PyRadiomics' voxel-based mode (a ``voxelSetting`` section) is refused: radiodeep
computes one value per feature and ROI. A parameter file made for 2D (``force2D``)
is refused in ``mode: 3d`` with the advice to use ``mode: 2d``.

The route follows :mod:`radiodeep.features.routes`: :func:`settings_from_config`
makes the frozen :class:`HandcraftedSettings` slice (its cache key), :func:`extract`
computes the table.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from ..cohort import Case, Cohort
from ..config import Config, ConfigError, HandcraftedConfig, RoiConfig, _suggest, settings_hash
from ..errors import CaseError, CaseFailure
from ..execution import map_cases
from ..imageio import GeometryPolicy, read_case_images
from .routes import RouteSettings, RunContext
from .store import CacheEntry, FeatureStore, RouteResult, file_fingerprint

__all__ = [
    "ROUTE",
    "HandcraftedSettings",
    "settings_from_config",
    "config_problems",
    "extract",
    "handcrafted_settings",
    "mode_params",
    "extract_case",
    "extract_handcrafted",
    "pyradiomics_version",
]

log = logging.getLogger(__name__)

ROUTE = "handcrafted"
DIAGNOSTICS_PREFIX = "diagnostics_"
WARNINGS_KEY = "diagnostics_radiodeep_Warnings"  # PyRadiomics' warnings for the case, joined
CACHE_FORMAT = 3  # bump when what is cached per case changes meaning
_STAGE = ROUTE


# --------------------------------------------------------------------------- PyRadiomics set-up
@functools.lru_cache(maxsize=1)
def _radiomics():
    """Import PyRadiomics once and keep it quiet.

    PyRadiomics attaches its own stderr handler to the ``radiomics`` logger at
    import. Its messages are captured per case instead (warnings land in the
    case's diagnostics, errors in the failure reason), so the logger is set to
    WARNING (no INFO/DEBUG records are even made) and that handler is silenced.
    Nothing is added to the root logger.
    """
    import radiomics
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.WARNING)
    radiomics.setVerbosity(logging.CRITICAL)
    return radiomics, featureextractor


def warm_worker() -> None:
    """Import PyRadiomics and its feature classes once in a fresh Dask worker (called by
    :class:`radiodeep.cluster.WorkerSetup`), not inside its first case."""
    radiomics, _ = _radiomics()
    radiomics.getFeatureClasses()
    radiomics.getImageTypes()


def pyradiomics_version() -> str:
    return str(_radiomics()[0].__version__).lstrip("v")


@functools.lru_cache(maxsize=8)
def _extractor(params_json: str):
    """A validated extractor, built once per worker process and parameter set."""
    _, featureextractor = _radiomics()
    return featureextractor.RadiomicsFeatureExtractor(json.loads(params_json))


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


# --------------------------------------------------------------------------- settings
def handcrafted_settings(cfg: HandcraftedConfig, base_dir: Path | str) -> dict:
    """The PyRadiomics parameters used: the params file, with inline settings merged over its ``setting``.

    Relative ``cfg.params`` paths are resolved against ``base_dir`` (the config
    file's folder). The result is validated by PyRadiomics itself; a problem
    raises :class:`~radiodeep.config.ConfigError` naming the key.
    """
    params: dict[str, Any] = {}
    source = "features.handcrafted"
    if cfg.params is not None:
        path = Path(cfg.params).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        source = f"features.handcrafted.params ({path})"
        params = _read_params_file(path, source)
    params = copy.deepcopy(params)
    if cfg.settings:
        params["setting"] = {**(params.get("setting") or {}), **copy.deepcopy(cfg.settings)}
    _validate(params, source)
    _check_use(params, cfg.mode, source)
    return params


def _check_use(params: Mapping[str, Any], mode: str, source: str) -> None:
    """Parameters PyRadiomics accepts but radiodeep cannot honour are refused, in plain words."""
    problems = []
    if params.get("voxelSetting") is not None:
        problems.append(f"{source}: a 'voxelSetting' section asks for PyRadiomics' voxel-based extraction "
                        "(feature maps); radiodeep computes one value per feature and ROI (segment-based): "
                        "remove the voxelSetting section")
    if mode == "3d" and (params.get("setting") or {}).get("force2D"):
        problems.append(f"{source}: the parameter file sets force2D: true (features on 2D slices) but "
                        "features.handcrafted.mode is 3d: use features.handcrafted.mode: 2d (radiodeep "
                        "chooses the slice with roi.plane and roi.slice) and remove force2D from the file")
    if problems:
        raise ConfigError(problems)


def _read_params_file(path: Path, source: str) -> dict:
    if not path.is_file():
        raise ConfigError([f"{source}: file not found"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is read as well
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError([f"{source}: not a valid YAML/JSON parameter file: {err}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: a PyRadiomics parameter file holds a mapping "
                           f"(setting, imageType, featureClass), got {type(data).__name__}"])
    return data


def _validate(params: dict, source: str) -> None:
    try:
        _extractor(_canonical(params))
    except Exception as err:  # pykwalify SchemaError, or ValueError for unknown classes/filters
        raise ConfigError([f"{source}: PyRadiomics rejects the parameters: {p}"
                           for p in _schema_problems(err)]) from None


def _schema_problems(err: Exception) -> list[str]:
    text = getattr(err, "msg", None) or str(err)
    lines = [ln.strip()[2:] for ln in str(text).splitlines() if ln.strip().startswith("- ")]
    if not lines:
        return [str(text).strip().splitlines()[-1] if str(text).strip() else type(err).__name__]
    out = []
    for ln in lines:
        m = re.match(r"Key '(.+?)' was not defined\. Path: '(.*?)'", ln)
        if m:
            key, where = m.groups()
            section = where.strip("/") or "(top level)"
            hint = _suggest(key, _schema_keys(where))
            ln = f"unknown key {key!r} in {section}{hint}"
        out.append(ln)
    return out


def _schema_keys(path: str) -> list[str]:
    try:
        radiomics, _ = _radiomics()
        schema_file, _ = radiomics.getParameterValidationFiles()
        node = yaml.safe_load(Path(schema_file).read_text(encoding="utf-8"))
        for part in [p for p in path.split("/") if p]:
            node = node["mapping"][part]
        return list(node.get("mapping", {}))
    except Exception:  # noqa: BLE001 - a suggestion only
        return []


def mode_params(params: Mapping[str, Any], mode: str, roi_cfg: RoiConfig | None = None) -> dict:
    """The parameters PyRadiomics runs with in ``mode``.

    ``3d``: the parameters as given. ``2d`` (one slice chosen by the ROI stage):

    * ``force2D: true`` and ``force2Ddimension`` = the array axis of ``roi.plane``
      (axial 0, coronal 1, sagittal 2; PyRadiomics counts axes in SimpleITK's
      array order z, y, x), so texture matrices are 2D;
    * a ``resampledPixelSpacing`` keeps the through-plane spacing (set to 0), so
      resampling never spreads the slice over several;
    * ``minimumROIDimensions`` is at most 2 (a slice has two);
    * the 3D ``shape`` class is replaced by ``shape2D`` (all its features), unless
      ``shape2D`` is already enabled.
    """
    if mode not in ("3d", "2d"):
        raise ValueError(f"handcrafted mode must be '3d' or '2d', got {mode!r}")
    p = copy.deepcopy(dict(params))
    if mode == "3d":
        return p
    from ..roi import plane_axis

    axis = plane_axis((roi_cfg or RoiConfig()).plane)
    setting = dict(p.get("setting") or {})
    setting["force2D"] = True
    setting["force2Ddimension"] = axis
    spacing = setting.get("resampledPixelSpacing")
    if spacing:
        spacing = list(spacing)
        spacing[len(spacing) - 1 - axis] = 0  # SimpleITK order x, y, z
        setting["resampledPixelSpacing"] = spacing
    setting["minimumROIDimensions"] = min(int(setting.get("minimumROIDimensions") or 2), 2)
    p["setting"] = setting
    classes = p.get("featureClass")
    if not classes:  # PyRadiomics: no featureClass section means every class
        radiomics, _ = _radiomics()
        classes = {name: [] for name in radiomics.getFeatureClasses()}
    classes = dict(classes)
    if "shape" in classes:
        del classes["shape"]
        classes.setdefault("shape2D", [])
    p["featureClass"] = classes
    return p


# --------------------------------------------------------------------------- one case
class _Capture(logging.Handler):
    """Collects PyRadiomics' warnings and errors raised in this thread."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.thread == self.thread:
            self.records.append(record)

    def messages(self, level: int) -> list[str]:
        out = []
        for r in self.records:
            if r.levelno >= level:
                try:
                    msg = r.getMessage()
                except Exception:  # noqa: BLE001
                    msg = str(r.msg)
                out.append(msg)
        return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def extract_case(case: Case, params: Mapping[str, Any], mode: str, roi_cfg: RoiConfig | None,
                 geometry: GeometryPolicy | None) -> tuple[dict[str, float], dict[str, str]]:
    """PyRadiomics features of one case: ``(features, diagnostics)``.

    Reads the image and mask here (so a worker holds one volume), applies
    :func:`mode_params`, and runs the extractor. Raises
    :class:`~radiodeep.errors.CaseError` (stage ``handcrafted``) for any problem,
    including a feature that comes out NaN or infinite (named in the reason).
    """
    cid = case.case_id
    policy = GeometryPolicy.of(geometry)
    tol, resample = policy.tolerance, policy.resample_mask
    run_params = mode_params(params, mode, roi_cfg)
    try:
        image, mask = read_case_images(case, tol=tol, resample_mask=resample)
    except CaseError as err:
        raise CaseError(cid, err.reason, stage=_STAGE) from None
    diagnostics: dict[str, str] = {f"{DIAGNOSTICS_PREFIX}radiodeep_Mode": mode}
    if mode == "2d":
        from ..roi import slice_mask

        try:
            mask, index = slice_mask(image, mask, roi_cfg or RoiConfig(), cid, mask_label=1)
        except CaseError as err:
            raise CaseError(cid, err.reason, stage=_STAGE) from None
        diagnostics[f"{DIAGNOSTICS_PREFIX}radiodeep_SliceIndex"] = str(index)
        diagnostics[f"{DIAGNOSTICS_PREFIX}radiodeep_Plane"] = (roi_cfg or RoiConfig()).plane

    extractor = _extractor(_canonical(run_params))
    logger = logging.getLogger("radiomics")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        raw = extractor.execute(image, mask, label=1)
        if _coronal_shape2d(run_params):
            raw.update(_shape2d_of_flat_axis_first(image, mask, run_params))
            capture.records = [r for r in capture.records if not _is_shape2d_axis_warning(r)]
    except Exception as err:  # noqa: BLE001 - PyRadiomics raises ValueError, SimpleITK RuntimeError
        said = _last_line(str(err)) or type(err).__name__
        raise CaseError(cid, f"PyRadiomics failed: {said}", stage=_STAGE) from None
    finally:
        logger.removeHandler(capture)
    del image, mask

    features: dict[str, float] = {}
    bad: list[str] = []
    for name, value in raw.items():
        if name.startswith(DIAGNOSTICS_PREFIX):
            diagnostics[name] = str(value)
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
            if arr.size != 1:
                raise ValueError(f"{arr.size} values")
            v = float(arr.reshape(()))
        except (TypeError, ValueError) as err:
            raise CaseError(cid, f"PyRadiomics returned a non-scalar value for {name}: {err}",
                            stage=_STAGE) from None
        if not np.isfinite(v):
            bad.append(f"{name}={v}")
        features[name] = v
    if bad:
        errors = [_last_line(m) for m in capture.messages(logging.ERROR)]
        said = f"; PyRadiomics said: {errors[-1]}" if errors else ""
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CaseError(cid, f"non-finite feature value(s): {', '.join(bad[:5])}{more}{said}",
                        stage=_STAGE)
    if not features:
        warned = capture.messages(logging.WARNING)
        said = f"; PyRadiomics said: {warned[-1]}" if warned else ""
        raise CaseError(cid, "PyRadiomics computed no features (check featureClass and imageType "
                             f"in the parameter file){said}", stage=_STAGE)
    warnings = list(dict.fromkeys(capture.messages(logging.WARNING)))
    if warnings:
        diagnostics[WARNINGS_KEY] = " | ".join(warnings)
    return features, diagnostics


# PyRadiomics 3.1.4 checks that shape2D's flat axis has extent 1 by indexing the ROI's bounding
# box (SimpleITK order x, y, z) with force2Ddimension (array order z, y, x). For axial (0) and
# sagittal (2) slices the check passes by luck; for coronal slices (1) it always fails, and the
# shape2D class is dropped with a warning only. The same image and mask with their y and z axes
# swapped put the flat axis first (force2Ddimension 0), where the check is right; shape2D values
# depend only on the slice's pixels and spacing, which the permutation keeps.
_CORONAL = 1


def _coronal_shape2d(params: Mapping[str, Any]) -> bool:
    setting = params.get("setting") or {}
    return (bool(setting.get("force2D")) and setting.get("force2Ddimension") == _CORONAL
            and "shape2D" in (params.get("featureClass") or {}))


def _is_shape2d_axis_warning(record: logging.LogRecord) -> bool:
    return "cannot calculate 2D shape" in str(record.msg)


def _shape2d_of_flat_axis_first(image, mask, params: Mapping[str, Any]) -> dict:
    p = copy.deepcopy(dict(params))
    setting = p["setting"]
    setting["force2Ddimension"] = 0
    spacing = setting.get("resampledPixelSpacing")
    if spacing:
        setting["resampledPixelSpacing"] = [spacing[0], spacing[2], spacing[1]]
    p["featureClass"] = {"shape2D": params["featureClass"]["shape2D"]}
    p["imageType"] = {"Original": {}}  # shape is computed on the original image only
    swap = [0, 2, 1]  # x, y, z -> x, z, y
    out = _extractor(_canonical(p)).execute(sitk.PermuteAxes(image, swap), sitk.PermuteAxes(mask, swap),
                                             label=1)
    return {k: v for k, v in out.items() if k.startswith("original_shape2D_")}


# --------------------------------------------------------------------------- cache units
# A case's cached row is kept in units: one per (image type, feature class) of the parameters,
# and one per shape class (PyRadiomics computes shape once, on the original image, whatever the
# image types). The store's key covers everything else (settings, mode, PyRadiomics version,
# input checks). So a rerun after a filter or a class is added or changed computes only the
# units a case lacks (all of them in one PyRadiomics call: a cold run costs what it did), and
# every row's columns follow the parameters' order, whatever was computed when.
_TYPE_NAMES = {  # image type -> the names PyRadiomics gives its images (radiomics.imageoperations)
    "Original": re.compile(r"original"),
    "LoG": re.compile(r"log-sigma-.+"),
    "Wavelet": re.compile(r"wavelet\d*-[LH]+"),
    "Square": re.compile(r"square"),
    "SquareRoot": re.compile(r"squareroot"),
    "Logarithm": re.compile(r"logarithm"),
    "Exponential": re.compile(r"exponential"),
    "Gradient": re.compile(r"gradient"),
    "LBP2D": re.compile(r"lbp-2D"),
    "LBP3D": re.compile(r"lbp-3D-.+"),
}
_WHOLE = "*"  # an image type radiodeep cannot name: the row is one unit


@dataclass(frozen=True)
class CacheUnit:
    """A part of a case's row computed under one part of the parameters."""

    image_type: str | None  # None: a shape class; _WHOLE: every feature
    type_args: str  # canonical JSON of the image type's own settings
    feature_class: str
    features: str  # canonical JSON of the class's feature list ([] = all)

    @property
    def key(self) -> str:
        return settings_hash([self.image_type, self.type_args, self.feature_class, self.features], n=16)

    @property
    def label(self) -> str:
        return self.feature_class if self.image_type is None else f"{self.image_type}/{self.feature_class}"


def _types_and_classes(run_params: Mapping[str, Any]) -> tuple[dict, dict]:
    """The image types and feature classes PyRadiomics enables for these parameters."""
    types = dict(run_params.get("imageType") or {"Original": {}})
    classes = dict(run_params.get("featureClass") or {})
    if not classes:  # PyRadiomics: no featureClass section means every class
        radiomics, _ = _radiomics()
        classes = {name: [] for name in radiomics.getFeatureClasses()}
        if not (run_params.get("setting") or {}).get("force2D"):
            del classes["shape2D"]  # computed only with force2D: PyRadiomics would just warn
    return types, classes


def cache_units(run_params: Mapping[str, Any]) -> list[CacheUnit]:
    """The units of a row for these parameters, in column order: shape classes first (as
    PyRadiomics computes them), then each image type's classes in the parameters' order."""
    types, classes = _types_and_classes(run_params)
    if any(t not in _TYPE_NAMES for t in types):
        return [CacheUnit(_WHOLE, _canonical(types), _WHOLE, _canonical(classes))]
    units = [CacheUnit(None, "null", c, _canonical(f or [])) for c, f in classes.items() if c.startswith("shape")]
    units += [CacheUnit(t, _canonical(a or {}), c, _canonical(f or []))
              for t, a in types.items() for c, f in classes.items() if not c.startswith("shape")]
    return units


def params_for_units(run_params: Mapping[str, Any], units: list[CacheUnit]) -> dict:
    """The parameters that compute ``units`` (a subset of ``run_params``'s) in one call."""
    if any(u.image_type == _WHOLE for u in units):
        return copy.deepcopy(dict(run_params))
    types, classes = _types_and_classes(run_params)
    p = copy.deepcopy(dict(run_params))
    wanted_types = {u.image_type for u in units if u.image_type is not None}
    wanted_classes = {u.feature_class for u in units}
    p["imageType"] = {t: a for t, a in types.items() if t in wanted_types} or {"Original": {}}
    p["featureClass"] = {c: f for c, f in classes.items() if c in wanted_classes}
    return p


def split_into_units(features: Mapping[str, float], units: list[CacheUnit]) -> dict[str, list[str]]:
    """Feature names by unit key, for the units of one computation (each unit listed, even empty)."""
    out: dict[str, list[str]] = {u.key: [] for u in units}
    if len(units) == 1 and units[0].image_type == _WHOLE:
        out[units[0].key] = list(features)
        return out
    by = {(u.image_type, u.feature_class): u.key for u in units}
    for name in features:
        prefix, cls, _ = (name.split("_", 2) + ["", ""])[:3]
        kind = None if cls.startswith("shape") else next(
            (t for t, pattern in _TYPE_NAMES.items() if pattern.fullmatch(prefix)), "?")
        key = by.get((kind, cls))
        if key is None:
            raise RuntimeError(f"PyRadiomics feature {name!r} belongs to no requested image type and class "
                               f"{sorted(u.label for u in units)}; please report this to radiodeep")
        out[key].append(name)
    return out


# --------------------------------------------------------------------------- the route
def _no_key(default=None, **kw):
    return field(default=default, metadata={"cache_key": False}, **kw)


@dataclass(frozen=True)
class HandcraftedSettings(RouteSettings):
    """The handcrafted route's slice of the config; every keyed field is in the cache key.

    The image types and feature classes are not in the store's key: they key each cached
    unit of a row instead (:func:`cache_units`), so adding a filter computes only it."""

    setting_params: dict  # the PyRadiomics parameters without imageType / featureClass
    mode: str
    geometry: GeometryPolicy
    slice_choice: dict | None  # 2d only: {"plane", "slice"}
    pyradiomics: str
    cache_format: int = CACHE_FORMAT
    coronal_shape2d: str | None = None
    image_types: dict | None = _no_key()  # None: absent from the parameters
    feature_classes: dict | None = _no_key()
    params_file: str | None = _no_key()
    roi_label: int = _no_key(1)  # a manifest mask_label column can still choose per case (case fingerprint)
    label_source: str = _no_key("default")

    @property
    def params(self) -> dict:
        """The parameters as given (the file, inline settings merged)."""
        p = copy.deepcopy(dict(self.setting_params))
        if self.image_types is not None:
            p["imageType"] = copy.deepcopy(self.image_types)
        if self.feature_classes is not None:
            p["featureClass"] = copy.deepcopy(self.feature_classes)
        return p

    @property
    def roi(self) -> RoiConfig:
        return RoiConfig(plane=(self.slice_choice or {}).get("plane", "axial"),
                         slice=(self.slice_choice or {}).get("slice", "largest"))

    @property
    def run_params(self) -> dict:
        """The parameters PyRadiomics runs with in this mode (:func:`mode_params`)."""
        return mode_params(self.params, self.mode, self.roi)


def settings_from_config(config: Config) -> HandcraftedSettings:
    """The route's settings: parameter file read, merged, validated (for the mode as well) once;
    raises :class:`~radiodeep.config.ConfigError` listing the problems."""
    hc = config.features.handcrafted
    if hc is None:
        raise ValueError("features.handcrafted is not configured")
    params = handcrafted_settings(hc, config.base_dir)
    run_params = mode_params(params, hc.mode, config.roi)
    if run_params != params:
        _validate(run_params, f"features.handcrafted (mode {hc.mode})")
    label, source = config.roi_label()
    choice = {"plane": config.roi.plane, "slice": config.roi.slice} if hc.mode == "2d" else None
    return HandcraftedSettings(
        setting_params={k: v for k, v in params.items() if k not in ("imageType", "featureClass")},
        mode=hc.mode,
        geometry=GeometryPolicy.of(config.cohort),
        slice_choice=choice,
        pyradiomics=pyradiomics_version(),
        coronal_shape2d="axes swapped" if hc.mode == "2d" and _coronal_shape2d(run_params) else None,
        image_types=params.get("imageType"),
        feature_classes=params.get("featureClass"),
        params_file=str(config.resolve(hc.params)) if hc.params is not None else None,
        roi_label=label,
        label_source=source,
    )


def config_problems(config: Config) -> list[str]:
    """Every problem of the handcrafted settings (parameter file, schema, use), as messages."""
    try:
        settings_from_config(config)
    except ConfigError as err:
        return list(err.problems)
    return []


def _fingerprint(case: Case) -> str:
    roi = f":roi={case.roi_name}" if getattr(case, "roi_name", None) else ""  # RTSTRUCT/SEG structure
    return f"{file_fingerprint(case.image, case.mask)}:{case.mask_label}{roi}"


def _input_size(case: Case) -> int:
    total = 0
    for p in (case.image, case.mask):
        try:
            p = Path(p)
            total += sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size
        except OSError:
            pass
    return total


def extract_handcrafted(cohort: Cohort, config: Config, *, progress: bool = True) -> RouteResult:
    """:func:`extract` with the settings and run context taken from ``config``."""
    return extract(cohort, settings_from_config(config), RunContext.from_config(config, progress=progress))


def extract(cohort: Cohort, settings: HandcraftedSettings, context: RunContext) -> RouteResult:
    """PyRadiomics features for every case of the cohort (route ``handcrafted``).

    Cached cases (same settings, same input files, intact checksum) are read back, the
    rest are computed (largest inputs first, for balanced workers) and each one cached as
    soon as it is done; a case cached under other image types or feature classes
    computes only the units it lacks (:func:`cache_units`). Failed cases are listed
    in ``failures``, never left as NaN.
    """
    store = FeatureStore(context.cache_dir, ROUTE, settings.key_dict())
    run_params = settings.run_params
    mode = settings.mode

    units = cache_units(run_params)
    rows: dict[str, dict[str, float]] = {}
    diags: dict[str, dict[str, str]] = {}
    failures: list[CaseFailure] = []
    prints = {c.case_id: _fingerprint(c) for c in cohort.cases}
    entries: dict[str, CacheEntry] = {}  # what is cached of the cases to compute
    missing: dict[str, list[CacheUnit]] = {}
    todo: list[Case] = []
    for case in cohort.cases:
        cid = case.case_id
        entry = store.load_entry(cid, prints[cid])
        lacking = [u for u in units if entry is None or u.key not in entry.units]
        if not lacking:
            rows[cid] = _row(entry, units)
            diags[cid] = entry.diagnostics
            continue
        if entry is not None:
            entries[cid] = entry
        missing[cid] = lacking
        todo.append(case)
    n_cached = len(rows)
    log.info("handcrafted: %d case(s) cached, %d to compute%s (settings %s)", n_cached, len(todo),
             f", {len(entries)} of them in part" if entries else "", store.key)
    if store.damaged:
        log.warning("handcrafted: %d damaged cache entr%s recomputed: %s", len(store.damaged),
                    "y" if len(store.damaged) == 1 else "ies", ", ".join(store.damaged))

    # cases that lack the same units share one parameter set (usually all of them: one group)
    groups: dict[tuple[str, ...], list[Case]] = {}
    for case in todo:
        groups.setdefault(tuple(u.key for u in missing[case.case_id]), []).append(case)
    n_computed = 0
    computed_units: set[str] = set()
    for group in groups.values():
        part = params_for_units(run_params, missing[group[0].case_id])
        done = cache_units(part)  # every combination of the lacking units' image types and classes
        group.sort(key=_input_size, reverse=True)
        work = functools.partial(extract_case, params=part, mode=mode, roi_cfg=settings.roi,
                                 geometry=settings.geometry)
        for case, out in map_cases(work, group, n_jobs=context.n_jobs, backend=context.backend,
                                   address=context.address, progress=context.progress,
                                   desc="handcrafted features"):
            cid = case.case_id
            if isinstance(out, BaseException):
                failures.append(CaseFailure.from_error(out, cid, _STAGE))
                continue
            feats, diag = out
            old = entries.get(cid) or CacheEntry({}, {}, {})
            merged = CacheEntry({**old.features, **feats}, {**old.diagnostics, **diag},
                                {**old.units, **split_into_units(feats, done)})
            store.save(cid, merged.features, prints[cid], merged.diagnostics, merged.units)
            n_computed += 1
            computed_units.update(u.label for u in done)
            rows[cid] = _row(merged, units)
            diags[cid] = merged.diagnostics

    columns, odd = _reference_columns(rows)
    for cid, reason in odd.items():
        failures.append(CaseFailure(cid, _STAGE, reason))
        rows.pop(cid)
    order = [c.case_id for c in cohort.cases if c.case_id in rows]
    index = pd.Index(order, name="case_id", dtype=object)
    features = pd.DataFrame([[rows[cid][c] for c in columns] for cid in order], index=index,
                            columns=columns, dtype=np.float64)
    diagnostics = pd.DataFrame([diags.get(cid, {}) for cid in order], index=index)
    rank = {c.case_id: i for i, c in enumerate(cohort.cases)}
    failures.sort(key=lambda f: rank.get(f.case_id, len(rank)))

    own_labels = {c.case_id: c.mask_label for c in cohort.cases if c.mask_label != settings.roi_label}
    provenance = {
        "route": ROUTE,
        "pyradiomics_version": settings.pyradiomics,
        "mode": mode,
        "params_file": settings.params_file,
        "params": settings.params,
        "run_params": run_params,
        "roi_label": {"label": settings.roi_label, "source": settings.label_source,
                      "cases_with_own_label": own_labels},
        "settings": store.settings,
        "settings_hash": store.key,
        "cache_dir": str(store.dir),
        "n_cases": len(cohort.cases),
        "n_cached": n_cached,
        "n_computed": n_computed,
        "n_computed_in_part": sum(1 for cid in entries if cid in rows),
        "n_cache_damaged": len(store.damaged),
        "units_computed": sorted(computed_units),
        "n_failed": len(failures),
        "execution": {"backend": context.backend, "n_jobs": context.n_jobs, "address": context.address},
    }
    warned = [cid for cid in order if diags.get(cid, {}).get(WARNINGS_KEY)]
    if warned:
        log.info("handcrafted: PyRadiomics warned on %d case(s), e.g. %s: %s (all in the diagnostics table)",
                 len(warned), warned[0], diags[warned[0]][WARNINGS_KEY])
    log.info("handcrafted: %d cases x %d features (%d computed, %d cached, %d failed)",
             features.shape[0], features.shape[1], provenance["n_computed"], n_cached, len(failures))
    return RouteResult(ROUTE, features, failures, provenance, diagnostics)


def _row(entry: CacheEntry, units: list[CacheUnit]) -> dict[str, float]:
    return {name: entry.features[name] for u in units for name in entry.units[u.key]}


def _reference_columns(rows: Mapping[str, Mapping[str, float]]) -> tuple[list[str], dict[str, str]]:
    """The feature columns of the table, and the cases whose feature set differs.

    With one parameter set every case gets the same features; should PyRadiomics
    leave some out for a case (it skips a class it cannot compute, with a warning),
    that case fails rather than carrying NaN columns. The reference is the feature
    set most cases have.
    """
    if not rows:
        return [], {}
    sets = Counter(tuple(r.keys()) for r in rows.values())
    ref = sets.most_common(1)[0][0]
    ref_set = set(ref)
    odd = {}
    for cid, r in rows.items():
        keys = tuple(r.keys())
        if keys == ref:
            continue
        have = set(keys)
        if have == ref_set:
            continue
        missing = sorted(ref_set - have)
        extra = sorted(have - ref_set)
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if extra:
            parts.append(f"extra {len(extra)} ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
        odd[cid] = ("feature set differs from the other cases': " + "; ".join(parts)
                    + " (see diagnostics_radiodeep_Warnings for PyRadiomics' reason)")
    return list(ref), odd
