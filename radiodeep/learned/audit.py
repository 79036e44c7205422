"""The per-fold audit: which tensors trained a fold's network, and proof the held-out ones did not.

At ``fit`` the estimator records each training tensor's SHA-256 (of its float32 bytes and shape)
and, where it can tell, its case id. When it scores held-out cases it compares each held-out
tensor with every training tensor:

* **exact copies**: the same hash;
* **near copies**: a training tensor equal, up to an affine intensity map (``a * x + b``, e.g. a
  normalisation fitted on the whole cohort), to the held-out tensor or to one of its seven
  flips / 90-degree rotations (Pearson correlation >= ``NEAR_COPY_CORR``), which is what
  augmenting before the split leaves in a training fold;
* **case ids**: a held-out case id among the training ids.

Rotations by other angles are not searched: the estimator makes them inside ``fit`` from
training rows only, which the record states. The audit is written as JSON
(``audit/<experiment>/heldout_<case>.json`` in the run's output folder); a finding is logged
as an error naming the cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_atomic

__all__ = ["tensor_hash", "tensor_hashes", "dihedral", "find_copies", "fold_audit", "write_audit",
           "NEAR_COPY_CORR"]

log = logging.getLogger(__name__)

NEAR_COPY_CORR = 0.999


def tensor_hash(t: np.ndarray) -> str:
    """SHA-256 of a tensor's float32 bytes and shape (the same values always give the same hash)."""
    a = np.ascontiguousarray(t, dtype=np.float32)
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def tensor_hashes(x: np.ndarray) -> list[str]:
    return [tensor_hash(t) for t in x]


def dihedral(t: np.ndarray) -> np.ndarray:
    """The eight flips / 90-degree rotations of a (C, H, W) tensor, (8, C, H, W) (square images)."""
    out = []
    for k in range(4):
        r = np.rot90(t, k, axes=(-2, -1))
        out += [r, r[..., ::-1]]
    return np.stack([np.ascontiguousarray(o) for o in out])


def _zrows(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    sd = np.sqrt((a * a).mean(axis=1, keepdims=True))
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)


def find_copies(train: np.ndarray, test: np.ndarray, threshold: float = NEAR_COPY_CORR
                ) -> list[tuple[int, int, float]]:
    """``(test row, train row, correlation)`` for every training tensor that is a near copy
    (see the module docstring) of a test tensor; tensors are (N, C, H, W)."""
    zt = _zrows(train)
    found = []
    for i, t in enumerate(test):
        views = dihedral(t) if t.shape[-1] == t.shape[-2] else t[None]
        corr = zt @ _zrows(views).T / zt.shape[1]  # (n_train, n_views)
        best = np.abs(corr).max(axis=1)
        for j in np.flatnonzero(best >= threshold):
            found.append((i, int(j), float(best[j])))
    return found


def fold_audit(train_x: np.ndarray, train_ids: Sequence[str | None], train_hashes: Sequence[str],
               test_x: np.ndarray, test_ids: Sequence[str | None], *, augment: dict | None,
               n_training_images: int) -> dict[str, Any]:
    """The audit record of one fold (see the module docstring); ``leak`` is True on any finding."""
    test_hashes = tensor_hashes(test_x)
    where = {h: j for j, h in enumerate(train_hashes)}
    exact = [{"heldout": test_ids[i], "training_row": where[h], "training_case": train_ids[where[h]]}
             for i, h in enumerate(test_hashes) if h in where]
    near = [{"heldout": test_ids[i], "training_row": j, "training_case": train_ids[j], "correlation": round(c, 6)}
            for i, j, c in find_copies(train_x, test_x)]
    known = {c for c in train_ids if c is not None}
    shared = sorted({c for c in test_ids if c is not None and c in known})
    leak = bool(exact or near or shared)
    return {
        "heldout_cases": list(test_ids),
        "heldout_sha256": test_hashes,
        "training_cases": list(train_ids),
        "training_sha256": list(train_hashes),
        "n_training_tensors": len(train_hashes),
        "n_training_images": int(n_training_images),
        "augmentation": augment,
        "checks": {"same_case_id": shared, "exact_copies": exact, "near_copies": near,
                   "near_copy_threshold": NEAR_COPY_CORR,
                   "searched": "identical bytes; a*x+b of the held-out tensor and of its flips and "
                               "90-degree rotations"},
        "leak": leak,
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(name))[:80]


def write_audit(record: dict, folder: Path | str, experiment: str | None) -> Path:
    """Write ``record`` to ``folder/<experiment>/heldout_<first case>[_+n].json`` (atomically)."""
    ids = [str(c) for c in record["heldout_cases"]]
    label = ids[0] if len(ids) == 1 else f"{ids[0]}_+{len(ids) - 1}_{hashlib.sha1('|'.join(ids).encode()).hexdigest()[:8]}"
    d = Path(folder) / _safe(experiment or "experiment")
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"heldout_{_safe(label)}.json"
    write_atomic(path, json.dumps({"experiment": experiment, **record}, indent=1, default=str))
    if record["leak"]:
        log.error("audit of experiment %s: held-out case(s) %s reached training (%s); see %s",
                  experiment, ids, {k: v for k, v in record["checks"].items() if isinstance(v, list) and v}, path)
    return path
