"""Per-case feature cache and CSV export with provenance.

Layout: ``<root>/<route>/<settings-hash>/<case>.npz`` plus ``settings.json`` in
each settings folder. A case's entry also records a fingerprint of its input
files (path, size, modification time), so an edited image is recomputed while
every other finished case is reused. Writes are atomic (temporary file, then
rename), so a crash or Ctrl-C never leaves a half-written entry.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..config import settings_hash

__all__ = ["CacheEntry", "FeatureStore", "RouteResult", "file_fingerprint", "export_csv", "read_features"]


def file_fingerprint(*paths: Path | str) -> str:
    """A short hash of the paths, sizes and modification times of input files."""
    parts = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            st = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()]
            parts.append([str(p.resolve()), st])
        elif p.exists():
            s = p.stat()
            parts.append([str(p.resolve()), s.st_size, s.st_mtime_ns])
        else:
            parts.append([str(p), None])
    return settings_hash(parts, n=16)


def _safe(case_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)
    if safe != case_id:  # keep distinct ids distinct after sanitising
        safe += "-" + settings_hash(case_id, n=6)
    return safe


@dataclass
class CacheEntry:
    features: dict[str, float]
    diagnostics: dict[str, str]
    units: dict[str, list[str]] = field(default_factory=dict)


class FeatureStore:
    """A cache of one route's per-case feature rows under one settings hash."""

    def __init__(self, root: Path | str, route: str, settings: Mapping[str, Any]):
        self.route = route
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.key = settings_hash(self.settings)
        self.dir = Path(root) / route / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        sfile = self.dir / "settings.json"
        if not sfile.exists():
            _atomic_write_bytes(sfile, json.dumps(self.settings, indent=2, sort_keys=True).encode())

    def path(self, case_id: str) -> Path:
        return self.dir / f"{_safe(case_id)}.npz"

    def load(self, case_id: str, fingerprint: str | None = None) -> dict[str, float] | None:
        """The cached row, or None when absent, unreadable or made from other inputs."""
        entry = self.load_entry(case_id, fingerprint)
        return None if entry is None else entry.features

    def load_entry(self, case_id: str, fingerprint: str | None = None) -> "CacheEntry | None":
        """Features, diagnostics and units of a cached case in one read, or None when absent,
        unreadable or made from other inputs."""
        p = self.path(case_id)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if fingerprint is not None and str(z["fingerprint"]) != fingerprint:
                    return None
                features = dict(zip(z["names"].tolist(), z["values"].astype(float).tolist()))
                units = json.loads(str(z["units"])) if "units" in z.files else {}
                return CacheEntry(features, json.loads(str(z["diagnostics"])), units)
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, not fatal
            return None

    def load_diagnostics(self, case_id: str) -> dict[str, str]:
        p = self.path(case_id)
        with np.load(p, allow_pickle=False) as z:
            return json.loads(str(z["diagnostics"]))

    def has(self, case_id: str, fingerprint: str | None = None) -> bool:
        return self.load(case_id, fingerprint) is not None

    def save(self, case_id: str, features: Mapping[str, float], fingerprint: str = "",
             diagnostics: Mapping[str, Any] | None = None,
             units: Mapping[str, list[str]] | None = None) -> Path:
        """Write a case's row atomically. ``units`` (unit key -> feature names) says which parts
        of the row were computed under which part of the settings (the handcrafted route)."""
        names = np.array(list(features.keys()), dtype=str)
        values = np.array([float(v) for v in features.values()], dtype=np.float64)
        p = self.path(case_id)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, names=names, values=values, fingerprint=np.array(fingerprint),
                         case_id=np.array(case_id),
                         diagnostics=np.array(json.dumps(dict(diagnostics or {}), default=str)),
                         units=np.array(json.dumps(dict(units or {}))))
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def table(self, case_ids: Iterable[str]) -> pd.DataFrame:
        """Cached rows for the given cases (missing cases are left out), indexed by case id."""
        rows, ids = [], []
        for cid in case_ids:
            row = self.load(cid)
            if row is not None:
                rows.append(row)
                ids.append(cid)
        df = pd.DataFrame(rows, index=pd.Index(ids, name="case_id"))
        return df


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def export_csv(df: pd.DataFrame, path: Path | str, provenance: Mapping[str, Any]) -> Path:
    """Write a feature table as CSV and its provenance beside it (``<name>.provenance.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    # no float_format: pandas writes each float's shortest repr, which read_features reads back
    # bit for bit (exact ties between features survive; evaluation sees the extracted numbers)
    df.to_csv(tmp, index=True, float_format=None)
    os.replace(tmp, path)
    prov = dict(provenance)
    prov.setdefault("n_cases", int(df.shape[0]))
    prov.setdefault("n_features", int(df.shape[1]))
    _atomic_write_bytes(path.with_suffix(".provenance.json"),
                        json.dumps(prov, indent=2, sort_keys=True, default=str).encode())
    return path


#: read_csv arguments that parse every float exactly (pandas < 3 needs the round-trip parser)
EXACT_FLOATS: dict = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_features(path: Path | str) -> pd.DataFrame:
    """A feature table written by :func:`export_csv`: the same float64 values, bit for bit
    (pandas >= 3 parses floats exactly; tests/test_store.py checks it)."""
    df = pd.read_csv(path, index_col="case_id", dtype={"case_id": str}, **EXACT_FLOATS)
    return df.astype(np.float64)


class RouteResult:
    """What a feature route hands on: a table per route, its failures and provenance."""

    def __init__(self, route: str, features: pd.DataFrame, failures: list | None = None,
                 provenance: Mapping[str, Any] | None = None, diagnostics: pd.DataFrame | None = None):
        self.route = route
        self.features = features  # index: case_id; columns: stable feature names; floats only
        self.failures = list(failures or [])  # list[radiodeep.errors.CaseFailure]
        self.provenance = dict(provenance or {})
        self.diagnostics = diagnostics  # never fed to models

    def __repr__(self) -> str:
        return (f"RouteResult({self.route!r}, {self.features.shape[0]} cases x "
                f"{self.features.shape[1]} features, {len(self.failures)} failures)")
