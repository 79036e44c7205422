"""The deep route: ROI crops through an ImageNet CNN, a hidden layer's activations as features.

Per case: read image and mask -> :func:`radiodeep.roi.prepare_case` (slice choice,
crop, intensity, channel strategy) -> crops, normalised for the backbone, go through
the network in batches that span cases -> the tapped layer's values, pooled over a
case's slices (mean or max) -> one row per case with stable column names
``<backbone>_<layer>_<tag>_<i:04d>`` (``alexnet_fc7_r_0000``); strategy ``each`` gives
three sets, tags ``r``, ``g``, ``b``.

The cohort streams: reading and cropping run in ``execution.n_jobs`` worker processes
(:func:`radiodeep.execution.map_cases`, at most ``2 * n_jobs`` cases in flight) while
this process feeds the network; only the current batch (a preallocated ``batch_size``
buffer, NHWC) and the cases it touches are held; each case is written to the per-case
cache as soon as its last crop leaves the network, so an interrupted run resumes
where it stopped.
The cache key (:func:`deep_settings`) holds everything that changes the values:
backbone, layer, activation, weights identity (sha256 of the file), channel
strategy, slice pooling and the ROI settings.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import roi
from ..config import Config
from ..errors import CaseError, CaseFailure
from ..execution import WorkerDied, map_cases
from ..imageio import read_case_images, read_image
from ..qc import network_view_items
from .backbones import (
    check_input_size,
    check_weights_file,
    feature_extractor,
    get_spec,
    load_backbone,
    normalisation_affine,
    normalisation_provenance,
    resolve_layer,
    resolve_weights,
    weights_identity,
    weights_provenance,
)
from .store import FeatureStore, RouteResult, file_fingerprint

__all__ = ["deep_settings", "extract_deep", "feature_names", "pick_device", "ROUTE"]

log = logging.getLogger(__name__)

ROUTE = "deep"
SCHEMA = 1  # bump when the way values are computed changes (invalidates every cached row)


# --------------------------------------------------------------------------- settings
def deep_settings(config: Config) -> dict[str, Any]:
    """Everything that affects the deep features' values: the cache key and its provenance.

    Batch size, device and threads are left out (they do not change the values beyond
    floating-point rounding). Raises :class:`~radiodeep.features.backbones.WeightsNotFound`
    when the weights are not on this machine.
    """
    deep = _deep_config(config)
    spec = get_spec(deep.backbone)
    tap = resolve_layer(spec, deep.layer, deep.activation)
    src = resolve_weights(deep.backbone, deep.weights, config.base_dir)
    return {
        "route": ROUTE,
        "schema": SCHEMA,
        "backbone": deep.backbone,
        "layer": deep.layer,
        "module": tap.path,
        "tap": tap.where,
        "activation": deep.activation,
        "weights": weights_identity(src),
        "normalisation": normalisation_provenance(deep.backbone),
        "channels": deep.channels,
        "slice_pooling": deep.slice_pooling,
        "roi": config.roi.model_dump(mode="json"),
        "sequences": list(config.cohort.sequences or []) if deep.channels == "sequences" else None,
        "resample_mask": config.cohort.resample_mask,
    }


def _deep_config(config: Config):
    if config.features.deep is None:
        raise ValueError("features.deep is not configured")
    return config.features.deep


def feature_names(backbone: str, layer: str, tag: str, n: int) -> list[str]:
    """Stable column names ``<backbone>_<layer>_<tag>_<i>`` (4 digits, more when n > 10000)."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", layer)  # a module path 'features.10' -> 'features-10'
    width = max(4, len(str(n - 1)))
    return [f"{backbone}_{label}_{tag}_{i:0{width}d}" for i in range(n)]


def pick_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise ValueError("features.deep.device is 'cuda' but torch sees no CUDA device on this machine; "
                         "use 'auto' or 'cpu'")
    return torch.device("cuda" if available else "cpu")


def deep_config_errors(config: Config) -> list[tuple[str, Exception]]:
    """Every problem of the deep route's settings that shows before any image is read, as
    ``(config key, exception)``: backbone, layer and activation, input size, device, and
    weights present on this machine and fitting the network (hash, keys, shapes). Empty when the route is fine."""
    deep = config.features.deep
    if deep is None:
        return []
    try:
        spec = get_spec(deep.backbone)
    except ValueError as err:
        return [("features.deep.backbone", err)]
    errors: list[tuple[str, Exception]] = []
    checks = (
        ("features.deep.layer", lambda: resolve_layer(spec, deep.layer, deep.activation)),
        ("roi.size", lambda: _check_min_size(spec, config.roi.size)),
        ("features.deep.device", lambda: pick_device(deep.device)),
        # resolved, hash-checked and read (keys and shapes against the network) before any case is
        ("features.deep.weights", lambda: check_weights_file(deep.backbone, deep.weights, config.base_dir)),
    )
    for key, check in checks:
        try:
            check()
        except (ValueError, FileNotFoundError) as err:
            errors.append((key, err))
    return errors


def check_deep_config(config: Config) -> list[str]:
    """:func:`deep_config_errors` as messages, each led by its config key."""
    return [str(err) if str(err).startswith(key) else f"{key}: {err}" for key, err in deep_config_errors(config)]


def _check_min_size(spec, size: int) -> None:
    if size < spec.min_size:
        raise ValueError(f"roi.size {size} is too small for {spec.name} (at least {spec.min_size} pixels)")


# --------------------------------------------------------------------------- per case
def _fingerprint(case) -> str:
    return f"{file_fingerprint(case.image, case.mask, *case.sequences)}:label={case.mask_label}"


def _prepare_views(case, config: Config):
    """Read one case and make its network inputs (runs in a worker process when n_jobs > 1)."""
    image, mask = read_case_images(case, config.cohort.geometry_tolerance, config.cohort.resample_mask)
    sequences = None
    if config.features.deep.channels == "sequences":
        sequences = [read_image(p, case.case_id, f"sequence {i + 1}") for i, p in enumerate(case.sequences)]
    return roi.prepare_case(image, mask, config.roi, config.features.deep.channels, case.case_id,
                            sequences=sequences)


# --------------------------------------------------------------------------- batching
@dataclass
class _Pending:
    """A case whose crops are in flight; per-tag pooled features accumulate here."""

    case_id: str
    fingerprint: str
    remaining: int
    diagnostics: dict[str, Any]
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, tag: str, row: np.ndarray, pooling: str) -> None:
        acc = self.pooled.get(tag)
        if acc is None:
            self.pooled[tag] = row.astype(np.float64, copy=True)
        elif pooling == "max":
            np.maximum(acc, row, out=acc)
        else:
            acc += row
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.remaining -= 1

    def result(self, pooling: str) -> dict[str, np.ndarray]:
        if pooling == "max":
            return self.pooled
        return {t: v / self.counts[t] for t, v in self.pooled.items()}


class _Batcher:
    """Crops go, normalised, into one preallocated buffer; a full buffer runs through the network."""

    def __init__(self, extract, normalisation: tuple[np.ndarray, np.ndarray], batch_size: int, size: int,
                 device: torch.device, pooling: str, on_case_done):
        self.extract = extract
        self.scale, self.shift = normalisation  # y = x * scale + shift, channels first
        self.device, self.pooling, self.on_case_done = device, pooling, on_case_done
        self.size = size
        # NHWC (channels_last): oneDNN's fastest convolutions on the CPU, cuDNN's on a GPU. Each
        # crop is normalised (CHW, in a cache-sized scratch array) and then written in with
        # numpy (a strided torch copy_ is ~10x slower): no pass over the whole batch is made
        nhwc = torch.empty((batch_size, size, size, 3), dtype=torch.float32, pin_memory=device.type == "cuda")
        self.slots_np = nhwc.numpy()
        self.buffer = nhwc.permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels_last
        self.scratch = np.empty((3, size, size), np.float32)
        self.slots: list[tuple[_Pending, str]] = []

    def add_case(self, pending: _Pending, views: dict[str, np.ndarray]) -> None:
        for tag, arr in views.items():
            if arr.ndim != 4 or arr.shape[1:] != (3, self.size, self.size):
                raise ValueError(f"case {pending.case_id}: view {tag!r} has shape {arr.shape}, "
                                 f"expected (n, 3, {self.size}, {self.size})")
            for crop in arr:
                np.multiply(crop, self.scale, out=self.scratch)
                self.scratch += self.shift
                np.copyto(self.slots_np[len(self.slots)], self.scratch.transpose(1, 2, 0))
                self.slots.append((pending, tag))
                if len(self.slots) == self.buffer.shape[0]:
                    self.flush()

    def flush(self) -> None:
        n = len(self.slots)
        if n == 0:
            return
        x = self.buffer[:n]
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
        feats = self.extract(x).float().cpu().numpy()
        slots, self.slots = self.slots, []
        for row, (pending, tag) in zip(feats, slots):
            pending.add(tag, row, self.pooling)
            if pending.remaining == 0:
                self.on_case_done(pending)


# --------------------------------------------------------------------------- the route
def extract_deep(cohort, config: Config, *, progress: bool = True, qc: list | None = None) -> RouteResult:
    """Deep features for every case of ``cohort``: a :class:`RouteResult` for route ``deep``.

    Cached cases (same settings, same input files) are not recomputed. A case that
    cannot be read or cropped, or whose features are not finite, becomes a
    :class:`CaseFailure` (stage ``deep``); the others go on. When ``qc`` is a list,
    ``(label, crop)`` items of :func:`~radiodeep.qc.network_view_items` (every slice; the RGB
    input for composite strategies) are appended for every case in cohort order, cached ones
    included (those are read and cropped again, not run through the network). Reading and
    cropping run in ``execution.n_jobs`` worker processes (or on Dask) while this process
    feeds the network; at most ``2 * n_jobs`` prepared cases wait at a time.
    """
    deep = _deep_config(config)
    errors = deep_config_errors(config)
    if errors:  # the first, as its own type (WeightsNotFound, ValueError); validate lists them all
        raise errors[0][1]
    settings = deep_settings(config)
    size = config.roi.size
    device = pick_device(deep.device)
    store = FeatureStore(config.cache_dir, ROUTE, settings)
    weights_prov = weights_provenance(resolve_weights(deep.backbone, deep.weights, config.base_dir))

    rows: dict[str, np.ndarray] = {}
    diags: dict[str, dict] = {}
    names: list[str] | None = None
    names_of: dict[tuple[str, int], list[str]] = {}  # built once: 4096 formatted names cost milliseconds
    failures: list[CaseFailure] = []
    qc_crops: dict[str, list[tuple[str, np.ndarray]]] = {}
    prints: dict[str, str] = {}
    cached: set[str] = set()
    todo = []
    for case in cohort.cases:
        cid = case.case_id
        prints[cid] = _fingerprint(case)
        row = store.load(cid, prints[cid])
        if row is None:
            todo.append(case)
            continue
        if names is None:
            names = list(row)
        if len(row) != len(names) or list(row) != names:
            raise RuntimeError(f"case {cid}: cached deep features in {store.dir} have other column names "
                               "than the rest; delete that folder and run again")
        rows[cid] = np.fromiter(row.values(), dtype=np.float64, count=len(names))
        diags[cid] = store.load_diagnostics(cid)
        cached.add(cid)
        if qc is not None:
            todo.append(case)  # read and cropped again for its QC image only

    def case_done(p: _Pending) -> None:
        nonlocal names
        pooled = p.result(deep.slice_pooling)
        parts, case_names = [], []
        for tag, vec in pooled.items():
            parts.append(vec)
            key = (tag, vec.size)
            if key not in names_of:
                names_of[key] = feature_names(deep.backbone, deep.layer, tag, vec.size)
            case_names += names_of[key]
        values = np.concatenate(parts)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            failures.append(CaseFailure(p.case_id, ROUTE, f"{bad} of {values.size} deep features are not "
                                                          "finite (NaN or inf)"))
            return
        store.save(p.case_id, dict(zip(case_names, values.tolist())), p.fingerprint, p.diagnostics)
        names = names or case_names
        rows[p.case_id] = values
        diags[p.case_id] = p.diagnostics

    old_threads = torch.get_num_threads()
    ex = config.execution
    batcher = None
    try:
        if deep.threads:
            torch.set_num_threads(deep.threads)
        for case, views in map_cases(partial(_prepare_views, config=config), todo, n_jobs=ex.n_jobs,
                                     backend=ex.backend, address=ex.address, progress=progress,
                                     desc="deep features"):
            cid = case.case_id
            if isinstance(views, BaseException):
                if cid in cached:
                    continue  # the row stays valid (same files, same settings): only its QC image is missing
                if isinstance(views, (CaseError, WorkerDied)):
                    failures.append(CaseFailure(cid, ROUTE, getattr(views, "reason", None) or str(views)))
                    continue
                views.add_note(f"while preparing case {cid} for the deep route")
                raise views
            if qc is not None:
                qc_crops[cid] = network_view_items(views, deep.channels)
            if cid in cached:
                continue
            if batcher is None:  # the network is loaded only when some case needs it
                model, loaded = load_backbone(deep.backbone, deep.weights, config.base_dir)
                weights_prov.update(loaded)
                check_input_size(model, deep.backbone, size)
                model.to(device=device, memory_format=torch.channels_last)  # as the batches are
                batcher = _Batcher(feature_extractor(model, deep.backbone, deep.layer, deep.activation),
                                   normalisation_affine(model, deep.backbone), deep.batch_size, size, device,
                                   deep.slice_pooling, case_done)
            n = sum(int(v.shape[0]) for v in views.views.values())
            diagnostics = {"slices": list(views.slice_indices), "notes": list(views.notes)}
            batcher.add_case(_Pending(cid, prints[cid], n, diagnostics), views.views)
        if batcher is not None:
            batcher.flush()
    finally:
        torch.set_num_threads(old_threads)

    if qc is not None:
        for c in cohort.cases:
            qc.extend(qc_crops.get(c.case_id, ()))
    tags = roi.view_tags(deep.channels)
    ids = [c.case_id for c in cohort.cases if c.case_id in rows]
    if ids:
        table = pd.DataFrame(np.vstack([rows[c] for c in ids]), index=pd.Index(ids, name="case_id"),
                             columns=names)
    else:
        table = pd.DataFrame(index=pd.Index([], name="case_id"), dtype=float)
    diagnostics = pd.DataFrame(
        {"deep_slices": [";".join(str(s) for s in diags[c].get("slices", [])) for c in ids],
         "deep_notes": ["; ".join(diags[c].get("notes", [])) for c in ids]},
        index=pd.Index(ids, name="case_id"))
    n_cached = len(cached)
    provenance = {
        **{k: v for k, v in settings.items() if k not in ("weights", "schema")},
        "weights": weights_prov,
        "features_per_tag": table.shape[1] // len(tags) if ids else None,
        "tags": list(tags),
        "batch_size": deep.batch_size,
        "device": str(device),
        "threads": deep.threads or old_threads,
        "cache": {"dir": str(store.dir), "key": store.key, "cached": n_cached, "computed": len(ids) - n_cached},
        "torch": torch.__version__,
    }
    log.info("deep features: %d cases (%d cached, %d computed, %d failed)", len(ids), n_cached,
             len(ids) - n_cached, len(failures))
    return RouteResult(ROUTE, table, failures, provenance, diagnostics)
