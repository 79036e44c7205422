"""Per-case feature cache and CSV export with provenance.

Layout: ``<root>/<route>/<settings-hash>/<case>.npz`` plus ``settings.json`` in
each settings folder. A case's entry also records a fingerprint of its input
files (path, size, modification time), so an edited image is recomputed while
every other finished case is reused. Writes are atomic (temporary file, then
rename), so a crash or Ctrl-C never leaves a half-written entry. Each entry also
holds a SHA-256 checksum of its contents (names, values, fingerprint,
diagnostics, units), verified on every load: an entry edited by hand or damaged
on disk is recomputed, with a warning, and counted in :attr:`FeatureStore.damaged`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..config import settings_hash
from ..atomic import atomic_path, write_atomic

__all__ = ["CacheEntry", "FeatureStore", "RouteResult", "file_fingerprint", "export_csv", "read_features"]

log = logging.getLogger(__name__)


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


_MAX_NAME = 120  # bytes of a cache file's stem: well inside every file system's 255 (with ".npz")


def _safe(case_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)
    if len(safe) > _MAX_NAME:  # a long id: a prefix to recognise it, a hash to keep it unique
        return safe[:_MAX_NAME - 17] + "-" + settings_hash(case_id, n=16)
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
        self.damaged: list[str] = []  # case ids whose entry failed its checksum (recomputed)
        sfile = self.dir / "settings.json"
        if not sfile.exists():
            write_atomic(sfile, json.dumps(self.settings, indent=2, sort_keys=True).encode())

    def path(self, case_id: str) -> Path:
        return self.dir / f"{_safe(case_id)}.npz"

    def load(self, case_id: str, fingerprint: str | None = None) -> dict[str, float] | None:
        """The cached row, or None when absent, unreadable, damaged or made from other inputs."""
        entry = self.load_entry(case_id, fingerprint)
        return None if entry is None else entry.features

    def load_entry(self, case_id: str, fingerprint: str | None = None) -> "CacheEntry | None":
        """Features, diagnostics and units of a cached case in one read, or None when absent,
        unreadable, damaged (checksum mismatch: counted in :attr:`damaged`, with a warning)
        or made from other inputs."""
        p = self.path(case_id)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if fingerprint is not None and str(z["fingerprint"]) != fingerprint:
                    return None
                names, values = z["names"], z["values"]
                diagnostics, units = str(z["diagnostics"]), str(z["units"])
                stored = str(z["checksum"]) if "checksum" in z.files else ""
                intact = stored == _checksum(names, values, str(z["fingerprint"]), diagnostics, units)
        except Exception:  # noqa: BLE001 - an unreadable entry is recomputed, not fatal
            intact = False
        if not intact:
            self.damaged.append(case_id)
            log.warning("cache entry of case %s (%s route) is damaged or was edited (checksum mismatch): "
                        "recomputing it", case_id, self.route)
            return None
        features = dict(zip(names.tolist(), values.astype(float).tolist()))
        return CacheEntry(features, json.loads(diagnostics), json.loads(units))

    def save(self, case_id: str, features: Mapping[str, float], fingerprint: str = "",
             diagnostics: Mapping[str, Any] | None = None,
             units: Mapping[str, list[str]] | None = None) -> Path:
        """Write a case's row atomically. ``units`` (unit key -> feature names) says which parts
        of the row were computed under which part of the settings (the handcrafted route)."""
        names = np.array(list(features.keys()), dtype=str)
        values = np.array([float(v) for v in features.values()], dtype=np.float64)
        diag = json.dumps(dict(diagnostics or {}), default=str)
        unit_text = json.dumps(dict(units or {}))
        p = self.path(case_id)
        try:
            with atomic_path(p) as tmp, tmp.open("wb") as fh:
                np.savez(fh, names=names, values=values, fingerprint=np.array(fingerprint),
                         case_id=np.array(case_id), diagnostics=np.array(diag), units=np.array(unit_text),
                         checksum=np.array(_checksum(names, values, fingerprint, diag, unit_text)))
        except OSError as err:
            if not err.filename:  # say which file (a disk full, ...)
                raise OSError(err.errno, err.strerror or str(err), str(p)) from err
            raise
        return p


def _checksum(names: np.ndarray, values: np.ndarray, fingerprint: str, diagnostics: str, units: str) -> str:
    """SHA-256 of an entry's contents: names, the values' exact bytes, and the rest as text."""
    h = hashlib.sha256()
    h.update(json.dumps([str(n) for n in names.tolist()]).encode())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    for text in (fingerprint, diagnostics, units):
        h.update(b"\0" + str(text).encode())
    return h.hexdigest()


def export_csv(df: pd.DataFrame, path: Path | str, provenance: Mapping[str, Any]) -> Path:
    """Write a feature table as CSV and its provenance beside it (``<name>.provenance.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        # no float_format: pandas writes each float's shortest repr, which read_features reads back
        # bit for bit (exact ties between features survive; evaluation sees the extracted numbers)
        df.to_csv(tmp, index=True, float_format=None)
    prov = dict(provenance)
    prov.setdefault("n_cases", int(df.shape[0]))
    prov.setdefault("n_features", int(df.shape[1]))
    write_atomic(path.with_suffix(".provenance.json"),
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
    """What a feature route hands on: its table, failures, provenance, diagnostics and
    previews for the contact sheet (``(label, image)`` items; empty unless asked for)."""

    def __init__(self, route: str, features: pd.DataFrame, failures: list | None = None,
                 provenance: Mapping[str, Any] | None = None, diagnostics: pd.DataFrame | None = None,
                 previews: list | None = None):
        self.route = route
        self.features = features  # index: case_id; columns: stable feature names; floats only
        self.failures = list(failures or [])  # list[radiodeep.errors.CaseFailure]
        self.provenance = dict(provenance or {})
        self.diagnostics = diagnostics  # never fed to models
        self.previews = list(previews or [])  # [(label, 2D grey or (3, H, W) RGB array)]

    def __repr__(self) -> str:
        return (f"RouteResult({self.route!r}, {self.features.shape[0]} cases x "
                f"{self.features.shape[1]} features, {len(self.failures)} failures)")
