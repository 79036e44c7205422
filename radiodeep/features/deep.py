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
The route follows :mod:`radiodeep.features.routes`: :func:`settings_from_config` makes
the frozen :class:`DeepSettings` slice once (weights located once), and that slice is
the cache key: backbone, layer, activation, weights identity (sha256 of the file),
channel strategy, slice pooling, the ROI settings and the cohort's geometry policy
(which also applies to MR sequences); batch size, device and threads are not. A case
that fails for any reason is one failure (stage ``deep``); the route goes on, as the
handcrafted route does. Contact-sheet previews come back in the result
(``context.previews``), not through a side channel.
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
from ..config import Config, RoiConfig
from ..errors import CaseFailure
from ..execution import map_cases
from ..imageio import GeometryPolicy, read_case_images, read_case_sequences
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
    weights_identity,
    weights_provenance,
    WeightsSource,
)
from .routes import RouteSettings, RunContext
from .store import FeatureStore, RouteResult, file_fingerprint

__all__ = ["DeepSettings", "settings_from_config", "config_problems", "extract", "deep_settings",
           "extract_deep", "feature_names", "pick_device", "ROUTE"]

log = logging.getLogger(__name__)

ROUTE = "deep"
SCHEMA = 2  # bump when the way values are computed changes (invalidates every cached row)


# --------------------------------------------------------------------------- settings
def _unkeyed(default=None):
    return field(default=default, metadata={"cache_key": False})


@dataclass(frozen=True)
class DeepSettings(RouteSettings):
    """The deep route's slice of the config. Every field is in the cache key except the
    runtime ones (batch size, device, threads: they do not change the values beyond
    floating-point rounding) and the resolved weights file (its identity is keyed)."""

    schema: int
    backbone: str
    layer: str
    module: str
    tap: str
    activation: str
    weights: dict  # identity: sha256 of the file, or the random-init recipe
    normalisation: dict
    channels: str
    slice_pooling: str
    roi: dict
    sequences: list | None
    geometry: GeometryPolicy
    weights_source: WeightsSource = _unkeyed()  # resolved once; read by the network loader
    batch_size: int = _unkeyed(32)
    device: str = _unkeyed("auto")
    threads: int | None = _unkeyed()
    roi_label: int = _unkeyed(1)  # each case's label is in its fingerprint (a manifest column may choose)
    label_source: str = _unkeyed("default")

    @property
    def roi_config(self) -> RoiConfig:
        return RoiConfig.model_validate(self.roi)


def settings_from_config(config: Config) -> DeepSettings:
    """The deep route's settings, weights located once. Raises the first settings problem
    (:func:`config_problems` lists them all) as its own type (``WeightsNotFound``, ``ValueError``)."""
    deep = _deep_config(config)
    resolved: dict[str, Any] = {}
    errors = deep_config_errors(config, resolved)
    if errors:
        raise errors[0][1]
    tap, src = resolved["tap"], resolved["weights"]  # located once, here
    return DeepSettings(
        schema=SCHEMA, backbone=deep.backbone, layer=deep.layer, module=tap.path, tap=tap.where,
        activation=deep.activation, weights=weights_identity(src),
        normalisation=normalisation_provenance(deep.backbone), channels=deep.channels,
        slice_pooling=deep.slice_pooling, roi=config.roi.model_dump(mode="json"),
        sequences=list(config.cohort.sequences or []) if deep.channels == "sequences" else None,
        geometry=GeometryPolicy.of(config.cohort), weights_source=src, batch_size=deep.batch_size,
        device=deep.device, threads=deep.threads, roi_label=config.roi_label()[0],
        label_source=config.roi_label()[1])


def deep_settings(config: Config) -> dict[str, Any]:
    """The deep route's cache key as data (:meth:`DeepSettings.key_dict`)."""
    return settings_from_config(config).key_dict()


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


def deep_config_errors(config: Config, resolved: dict | None = None) -> list[tuple[str, Exception]]:
    """Every problem of the deep route's settings that shows before any image is read, as
    ``(config key, exception)``: backbone, layer and activation, input size, device, and
    weights present on this machine and fitting the network (hash, keys, shapes: the file is read).
    Empty when the route is fine.
    ``resolved``, when given, receives what the checks resolved (``tap``, ``weights``)."""
    resolved = {} if resolved is None else resolved
    deep = config.features.deep
    if deep is None:
        return []
    try:
        spec = get_spec(deep.backbone)
    except ValueError as err:
        return [("features.deep.backbone", err)]
    errors: list[tuple[str, Exception]] = []
    checks = (
        ("tap", "features.deep.layer", lambda: resolve_layer(spec, deep.layer, deep.activation)),
        ("", "roi.size", lambda: _check_min_size(spec, config.roi.size)),
        ("", "features.deep.device", lambda: pick_device(deep.device)),
        # resolved, hash-checked and read (keys and shapes against the network) before any case is
        ("weights", "features.deep.weights", lambda: check_weights_file(deep.backbone, deep.weights, config.base_dir)),
    )
    for name, key, check in checks:
        try:
            value = check()
            if name:
                resolved[name] = value
        except (ValueError, FileNotFoundError) as err:
            errors.append((key, err))
    return errors


def config_problems(config: Config) -> list[str]:
    """Every problem of the deep route's settings, as messages (the route interface)."""
    return check_deep_config(config)


def check_deep_config(config: Config) -> list[str]:
    """:func:`deep_config_errors` as messages, each led by its config key."""
    return [str(err) if str(err).startswith(key) else f"{key}: {err}" for key, err in deep_config_errors(config)]


def _check_min_size(spec, size: int) -> None:
    if size < spec.min_size:
        raise ValueError(f"roi.size {size} is too small for {spec.name} (at least {spec.min_size} pixels)")


# --------------------------------------------------------------------------- per case
def _fingerprint(case) -> str:
    roi = f":roi={case.roi_name}" if getattr(case, "roi_name", None) else ""  # RTSTRUCT/SEG structure
    return f"{file_fingerprint(case.image, case.mask, *case.sequences)}:label={case.mask_label}{roi}"


def _prepare_views(case, settings: DeepSettings):
    """Read one case and make its network inputs (runs in a worker process when n_jobs > 1).
    Image, mask and sequences follow the cohort's one geometry policy."""
    geo = settings.geometry
    image, mask = read_case_images(case, geo.tolerance, geo.resample_mask)
    sequences = read_case_sequences(case, image, geo.tolerance) if settings.channels == "sequences" else None
    return roi.prepare_case(image, mask, settings.roi_config, settings.channels, case.case_id,
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
def extract_deep(cohort, config: Config, *, progress: bool = True, previews: bool = False) -> RouteResult:
    """:func:`extract` with the settings and run context taken from ``config``."""
    return extract(cohort, settings_from_config(config),
                   RunContext.from_config(config, progress=progress, previews=previews))


def extract(cohort, settings: DeepSettings, context: RunContext) -> RouteResult:
    """Deep features for every case of ``cohort``: a :class:`RouteResult` for route ``deep``.

    Cached cases (same settings, same input files, intact checksum) are not recomputed. A
    case that cannot be read or cropped, fails for any other reason, or whose features are
    not finite becomes a :class:`CaseFailure` (stage ``deep``); the others go on. With
    ``context.previews``, the result's ``previews`` hold ``(label, crop)`` items of
    :func:`~radiodeep.qc.network_view_items` (every slice; the RGB input for composite
    strategies) for every case in cohort order, cached ones included (those are read and
    cropped again, not run through the network). Reading and cropping run in
    ``context.n_jobs`` worker processes (or on Dask) while this process feeds the network;
    at most ``2 * n_jobs`` prepared cases wait at a time.
    """
    size = settings.roi["size"]
    device = pick_device(settings.device)
    store = FeatureStore(context.cache_dir, ROUTE, settings.key_dict())
    weights_prov = weights_provenance(settings.weights_source)
    want_previews = context.previews

    rows: dict[str, np.ndarray] = {}
    diags: dict[str, dict] = {}
    names: list[str] | None = None
    names_of: dict[tuple[str, int], list[str]] = {}  # built once: 4096 formatted names cost milliseconds
    failures: list[CaseFailure] = []
    preview_items: dict[str, list[tuple[str, np.ndarray]]] = {}
    prints: dict[str, str] = {}
    cached: set[str] = set()
    todo = []
    for case in cohort.cases:
        cid = case.case_id
        prints[cid] = _fingerprint(case)
        entry = store.load_entry(cid, prints[cid])
        if entry is None:
            todo.append(case)
            continue
        row = entry.features
        if names is None:
            names = list(row)
        if len(row) != len(names) or list(row) != names:
            raise RuntimeError(f"case {cid}: cached deep features in {store.dir} have other column names "
                               "than the rest; delete that folder and run again")
        rows[cid] = np.fromiter(row.values(), dtype=np.float64, count=len(names))
        diags[cid] = entry.diagnostics
        cached.add(cid)
        if want_previews:
            todo.append(case)  # read and cropped again for its preview only
    if store.damaged:
        log.warning("deep: %d damaged cache entr%s recomputed: %s", len(store.damaged),
                    "y" if len(store.damaged) == 1 else "ies", ", ".join(store.damaged))

    def case_done(p: _Pending) -> None:
        nonlocal names
        pooled = p.result(settings.slice_pooling)
        parts, case_names = [], []
        for tag, vec in pooled.items():
            parts.append(vec)
            key = (tag, vec.size)
            if key not in names_of:
                names_of[key] = feature_names(settings.backbone, settings.layer, tag, vec.size)
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
    batcher = None
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        for case, views in map_cases(partial(_prepare_views, settings=settings), todo, n_jobs=context.n_jobs,
                                     backend=context.backend, address=context.address,
                                     progress=context.progress, desc="deep features"):
            cid = case.case_id
            if isinstance(views, BaseException):
                if cid in cached:
                    continue  # the row stays valid (same files, same settings): only its preview is missing
                # one policy for every route: a case that fails, for whatever reason, fails alone
                reason = getattr(views, "reason", None) or CaseFailure.from_error(views, cid, ROUTE).reason
                failures.append(CaseFailure(cid, ROUTE, reason))
                continue
            if want_previews:
                preview_items[cid] = network_view_items(views, settings.channels)
            if cid in cached:
                continue
            if batcher is None:  # the network is loaded only when some case needs it
                model, loaded = load_backbone(settings.backbone, settings.weights_source)
                weights_prov.update(loaded)
                check_input_size(model, settings.backbone, size)
                model.to(device=device, memory_format=torch.channels_last)  # as the batches are
                batcher = _Batcher(feature_extractor(model, settings.backbone, settings.layer,
                                                     settings.activation),
                                   normalisation_affine(model, settings.backbone), settings.batch_size, size,
                                   device, settings.slice_pooling, case_done)
            n = sum(int(v.shape[0]) for v in views.views.values())
            diagnostics = {"slices": list(views.slice_indices), "notes": list(views.notes)}
            try:
                batcher.add_case(_Pending(cid, prints[cid], n, diagnostics), views.views)
            except ValueError as err:  # a view of the wrong shape: this case only
                failures.append(CaseFailure(cid, ROUTE, str(err)))
        if batcher is not None:
            batcher.flush()
    finally:
        torch.set_num_threads(old_threads)

    previews = [item for c in cohort.cases for item in preview_items.get(c.case_id, ())]
    tags = roi.view_tags(settings.channels)
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
    rank = {c.case_id: i for i, c in enumerate(cohort.cases)}
    failures.sort(key=lambda f: rank.get(f.case_id, len(rank)))
    n_cached = len(cached)
    key = settings.key_dict()
    provenance = {
        "route": ROUTE,
        **{k: v for k, v in key.items() if k not in ("weights", "schema", "route")},
        "resample_mask": settings.geometry.resample_mask,
        "roi_label": {"label": settings.roi_label, "source": settings.label_source,
                      "cases_with_own_label": {c.case_id: c.mask_label for c in cohort.cases
                                               if c.mask_label != settings.roi_label}},
        "weights": weights_prov,
        "features_per_tag": table.shape[1] // len(tags) if ids else None,
        "tags": list(tags),
        "batch_size": settings.batch_size,
        "device": str(device),
        "threads": settings.threads or old_threads,
        "cache": {"dir": str(store.dir), "key": store.key, "cached": n_cached, "computed": len(ids) - n_cached,
                  "damaged": len(store.damaged)},
        "torch": torch.__version__,
    }
    log.info("deep features: %d cases (%d cached, %d computed, %d failed)", len(ids), n_cached,
             len(ids) - n_cached, len(failures))
    return RouteResult(ROUTE, table, failures, provenance, diagnostics, previews=previews)
