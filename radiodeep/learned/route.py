"""The ``image`` pseudo-route: each case's prepared ROI tensor, as one flat row of a table.

The ROI stage (:func:`radiodeep.roi.prepare_case`, the deep route's crop, intensity mapping and
channel strategy; ``roi`` settings and ``features.image.channels``) gives one ``(3, S, S)``
float32 tensor in [0, 1] per case (one slice: ``roi.slice`` largest or centre). It is
label-free, so it is computed once per case and cached
(``<cache>/image/<settings hash>/<case>.npz``, with a fingerprint of the input files).

Why a flat table (cases x ``3*S*S`` columns ``image_000000``, ...) rather than case ids plus a
tensor store: the evaluation loop (folds, predictions, metrics, DeLong, the report, the Dask
backend) works on a feature table indexed by case id, and a table that *is* the data keeps it
unchanged: each fold's estimator receives exactly its training tensors, with nothing to look
up elsewhere (no hidden global store that a held-out case could be read from, and folds ship
to Dask workers as they are). :class:`~radiodeep.learned.estimator.CNNClassifier` reshapes
the rows with ``input_shape=(3, S, S)``. The backbone's own normalisation is applied inside
the network (:class:`~radiodeep.learned.networks.FineTuneNet`), so one cached tensor serves
every backbone. The table is not exported as CSV (a 224 x 224 row holds 150,528 values).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from .. import roi
from ..config import Config, RoiConfig
from ..errors import CaseError, CaseFailure
from ..execution import WorkerDied, map_cases
from ..features.routes import RouteSettings, RunContext
from ..features.store import RouteResult, file_fingerprint
from ..imageio import GeometryPolicy, read_case_images, read_case_sequences

__all__ = ["ROUTE", "ImageSettings", "settings_from_config", "config_problems", "extract", "column_names",
           "input_shape", "export_tensors", "read_tensors"]

log = logging.getLogger(__name__)

ROUTE = "image"
SCHEMA = 1


@dataclass(frozen=True)
class ImageSettings(RouteSettings):
    """The image route's slice of the config (all of it is the cache key)."""

    schema: int
    channels: str
    roi: dict
    sequences: list | None
    geometry: GeometryPolicy

    @property
    def roi_config(self) -> RoiConfig:
        return RoiConfig.model_validate(self.roi)


def settings_from_config(config: Config) -> ImageSettings:
    image = config.features.image
    if image is None:
        raise ValueError("features.image is not configured")
    return ImageSettings(schema=SCHEMA, channels=image.channels, roi=config.roi.model_dump(mode="json"),
                         sequences=list(config.cohort.sequences or []) if image.channels == "sequences" else None,
                         geometry=GeometryPolicy.of(config.cohort))


def config_problems(config: Config) -> list[str]:
    """The learned experiments' settings problems (backbone, weights on this machine, layer, size)."""
    from .build import check_learned

    return check_learned(config)


def input_shape(config: Config) -> tuple[int, int, int]:
    return (3, int(config.roi.size), int(config.roi.size))


def column_names(n: int) -> list[str]:
    return [f"image_{i:06d}" for i in range(n)]


def _tensor(case, settings: ImageSettings) -> np.ndarray:
    """One case's (3, S, S) tensor (runs in a worker process when n_jobs > 1)."""
    geo = settings.geometry
    image, mask = read_case_images(case, geo.tolerance, geo.resample_mask)
    sequences = read_case_sequences(case, image, geo.tolerance) if settings.channels == "sequences" else None
    views = roi.prepare_case(image, mask, settings.roi_config, settings.channels, case.case_id, sequences=sequences)
    (arr,) = views.views.values()
    if arr.shape[0] != 1:
        raise CaseError(case.case_id, f"the image route takes one slice per case, got {arr.shape[0]}", ROUTE)
    return np.ascontiguousarray(arr[0], dtype=np.float32)


def _fingerprint(case) -> str:
    roi_name = f":roi={case.roi_name}" if getattr(case, "roi_name", None) else ""
    return f"{file_fingerprint(case.image, case.mask, *case.sequences)}:label={case.mask_label}{roi_name}"


def _load(path: Path, fingerprint: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return np.asarray(z["tensor"], dtype=np.float32)
    except Exception:  # noqa: BLE001 - absent or damaged: recomputed
        return None


def _atomic_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def extract(cohort, settings: ImageSettings, context: RunContext) -> RouteResult:
    """The ``image`` table of ``cohort``: one flat row per case (see the module docstring)."""
    from ..config import settings_hash

    key = settings.cache_key()
    folder = Path(context.cache_dir) / ROUTE / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings.key_dict(), indent=2, sort_keys=True),
                                          encoding="utf-8")
    rows: dict[str, np.ndarray] = {}
    failures: list[CaseFailure] = []
    prints, todo = {}, []
    for case in cohort.cases:
        prints[case.case_id] = _fingerprint(case)
        t = _load(folder / f"{settings_hash(case.case_id, n=16)}.npz", prints[case.case_id])
        if t is None:
            todo.append(case)
        else:
            rows[case.case_id] = t
    n_cached = len(rows)
    for case, result in map_cases(partial(_tensor, settings=settings), todo, n_jobs=context.n_jobs,
                                  backend=context.backend, address=context.address, progress=context.progress,
                                  desc="ROI tensors"):
        if isinstance(result, BaseException):
            if isinstance(result, (CaseError, WorkerDied)):
                failures.append(CaseFailure(case.case_id, ROUTE, getattr(result, "reason", None) or str(result)))
                continue
            raise result
        _atomic_npz(folder / f"{settings_hash(case.case_id, n=16)}.npz", tensor=result,
                    fingerprint=np.array(prints[case.case_id]))
        rows[case.case_id] = result
    ids = [c.case_id for c in cohort.cases if c.case_id in rows]
    size = int(settings.roi["size"])
    shape = (3, size, size)
    n = int(np.prod(shape))
    values = np.stack([rows[c].reshape(-1) for c in ids]) if ids else np.zeros((0, n), np.float32)
    table = pd.DataFrame(values, index=pd.Index(ids, name="case_id"), columns=column_names(n))
    provenance = {**settings.as_dict(), "input_shape": list(shape), "range": [0.0, 1.0],
                  "cache": {"dir": str(folder), "key": key, "cached": n_cached, "computed": len(ids) - n_cached}}
    log.info("image route: %d cases (%d cached), tensors %s", len(ids), n_cached, shape)
    return RouteResult(ROUTE, table, failures, provenance)


# --------------------------------------------------------------------------- export (not CSV)
def export_tensors(df: pd.DataFrame, path: Path | str, provenance: dict) -> Path:
    """Write the image table as ``.npz`` (float32 rows, case ids) and its provenance beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_npz(path, values=df.to_numpy(dtype=np.float32), case_id=np.array([str(c) for c in df.index], dtype=str),
                columns=np.array([str(c) for c in df.columns], dtype=str))
    prov = {**provenance, "n_cases": int(df.shape[0]), "n_features": int(df.shape[1])}
    path.with_suffix(".provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True, default=str),
                                                    encoding="utf-8")
    return path


def read_tensors(path: Path | str) -> pd.DataFrame:
    """The table :func:`export_tensors` wrote, the same values bit for bit."""
    with np.load(path, allow_pickle=False) as z:
        return pd.DataFrame(z["values"], index=pd.Index(z["case_id"].tolist(), name="case_id"),
                            columns=z["columns"].tolist())
