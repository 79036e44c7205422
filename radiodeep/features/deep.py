"""The deep route: ROI crops through an ImageNet CNN, a hidden layer's activations as features.

Per case: read image and mask -> :func:`radiodeep.roi.prepare_case` (slice choice,
crop, intensity, channel strategy) -> crops, normalised for the backbone, go through
the network in batches that span cases -> the tapped layer's values, pooled over a
case's slices (mean or max) -> one row per case with stable column names
``<backbone>_<layer>_<tag>_<i:04d>`` (``alexnet_fc7_r_0000``); strategy ``each`` gives
three sets, tags ``r``, ``g``, ``b``.

The cohort streams: only the current batch (a preallocated ``batch_size`` buffer) and
the cases it touches are held; each case is written to the per-case cache as soon as
its last crop leaves the network, so an interrupted run resumes where it stopped.
The cache key (:func:`deep_settings`) holds everything that changes the values:
backbone, layer, activation, weights identity (sha256 of the file), channel
strategy, slice pooling and the ROI settings.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from .. import roi
from ..config import Config
from ..errors import CaseError, CaseFailure
from ..imageio import read_case_images, read_image
from ..progress import progress as progress_bar
from .backbones import (
    feature_extractor,
    get_spec,
    load_backbone,
    make_normaliser,
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


# --------------------------------------------------------------------------- per case
@dataclass
class _Prepared:
    """A case on its way: views to run, or a cached row, or a failure."""

    case_id: str
    fingerprint: str
    views: Any = None  # radiodeep.roi.RoiViews
    cached: dict[str, float] | None = None
    failure: CaseFailure | None = None


def _fingerprint(case) -> str:
    return f"{file_fingerprint(case.image, case.mask, *case.sequences)}:label={case.mask_label}"


def _prepare_views(case, config: Config):
    image, mask = read_case_images(case, config.cohort.geometry_tolerance, config.cohort.resample_mask)
    sequences = None
    if config.features.deep.channels == "sequences":
        sequences = [read_image(p, case.case_id, f"sequence {i + 1}") for i, p in enumerate(case.sequences)]
    return roi.prepare_case(image, mask, config.roi, config.features.deep.channels, case.case_id,
                            sequences=sequences)


def _prepare_stream(cases: Iterable, config: Config, store: FeatureStore, want_qc: bool) -> Iterator[_Prepared]:
    for case in cases:
        cid = case.case_id
        fp = _fingerprint(case)
        cached = store.load(cid, fp)
        if cached is not None and not want_qc:
            yield _Prepared(cid, fp, cached=cached)
            continue
        try:
            views = _prepare_views(case, config)
        except CaseError as err:
            # a cached row stays valid (same files, same settings): only its QC image is missing
            failure = None if cached is not None else CaseFailure(cid, ROUTE, err.reason)
            yield _Prepared(cid, fp, cached=cached, failure=failure)
            continue
        except Exception as err:
            err.add_note(f"while preparing case {cid} for the deep route")
            raise
        yield _Prepared(cid, fp, views=views, cached=cached)


_END = object()


class _Raised:
    def __init__(self, err: BaseException):
        self.err = err


def _in_background(items: Iterator, depth: int) -> Iterator:
    """Run a generator in a thread, ``depth`` items ahead (bounded memory)."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for obj in items:
                if not put(obj):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(err))

    thread = threading.Thread(target=work, name="radiodeep-deep-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is _END:
                return
            if isinstance(obj, _Raised):
                raise obj.err
            yield obj
    finally:
        stop.set()
        thread.join(timeout=5)


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
    """Crops go into one preallocated buffer; a full buffer runs through the network."""

    def __init__(self, extract, normalise, batch_size: int, size: int, device: torch.device,
                 pooling: str, on_case_done):
        self.extract, self.normalise = extract, normalise
        self.device, self.pooling, self.on_case_done = device, pooling, on_case_done
        self.size = size
        # NHWC (channels_last): oneDNN's fastest convolutions on the CPU, cuDNN's on a GPU. Crops
        # are written into it with numpy (a strided torch copy_ is ~10x slower), so the batch
        # is never converted as a whole
        nhwc = torch.empty((batch_size, size, size, 3), dtype=torch.float32, pin_memory=device.type == "cuda")
        self.slots_np = nhwc.numpy()
        self.buffer = nhwc.permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels_last
        self.slots: list[tuple[_Pending, str]] = []

    def add_case(self, pending: _Pending, views: dict[str, np.ndarray]) -> None:
        for tag, arr in views.items():
            if arr.ndim != 4 or arr.shape[1:] != (3, self.size, self.size):
                raise ValueError(f"case {pending.case_id}: view {tag!r} has shape {arr.shape}, "
                                 f"expected (n, 3, {self.size}, {self.size})")
            for crop in arr:
                np.copyto(self.slots_np[len(self.slots)], crop.transpose(1, 2, 0))
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
        feats = self.extract(self.normalise(x)).float().cpu().numpy()
        slots, self.slots = self.slots, []
        for row, (pending, tag) in zip(feats, slots):
            pending.add(tag, row, self.pooling)
            if pending.remaining == 0:
                self.on_case_done(pending)


# --------------------------------------------------------------------------- the route
def extract_deep(cohort, config: Config, *, progress: bool = True, qc: list | None = None,
                 prefetch: int | None = None) -> RouteResult:
    """Deep features for every case of ``cohort``: a :class:`RouteResult` for route ``deep``.

    Cached cases (same settings, same input files) are not recomputed. A case that
    cannot be read or cropped, or whose features are not finite, becomes a
    :class:`CaseFailure` (stage ``deep``); the others go on. When ``qc`` is a list,
    ``(case_id, grey crop of the first slice)`` is appended for every case, cached
    ones included (those are read and cropped again, not run through the network).
    ``prefetch``: cases prepared ahead in a background thread (default: 2 on a GPU,
    0 on the CPU, where the network already uses every core).
    """
    deep = _deep_config(config)
    settings = deep_settings(config)
    spec = get_spec(deep.backbone)
    size = config.roi.size
    if size < spec.min_size:
        raise ValueError(f"roi.size {size} is too small for {deep.backbone} (at least {spec.min_size} pixels)")
    device = pick_device(deep.device)
    store = FeatureStore(config.cache_dir, ROUTE, settings)
    if prefetch is None:
        prefetch = 2 if device.type == "cuda" else 0

    old_threads = torch.get_num_threads()
    rows: dict[str, np.ndarray] = {}
    diags: dict[str, dict] = {}
    names: list[str] | None = None
    failures: list[CaseFailure] = []
    n_cached = n_computed = 0
    weights_prov = weights_provenance(resolve_weights(deep.backbone, deep.weights, config.base_dir))

    names_of: dict[tuple[str, int], list[str]] = {}  # built once: 4096 formatted names cost milliseconds

    def case_done(p: _Pending) -> None:
        nonlocal names, n_computed
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
        n_computed += 1

    try:
        if deep.threads:
            torch.set_num_threads(deep.threads)
        stream = _in_background(_prepare_stream(cohort.cases, config, store, qc is not None), prefetch)
        batcher = None
        for item in progress_bar(stream, total=len(cohort), desc="deep features", enabled=progress):
            if item.views is not None and qc is not None:
                qc.append((item.case_id, item.views.grey[0]))
            if item.failure is not None:
                failures.append(item.failure)
                continue
            if item.cached is not None:
                row_names = list(item.cached)
                if names is None:
                    names = row_names
                if row_names != names:
                    raise RuntimeError(f"case {item.case_id}: cached deep features in {store.dir} have other "
                                       "column names than the rest; delete that folder and run again")
                rows[item.case_id] = np.fromiter(item.cached.values(), dtype=np.float64, count=len(row_names))
                diags[item.case_id] = store.load_diagnostics(item.case_id)
                n_cached += 1
                continue
            if batcher is None:  # the network is loaded only when some case needs it
                model, loaded = load_backbone(deep.backbone, deep.weights, config.base_dir)
                weights_prov.update(loaded)
                _check_input_size(model, deep.backbone, size)
                model.to(device=device, memory_format=torch.channels_last)  # as the batches are
                batcher = _Batcher(feature_extractor(model, deep.backbone, deep.layer, deep.activation),
                                   make_normaliser(model, deep.backbone), deep.batch_size, size,
                                   device, deep.slice_pooling, case_done)
            views = item.views
            n = sum(int(v.shape[0]) for v in views.views.values())
            diagnostics = {"slices": list(views.slice_indices), "notes": list(views.notes)}
            batcher.add_case(_Pending(item.case_id, item.fingerprint, n, diagnostics), views.views)
        if batcher is not None:
            batcher.flush()
    finally:
        torch.set_num_threads(old_threads)

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
    provenance = {
        **{k: v for k, v in settings.items() if k not in ("weights", "schema")},
        "weights": weights_prov,
        "features_per_tag": table.shape[1] // len(tags) if ids else None,
        "tags": list(tags),
        "batch_size": deep.batch_size,
        "device": str(device),
        "threads": deep.threads or old_threads,
        "cache": {"dir": str(store.dir), "key": store.key, "cached": n_cached, "computed": n_computed},
        "torch": torch.__version__,
    }
    log.info("deep features: %d cases (%d cached, %d computed, %d failed)", len(ids), n_cached, n_computed,
             len(failures))
    return RouteResult(ROUTE, table, failures, provenance, diagnostics)


def _check_input_size(model, backbone: str, size: int) -> None:
    need = getattr(model, "image_size", None)  # MatConvNet networks: fc6 is a convolution sized for it
    if need is not None and tuple(need) != (size, size):
        raise ValueError(f"{backbone} takes {need[0]} x {need[1]} inputs (meta.normalization.imageSize); "
                         f"set roi.size: {need[0]}")
