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
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .. import roi
from ..config import Config, settings_hash
from ..errors import CaseError, CaseFailure
from ..execution import WorkerDied, map_cases
from ..features.store import RouteResult, file_fingerprint
from ..imageio import read_case_images, read_image

__all__ = ["ROUTE", "image_settings", "extract_image", "column_names", "input_shape"]

log = logging.getLogger(__name__)

ROUTE = "image"
SCHEMA = 1


def image_settings(config: Config) -> dict:
    image = config.features.image
    return {"route": ROUTE, "schema": SCHEMA, "channels": image.channels,
            "roi": config.roi.model_dump(mode="json"),
            "sequences": list(config.cohort.sequences or []) if image.channels == "sequences" else None,
            "resample_mask": config.cohort.resample_mask}


def input_shape(config: Config) -> tuple[int, int, int]:
    return (3, int(config.roi.size), int(config.roi.size))


def column_names(n: int) -> list[str]:
    return [f"image_{i:06d}" for i in range(n)]


def _tensor(case, config: Config) -> np.ndarray:
    """One case's (3, S, S) tensor (runs in a worker process when n_jobs > 1)."""
    channels = config.features.image.channels
    image, mask = read_case_images(case, config.cohort.geometry_tolerance, config.cohort.resample_mask)
    sequences = None
    if channels == "sequences":
        sequences = [read_image(p, case.case_id, f"sequence {i + 1}") for i, p in enumerate(case.sequences)]
    views = roi.prepare_case(image, mask, config.roi, channels, case.case_id, sequences=sequences)
    (arr,) = views.views.values()
    if arr.shape[0] != 1:
        raise CaseError(case.case_id, f"the image route takes one slice per case, got {arr.shape[0]}", "image")
    return np.ascontiguousarray(arr[0], dtype=np.float32)


def _load(path: Path, fingerprint: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return np.asarray(z["tensor"], dtype=np.float32)
    except Exception:  # noqa: BLE001 - absent or damaged: recomputed
        return None


def _save(path: Path, tensor: np.ndarray, fingerprint: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, tensor=tensor, fingerprint=np.array(fingerprint))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def extract_image(cohort, config: Config, *, progress: bool = True) -> RouteResult:
    """The ``image`` table of ``cohort``: one flat row per case (see the module docstring)."""
    settings = image_settings(config)
    key = settings_hash(settings)
    folder = config.cache_dir / ROUTE / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
    rows: dict[str, np.ndarray] = {}
    failures: list[CaseFailure] = []
    prints, todo = {}, []
    for case in cohort.cases:
        prints[case.case_id] = f"{file_fingerprint(case.image, case.mask, *case.sequences)}:label={case.mask_label}"
        t = _load(folder / f"{settings_hash(case.case_id, n=16)}.npz", prints[case.case_id])
        if t is None:
            todo.append(case)
        else:
            rows[case.case_id] = t
    n_cached = len(rows)
    ex = config.execution
    for case, result in map_cases(partial(_tensor, config=config), todo, n_jobs=ex.n_jobs, backend=ex.backend,
                                  address=ex.address, progress=progress, desc="ROI tensors"):
        if isinstance(result, BaseException):
            if isinstance(result, (CaseError, WorkerDied)):
                failures.append(CaseFailure(case.case_id, ROUTE, getattr(result, "reason", None) or str(result)))
                continue
            raise result
        _save(folder / f"{settings_hash(case.case_id, n=16)}.npz", result, prints[case.case_id])
        rows[case.case_id] = result
    ids = [c.case_id for c in cohort.cases if c.case_id in rows]
    shape = input_shape(config)
    n = int(np.prod(shape))
    values = np.stack([rows[c].reshape(-1) for c in ids]) if ids else np.zeros((0, n), np.float32)
    table = pd.DataFrame(values, index=pd.Index(ids, name="case_id"), columns=column_names(n))
    provenance = {**settings, "input_shape": list(shape), "range": [0.0, 1.0],
                  "cache": {"dir": str(folder), "key": key, "cached": n_cached, "computed": len(ids) - n_cached}}
    log.info("image route: %d cases (%d cached), tensors %s", len(ids), n_cached, shape)
    return RouteResult(ROUTE, table, failures, provenance)
