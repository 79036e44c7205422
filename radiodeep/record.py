"""The run record: one typed, persisted account of a run (``run_record.json`` in the output folder).

It says what was computed (extraction, evaluation), from which settings (each route's settings
key, the config, the environment), which cases failed and why, and every number of the
evaluation (metrics, DeLong tests). The tables too long for it (predictions, selection
frequencies, features) are CSV files in the same folder, named in :attr:`RunRecord.outputs`.

* ``radiodeep run`` writes it; ``--only extract`` writes the extraction part;
* ``--only evaluate`` reloads it: the route failures and the settings keys of the exported
  features come from here (no image is opened), and the features are checked against the
  current config before anything is evaluated;
* ``report.html`` is a pure function of it (:func:`write_report`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_atomic

__all__ = ["RECORD_NAME", "SCHEMA", "RouteRecord", "RunRecord", "file_sha256", "write_table", "write_report"]

RECORD_NAME = "run_record.json"
SCHEMA = 1


@dataclass
class RouteRecord:
    """One feature route's export: where its table is, and the settings it was made with."""

    name: str
    settings_key: str  # the route's settings (cache) key: compared with the config's on reload
    features_csv: str  # file name in the output folder
    n_cases: int
    n_features: int
    provenance: dict = field(default_factory=dict)
    sha256: str = ""  # of the CSV as written: --only evaluate refuses a table changed since


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class RunRecord:
    name: str
    config: dict
    environment: dict
    started: str = ""
    finished: str = ""
    computed: list[str] = field(default_factory=list)  # "extract", "evaluate"
    positive_label: str | None = None
    routes: dict[str, RouteRecord] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # case_id, stage, reason
    metrics: list[dict] = field(default_factory=list)  # one row per experiment (= metrics.csv)
    experiment_errors: dict[str, str] = field(default_factory=dict)
    delong: list[dict] = field(default_factory=list)  # pairwise tests (= delong.csv)
    outputs: dict[str, str] = field(default_factory=dict)  # role -> file name in the folder
    models: list[dict] = field(default_factory=list)  # final models saved: experiment, file, sha256
    cohort: dict = field(default_factory=dict)  # cases per class, exclusions, covariate summaries
    schema: int = SCHEMA

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / RECORD_NAME
        _atomic_write(path, json.dumps(plain_data(asdict(self)), indent=2, sort_keys=True,
                                       allow_nan=False).encode("utf-8"))
        return path

    @classmethod
    def load(cls, out_dir: Path) -> "RunRecord":
        path = Path(out_dir) / RECORD_NAME
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path} has schema {data.get('schema')!r}; this radiodeep reads {SCHEMA}")
        data["routes"] = {k: RouteRecord(**v) for k, v in (data.get("routes") or {}).items()}
        return cls(**data)

    # ------------------------------------------------------------------ views
    def failures_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.failures, columns=["case_id", "stage", "reason"])

    def metrics_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics)

    def delong_frame(self) -> pd.DataFrame:
        from .evaluation import DELONG_COLUMNS

        return pd.DataFrame(self.delong, columns=DELONG_COLUMNS)


def plain_data(obj: Any) -> Any:
    """Nested data as strict JSON (and YAML's safe dumper) take it: numpy scalars and arrays to
    Python, NaN/inf to None, dates to ISO text, sets to lists, anything else (paths) to text.
    The one converter of the run record, the metrics/provenance JSON files and the report."""
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain_data(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    return str(obj)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


# --------------------------------------------------------------------------- exact CSV tables
def write_table(df: pd.DataFrame, path: Path, *, index: bool = False) -> Path:
    """A table as CSV whose floats read back bit for bit (shortest round-trip repr)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index, float_format=None)
    return path


# --------------------------------------------------------------------------- the report
def write_report(record: RunRecord, out_dir: Path) -> Path:
    """``report.html`` from the record and the tables it names in the same folder, nothing else."""
    from .features.store import EXACT_FLOATS
    from .report import write_report as render

    out_dir = Path(out_dir)

    def table(role: str) -> pd.DataFrame:
        name = record.outputs.get(role)
        if not name or not (out_dir / name).exists():
            return pd.DataFrame()
        return pd.read_csv(out_dir / name, dtype={"case_id": str}, **EXACT_FLOATS)

    sheet = record.outputs.get("contact_sheet")
    provenance = {
        "config": record.config,
        "environment": record.environment,
        "routes": {name: r.provenance for name, r in record.routes.items()},
        "seed": (record.config.get("evaluation") or {}).get("seed"),
        "started": record.started,
        "finished": record.finished,
    }
    ens = record.outputs.get("ensembles")  # cnn_ensemble summaries (radiodeep/learned/scratch.py)
    if ens and (out_dir / ens).is_dir():
        names = [m.get("experiment") for m in record.metrics]
        provenance["ensembles"] = {p.parent.name: json.loads(p.read_text(encoding="utf-8"))
                                   for p in sorted((out_dir / ens).glob("*/summary.json")) if p.parent.name in names}

    from .paper import paper_context

    predictions = table("predictions")
    paper = paper_context(record, out_dir, predictions, record.metrics_frame())
    return render(out_dir, title=record.name, metrics=record.metrics_frame(),
                  predictions=predictions, paper=paper, selection=table("selection"),
                  delong=record.delong_frame(), failures=record.failures_frame(),
                  experiment_errors=record.experiment_errors, provenance=provenance,
                  contact_sheet=out_dir / sheet if sheet and (out_dir / sheet).exists() else None,
                  positive_label=record.positive_label)
