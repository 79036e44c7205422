"""The YAML configuration: one typed schema, validated strictly.

Every section is a pydantic model with ``extra="forbid"``; unknown keys get a
"did you mean" suggestion, wrong types and ranges name the full key path.
Relative paths are resolved against the folder that holds the config file.
:meth:`Config.resolved_yaml` writes the configuration as run, its paths made
relative to the folder it is written to, so that file reruns from anywhere.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from .learned import schema as _learned  # the learned route's schema (no torch import)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "Config",
    "CohortConfig",
    "RoiConfig",
    "IntensityConfig",
    "HandcraftedConfig",
    "DeepConfig",
    "FeaturesConfig",
    "SelectConfig",
    "ClassifierConfig",
    "ExperimentConfig",
    "EvaluationConfig",
    "ExecutionConfig",
    "load_config",
    "parse_config",
    "settings_hash",
]


class ConfigError(ValueError):
    """A configuration problem; ``problems`` lists every one found."""

    def __init__(self, problems: list[str], source: str | None = None, config: "Config | None" = None):
        self.problems = list(problems)
        self.source = source
        self.config = config  # the schema-valid config when only files or the label are wrong
        head = f"invalid configuration{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


# --------------------------------------------------------------------------- cohort
class CohortConfig(_Strict):
    manifest: Path = Field(description="CSV with columns case_id, image, mask, label")
    positive_label: str | int | None = Field(
        None, description="label value treated as the positive class (required for binary tasks)"
    )
    mask_label: int | None = Field(
        None, ge=1, description="label value of the ROI in the masks (None: the PyRadiomics parameter "
                                "file's 'label', else 1; a manifest 'mask_label' column wins per case)")
    roi_name: str | int | None = Field(
        None, description="for RTSTRUCT/DICOM-SEG masks: the ROI's exact name, a regular expression "
                          "such as '(?i)^gtv', or a SEG segment number (a manifest roi_name column wins)"
    )
    on_invalid: Literal["error", "skip"] = "error"
    geometry_tolerance: float = Field(
        1e-3, gt=0, description="relative tolerance for spacing/origin/direction agreement"
    )
    resample_mask: bool = Field(
        False, description="resample a mask onto its image (nearest neighbour) when geometry differs"
    )
    sequences: list[str] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="three manifest columns holding MR sequences for the 'sequences' channel strategy",
    )
    columns: dict[str, str] | None = Field(
        None, description="radiodeep column -> the manifest's column, e.g. {label: Outcome, case_id: ID}; "
                          "a PyRadiomics batch file (ID,Image,Mask[,Label]) is recognised without it "
                          "(its Label is the MASK label, not the outcome)")
    covariates: list[str] | dict[str, Literal["numeric", "categorical"]] | None = Field(
        None, description="manifest columns that become the 'clinical' route's features (a list: numeric "
                          "when every value is a number, else categorical; or a mapping name: kind)")


# --------------------------------------------------------------------------- roi
CT_PRESETS: dict[str, tuple[float, float]] = {
    # name: (level, width) in HU
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}


class IntensityConfig(_Strict):
    modality: Literal["CT", "MR"] = "CT"
    # CT: a preset name, [low, high] in HU, or {level: L, width: W} (read as [L - W/2, L + W/2])
    window: str | tuple[float, float] | None = Field(
        None, description="CT window: preset name, [low, high] HU or {level, width} (default: lung)"
    )
    windows: list[str | tuple[float, float]] | None = Field(
        None, description="three CT windows for the 'ct_windows' channel strategy"
    )

    @field_validator("window", mode="before")
    @classmethod
    def _window_level_width(cls, v):
        return _level_width(v)

    @field_validator("windows", mode="before")
    @classmethod
    def _windows_level_width(cls, v):
        return [_level_width(w) for w in v] if isinstance(v, list) else v
    # MR
    percentiles: tuple[float, float] = (1.0, 99.0)
    normalise: Literal["zscore", "minmax"] = "minmax"
    region: Literal["roi", "slice"] = "slice"

    @field_validator("window")
    @classmethod
    def _window_ok(cls, v):
        return _check_window(v)

    @field_validator("windows")
    @classmethod
    def _windows_ok(cls, v):
        if v is None:
            return v
        if len(v) != 3:
            raise ValueError(f"needs exactly three windows (one per RGB channel), got {len(v)}")
        return [_check_window(w) for w in v]

    @model_validator(mode="after")
    def _percentiles_ok(self):
        lo, hi = self.percentiles
        if not (0 <= lo < hi <= 100):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(self.percentiles)}")
        return self


def _level_width(v):
    """``{level: L, width: W}`` as ``[L - W/2, L + W/2]``; anything else unchanged."""
    if not isinstance(v, dict):
        return v
    if set(v) != {"level", "width"}:
        raise ValueError(f"a window given as a mapping needs exactly the keys 'level' and 'width', got {sorted(v)}")
    level, width = v["level"], v["width"]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (level, width)):
        raise ValueError(f"window level and width must be numbers (HU), got level={level!r}, width={width!r}")
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return (level - width / 2, level + width / 2)


def _check_window(v):
    if v is None:
        return v
    if isinstance(v, str):
        if v not in CT_PRESETS:
            raise ValueError(f"unknown CT window preset {v!r}{_suggest(v, CT_PRESETS)}; "
                             f"choose one of {sorted(CT_PRESETS)}, give [low, high] in HU, or {{level: L, width: W}}")
        return v
    lo, hi = v
    if not lo < hi:
        raise ValueError(f"window [low, high] needs low < high, got [{lo}, {hi}]")
    return (float(lo), float(hi))


ChannelStrategy = Literal["r", "g", "b", "grey3", "each", "ct_windows", "slices", "sequences"]


class RoiConfig(_Strict):
    plane: Literal["axial", "sagittal", "coronal"] = "axial"
    slice: Literal["largest", "all", "centre"] = "largest"
    spacing_mm: float | None = Field(
        None, gt=0, description="in-plane pixel spacing to resample to before cropping (None: keep)"
    )
    crop: Literal["exact", "window", "masked"] = "window"
    margin_px: int = Field(0, ge=0, description="margin around the ROI bounding box (exact/masked)")
    window_px: int | None = Field(56, gt=0, description="window side in pixels (crop: window)")
    window_mm: float | None = Field(None, gt=0, description="window side in mm (overrides window_px)")
    size: int = Field(224, ge=16, le=1024, description="side of the network input, pixels")
    aspect: Literal["stretch", "pad"] = "pad"
    background: float = Field(0.0, ge=0.0, le=1.0, description="value outside the ROI for crop: masked (in [0, 1])")
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)


# --------------------------------------------------------------------------- features
class HandcraftedConfig(_Strict):
    params: Path | None = Field(None, description="a PyRadiomics parameter file, used as is")
    settings: dict[str, Any] | None = Field(
        None, description="inline PyRadiomics settings (merged over the params file's 'setting')"
    )
    mode: Literal["3d", "2d"] = "3d"


class DeepConfig(_Strict):
    backbone: str = "alexnet"
    weights: str | Path | None = Field(
        "IMAGENET1K_V1",
        description="torchvision weights name (e.g. IMAGENET1K_V1), a local .pth/.mat file, or null",
    )
    layer: str = Field("fc7", description="fc6 | fc7 | penultimate | a module path")
    activation: Literal["pre_relu", "post_relu"] = "post_relu"
    channels: ChannelStrategy = "r"
    batch_size: int = Field(32, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch default)")
    slice_pooling: Literal["mean", "max"] = Field(
        "mean", description="how features of several slices (roi.slice: all) are pooled per case"
    )


class ClinicalConfig(_Strict):
    """The ``clinical`` route (the covariates are ``cohort.covariates``; set up by naming them)."""

    missing: Literal["refuse", "impute"] = Field(
        "refuse", description="refuse: a case with a covariate missing fails in the clinical route "
                              "(listed); impute: the value is filled inside each fold from that fold's "
                              "training cases only (median of a numeric covariate, most frequent "
                              "category of a categorical one)")


class FeaturesConfig(_Strict):
    handcrafted: HandcraftedConfig | None = None
    deep: DeepConfig | None = None
    image: _learned.ImageConfig | None = None  # learned route (radiodeep/learned): the ROI tensor itself
    clinical: ClinicalConfig | None = None

    @model_validator(mode="after")
    def _at_least_one(self):
        if self.handcrafted is None and self.deep is None and self.image is None and self.clinical is None:
            raise ValueError("name at least one feature route: 'handcrafted', 'deep' and/or 'image' "
                             "(or clinical covariates: cohort.covariates)")
        return self


# --------------------------------------------------------------------------- experiments
class SelectConfig(_Strict):
    method: Literal["relieff", "su", "none"] = "su"
    k: int | Literal["all"] | None = Field(
        None, description="number of features kept over all routes together"
    )
    k_per_route: int | None = Field(
        None, ge=1, description="features kept per route, then united (the published 5 + 5)"
    )
    neighbours: int = Field(10, ge=1, description="ReliefF nearest hits/misses")
    sample: int | None = Field(None, ge=1, description="ReliefF: instances sampled (None: all)")
    correlation_threshold: float | None = Field(
        None, gt=0, le=1, description="drop a selected feature correlated above this with a better one"
    )

    @field_validator("k")
    @classmethod
    def _k_pos(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"k must be >= 1 or 'all', got {v}")
        return v

    @model_validator(mode="after")
    def _k_or_per_route(self):
        if self.k is not None and self.k_per_route is not None:
            raise ValueError("give either 'k' or 'k_per_route', not both")
        if self.method != "none" and self.k is None and self.k_per_route is None:
            raise ValueError(f"selection method {self.method!r} needs 'k' or 'k_per_route'")
        return self


# the one list of classifier names lives with the code that builds them
from .experiment import CLASSIFIERS  # noqa: E402


class ClassifierConfig(_Strict):
    model_config = ConfigDict(extra="allow")  # estimator keyword arguments
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in CLASSIFIERS:
            names = [*CLASSIFIERS, *_learned.LEARNED_CLASSIFIERS]
            raise ValueError(f"unknown classifier {v!r}{_suggest(v, names)}; choose one of {list(CLASSIFIERS)} "
                             f"(on feature tables) or {list(_learned.LEARNED_CLASSIFIERS)} (with features: [image])")
        return v

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    features: list[Literal["handcrafted", "deep", "image", "clinical"]] = Field(min_length=1)
    select: SelectConfig = Field(default_factory=lambda: SelectConfig(method="none"))
    # learned classifiers (cnn_finetune, ...) are defined in radiodeep/learned/schema.py
    classifier: _learned.classifier_field(ClassifierConfig)  # type: ignore[valid-type]
    final: bool = Field(False, description="fit this experiment on every eligible case after the "
                                           "evaluation and save it for 'radiodeep predict' (when no "
                                           "experiment says final: true, every experiment is saved)")

    @model_validator(mode="after")
    def _learned_route(self):
        _learned.check_experiment(self)
        return self

    @field_validator("classifier", mode="before")
    @classmethod
    def _name_only(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("features")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"routes listed twice: {v}")
        return v


class EvaluationConfig(_Strict):
    scheme: Literal["loo", "repeated_kfold", "external"] = "loo"
    folds: int = Field(5, ge=2)
    repeats: int = Field(10, ge=1)
    seed: int = 0
    train_split: str = Field("train", description="manifest 'split' value used for training (external)")
    test_split: str = Field("test", description="manifest 'split' value used for testing (external)")
    permutations: int = Field(0, ge=0, description="label permutations for a permutation test (0: off)")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)


class ClusterConfig(_Strict):
    """A Dask cluster radiodeep starts for the run (``backend: dask``) and stops after it:
    worker jobs on SLURM or PBS (through dask-jobqueue; the scheduler runs in radiodeep's
    process, which must be reachable from the compute nodes), or ``local`` worker processes."""

    kind: Literal["slurm", "pbs", "local"]
    cores: int = Field(1, ge=1, description="cores per job")
    memory: str = Field("4GB", description="memory per job (e.g. 16GB)")
    processes: int = Field(1, ge=1, description="Dask worker processes per job (cores shared out)")
    jobs: int = Field(1, ge=1, description="jobs (kind local: sets of processes) to start")
    walltime: str | None = Field("01:00:00", description="per job (HH:MM:SS)")
    queue: str | None = Field(None, description="partition (SLURM) or queue (PBS)")
    account: str | None = None
    interface: str | None = Field(None, description="network interface the workers reach the scheduler on")
    python: str | None = Field(None, description="the workers' Python (default: this one)")
    prologue: list[str] = Field(default_factory=list,
                                description="shell lines run before a worker starts (module load, venv)")
    job_extra: list[str] = Field(default_factory=list, description="extra #SBATCH / #PBS directives")
    log_directory: str | None = None


class ExecutionConfig(_Strict):
    n_jobs: int = Field(1, ge=1, description="worker processes for feature extraction; threads for the "
                                             "cross-validation folds (results do not depend on it)")
    backend: Literal["local", "dask"] = "local"
    address: str | None = Field(None, description="Dask scheduler address (backend: dask)")
    cluster: ClusterConfig | None = Field(None, description="a Dask cluster to start for the run "
                                                            "(backend: dask, no address)")
    cache_dir: Path | None = Field(None, description="per-case feature cache (default: OUTPUT/cache)")
    progress: bool = True

    @model_validator(mode="after")
    def _dask_address(self):
        if self.backend == "dask" and not self.address and self.cluster is None:
            raise ValueError("backend 'dask' needs 'address' (e.g. tcp://scheduler:8786) or 'cluster' "
                             "(e.g. {kind: slurm, cores: 8, memory: 16GB, jobs: 4})")
        if self.address and self.cluster is not None:
            raise ValueError("give either 'address' (a running scheduler) or 'cluster' (one to start), "
                             "not both")
        return self


# --------------------------------------------------------------------------- top level
class Config(_Strict):
    name: str = "radiodeep-study"
    cohort: CohortConfig
    roi: RoiConfig = Field(default_factory=RoiConfig)
    features: FeaturesConfig
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: Path = Path("results")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    # not part of the schema: where the file was read from
    _base_dir: Path = Path(".")

    @model_validator(mode="before")
    @classmethod
    def _clinical_route(cls, data):
        """Covariates named in ``cohort.covariates`` set up the ``clinical`` route."""
        if isinstance(data, dict) and isinstance(data.get("cohort"), dict) and data["cohort"].get("covariates"):
            feats = data.get("features")
            if isinstance(feats, dict) and feats.get("clinical") is None:
                data = {**data, "features": {**feats, "clinical": {}}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.features.clinical is not None and not self.cohort.covariates:
            raise ValueError("the clinical route needs cohort.covariates (the manifest columns to use)")
        names = [e.name for e in self.experiments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment names must be unique; repeated: {dupes}")
        for i, e in enumerate(self.experiments):
            for route in e.features:
                if getattr(self.features, route) is None:
                    raise ValueError(
                        f"experiments[{i}] ({e.name}) uses route {route!r}, "
                        f"but features.{route} is not configured"
                    )
        deep = self.features.deep
        if deep is not None:
            if deep.channels == "sequences" and not self.cohort.sequences:
                raise ValueError("channel strategy 'sequences' needs cohort.sequences (three manifest columns)")
            if deep.channels == "ct_windows" and self.roi.intensity.modality != "CT":
                raise ValueError("channel strategy 'ct_windows' needs roi.intensity.modality: CT")
        _learned.check_config(self)
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve(self, p: Path | str | None) -> Path | None:
        """A path from the config, made absolute against the config file's folder."""
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self._base_dir / p))

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.output)

    @property
    def cache_dir(self) -> Path:
        return self.resolve(self.execution.cache_dir) or (self.output_dir / "cache")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved_dict(self, folder: Path | str) -> dict[str, Any]:
        """Every setting (defaults included), with each path rewritten relative to ``folder``
        (where the file will be read from), so the file reruns the same study wherever it is
        validated or run from."""
        folder = Path(folder).resolve()
        data = self.to_dict()

        def rel(p) -> str:
            path = self.resolve(p).resolve()
            try:
                return Path(os.path.relpath(path, folder)).as_posix()
            except ValueError:  # another drive (Windows): keep it absolute
                return str(path)

        data["cohort"]["manifest"] = rel(self.cohort.manifest)
        data["output"] = rel(self.output)
        if self.execution.cache_dir is not None:
            data["execution"]["cache_dir"] = rel(self.execution.cache_dir)
        hc = self.features.handcrafted
        if hc is not None and hc.params is not None:
            data["features"]["handcrafted"]["params"] = rel(hc.params)
        deep = self.features.deep
        if deep is not None and isinstance(deep.weights, (str, Path)) and _looks_like_path(str(deep.weights)):
            data["features"]["deep"]["weights"] = rel(deep.weights)
        return data

    def resolved_yaml(self, folder: Path | str) -> str:
        """:meth:`resolved_dict` as YAML text (for ``config.resolved.yaml`` in ``folder``)."""
        return yaml.safe_dump(self.resolved_dict(folder), sort_keys=False, allow_unicode=True)

    def params_label(self) -> int | None:
        """The ``label`` the handcrafted route's PyRadiomics settings name (inline settings over the
        parameter file's ``setting``), or None when they name none."""
        hc = self.features.handcrafted
        if hc is None:
            return None
        label = None
        if hc.params is not None:
            setting = _read_setting(self.resolve(hc.params))
            label = setting.get("label", label)
        if hc.settings and "label" in hc.settings:
            label = hc.settings["label"]
        return None if label is None else int(label)

    def roi_label(self) -> tuple[int, str]:
        """The label value of the ROI in every mask (unless a manifest row names its own), and
        where it comes from: ``cohort.mask_label``, the parameter file's ``label``, or the default 1."""
        if self.cohort.mask_label is not None:
            return self.cohort.mask_label, "cohort.mask_label"
        label = self.params_label()
        if label is not None:
            return label, "features.handcrafted (PyRadiomics 'label')"
        return 1, "default"


# --------------------------------------------------------------------------- loading
def _suggest(word: str, options) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""




def _model_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the mapping at ``path`` (for suggestions)."""
    model: Any = Config
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        model = _first_model(ann)
        if model is None:
            return None
    return model


def _first_model(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        m = _first_model(arg)
        if m is not None:
            return m
    return None


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_loc(loc: tuple) -> tuple:
    # pydantic inserts union branch names (e.g. 'str', 'tuple[float, float]', 'function-after[...]')
    keep = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"}):
            continue
        if isinstance(part, str) and part in _learned.LOC_TAGS:  # the classifier union's branch names
            continue
        keep.append(part)
    return tuple(keep)


def _format_errors(err: ValidationError) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for e in err.errors(include_url=False):
        loc = _clean_loc(tuple(e["loc"]))
        etype = e["type"]
        if etype == "extra_forbidden":
            key = loc[-1]
            parent = _model_at(loc[:-1])
            hint = _suggest(key, parent.model_fields) if parent else ""
            msg = f"{_loc_str(loc)}: unknown key {key!r}{hint}"
        elif etype == "missing":
            msg = f"{_loc_str(loc)}: required key is missing"
        else:
            text = e["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, "):]
            given = e.get("input")
            if etype not in {"value_error", "assertion_error"} and not isinstance(given, (dict, list)):
                text = f"{text} (got {given!r})"
            msg = f"{_loc_str(loc)}: {text}"
        if msg not in seen:
            seen.add(msg)
            problems.append(msg)
    return problems


def parse_config(data: Any, base_dir: Path | str = ".", source: str | None = None) -> Config:
    """Validate a config mapping; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"the file must hold a mapping of sections, got {type(data).__name__}"], source)
    base = Path(base_dir).resolve()
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err) + _check_raw_files(data, base), source) from None
    cfg._base_dir = base
    problems = _check_files(cfg) + _check_label(cfg)
    if problems:
        raise ConfigError(problems, source, config=cfg)
    return cfg


def _check_files(cfg: Config) -> list[str]:
    problems = []
    manifest = cfg.resolve(cfg.cohort.manifest)
    if not manifest.is_file():
        problems.append(f"cohort.manifest: file not found: {manifest}")
    hc = cfg.features.handcrafted
    if hc is not None and hc.params is not None:
        p = cfg.resolve(hc.params)
        if not p.is_file():
            problems.append(f"features.handcrafted.params: file not found: {p}")
    deep = cfg.features.deep
    if deep is not None and isinstance(deep.weights, (str, Path)) and _looks_like_path(str(deep.weights)):
        p = cfg.resolve(deep.weights)
        if not p.is_file():
            problems.append(f"features.deep.weights: file not found: {p}")
    return problems


def _read_setting(path: Path | None) -> dict:
    """The ``setting`` section of a PyRadiomics parameter file ({} when absent or unreadable:
    the handcrafted route reports those problems itself)."""
    if path is None or not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return {}
    setting = data.get("setting") if isinstance(data, dict) else None
    return setting if isinstance(setting, dict) else {}


def _check_label(cfg: Config) -> list[str]:
    """The ROI label named twice, with two values, is refused: which one is meant is not knowable."""
    try:
        label = cfg.params_label()
    except (TypeError, ValueError):
        return ["features.handcrafted: the PyRadiomics setting 'label' must be an integer"]
    mine = cfg.cohort.mask_label
    if label is None or mine is None or label == mine:
        return []
    return [f"cohort.mask_label is {mine} but the PyRadiomics parameters say label: {label}; the ROI's "
            "label must be named once: remove one of them (or make them agree)"]


def _check_raw_files(data: dict, base: Path) -> list[str]:
    """File checks on an unvalidated mapping, so they are listed beside schema errors."""
    problems = []
    for keys in (("cohort", "manifest"), ("features", "handcrafted", "params")):
        node: Any = data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            p = Path(node).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                problems.append(f"{'.'.join(keys)}: file not found: {p}")
    return problems


def _looks_like_path(s: str) -> bool:
    return any(s.endswith(ext) for ext in (".pth", ".pt", ".mat", ".bin")) or "/" in s


def load_config(path: Path | str) -> Config:
    """Read and validate a YAML config file (``yaml.safe_load``: no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path.resolve()}"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))


def settings_hash(obj: Any, n: int = 12) -> str:
    """A short stable hash of JSON-serialisable settings (keys sorted)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
