"""The deep route: ROI crops through an ImageNet CNN, a hidden layer's activations as features.

Per case: read image and mask -> :func:`radiodeep.roi.prepare_case` (slice choice,
crop, intensity, channel strategy) -> crops, normalised for the backbone, go through
the network in batches of that case's crops alone -> the tapped layer's values, pooled over a
case's slices (mean or max) -> one row per case with stable column names
``<backbone>_<layer>_<tag>_<i:04d>`` (``alexnet_fc7_r_0000``); strategy ``each`` gives
three sets, tags ``r``, ``g``, ``b``. A case's values depend on its own crops, the settings,
the threads and the device only: not on the other cases of the run, the cache or the order in
which cases finish.

The cohort streams: locally, reading and cropping run in ``execution.n_jobs`` worker
processes (:func:`radiodeep.execution.map_cases`, at most ``2 * n_jobs`` cases in flight)
while this process feeds the network; on Dask (``execution.backend: dask``) each worker
runs its cases through its own copy of the network, loaded once per worker (its GPU with
``device: auto`` when it has one) and sends back only the pooled features. Each case is
written to the per-case cache as soon as it is done, so an interrupted run resumes where it
stopped.
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
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .. import roi
from ..config import Config, RoiConfig
from ..errors import CaseFailure
from ..execution import map_cases
from ..imageio import GeometryPolicy, read_case_images, read_case_sequences
from ..qc import network_view_items, sheet_cases
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
        # on Dask the network runs on the workers: their GPUs count, not this machine's
        ("", "features.deep.device", lambda: None if config.execution.backend == "dask" else pick_device(deep.device)),
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


# --------------------------------------------------------------------------- the network
class _Network:
    """The backbone cut at the tapped layer, and one preallocated input buffer.

    A case's crops go through it in batches of their own (at most ``batch_size`` crops, never
    mixed with another case's): a case's features then depend on its crops, the settings, the
    threads and the device only, not on which other cases ran beside it, were cached, or
    finished first (convolution and matrix kernels sum in an order that depends on the batch's
    size: mixed batches made a case's last bits depend on its neighbours). On the CPU this
    costs nothing for EfficientNet (a single crop runs faster per crop than a batch of 32).
    """

    def __init__(self, settings: DeepSettings, device: torch.device, source: WeightsSource | None = None):
        model, self.loaded = load_backbone(settings.backbone, source or settings.weights_source)
        size = settings.roi["size"]
        check_input_size(model, settings.backbone, size)
        model.to(device=device, memory_format=torch.channels_last)  # as the batches are
        self.extract = feature_extractor(model, settings.backbone, settings.layer, settings.activation)
        self.scale, self.shift = normalisation_affine(model, settings.backbone)  # y = x*scale + shift
        self.device, self.size, self.pooling = device, size, settings.slice_pooling
        # NHWC (channels_last): oneDNN's fastest convolutions on the CPU, cuDNN's on a GPU. Each
        # crop is normalised (CHW, in a cache-sized scratch array) and then written in with
        # numpy (a strided torch copy_ is ~10x slower): no pass over the whole batch is made
        nhwc = torch.empty((settings.batch_size, size, size, 3), dtype=torch.float32,
                           pin_memory=device.type == "cuda")
        self.slots_np = nhwc.numpy()
        self.buffer = nhwc.permute(0, 3, 1, 2)  # (N, 3, H, W) view, channels_last
        self.scratch = np.empty((3, size, size), np.float32)
        self.lock = threading.Lock()  # one forward pass at a time (the layer tap is the model's)

    def _run(self, n: int) -> np.ndarray:
        x = self.buffer[:n]
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
        return self.extract(x).float().cpu().numpy()

    def case_features(self, case_id: str, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pooled features per view tag (float64): mean or max over the case's slices."""
        for tag, arr in views.items():
            if arr.ndim != 4 or arr.shape[1:] != (3, self.size, self.size) or arr.shape[0] == 0:
                raise ValueError(f"case {case_id}: view {tag!r} has shape {arr.shape}, "
                                 f"expected (n, 3, {self.size}, {self.size})")
        pooled: dict[str, np.ndarray] = {}
        with self.lock:
            for tag, arr in views.items():
                acc = None
                for start in range(0, arr.shape[0], self.buffer.shape[0]):
                    part = arr[start:start + self.buffer.shape[0]]
                    for i, crop in enumerate(part):
                        np.multiply(crop, self.scale, out=self.scratch)
                        self.scratch += self.shift
                        np.copyto(self.slots_np[i], self.scratch.transpose(1, 2, 0))
                    for row in self._run(len(part)):
                        if acc is None:
                            acc = row.astype(np.float64, copy=True)
                        elif self.pooling == "max":
                            np.maximum(acc, row, out=acc)
                        else:
                            acc += row
                pooled[tag] = acc if self.pooling == "max" else acc / arr.shape[0]
        return pooled


# --------------------------------------------------------------------------- on a Dask worker
@dataclass
class _CaseOut:
    """One prepared case after the network, on either backend (what a Dask worker sends back):
    pooled features (None when the case was only cropped again for its preview, or failed in the
    network: ``error``), its contact-sheet tiles (previews only, made where the case was cropped:
    not the full crops), where the network ran and its weights' provenance."""

    pooled: dict[str, np.ndarray] | None
    slices: tuple[int, ...]
    notes: list[str]
    preview: list | None = None
    device: str | None = None
    threads: int | None = None
    loaded: dict | None = None
    error: str | None = None


#: this worker process's networks for one set of settings: one per task thread on the CPU (threads
#: run their forward passes side by side), one per process on a GPU (passes take turns)
_networks: dict[tuple, _Network] = {}
_networks_lock = threading.Lock()


def _prepared(case_id: str, views, settings: DeepSettings, previews: frozenset | set) -> _CaseOut:
    """A case's result before the network: its slices, notes and (when on the sheet) tiles."""
    return _CaseOut(None, tuple(views.slice_indices), list(views.notes),
                    preview=network_view_items(views, settings.channels) if case_id in previews else None)


def _through_network(out: _CaseOut, net: "_Network | Callable[[], _Network]", case_id: str, views) -> _CaseOut:
    """Run a prepared case through ``net`` (or the network that callable gives): ``out`` gets the
    pooled features, device, threads and weights, or the reason it failed (this case alone)."""
    try:
        net = net if isinstance(net, _Network) else net()
        out.threads = torch.get_num_threads()
        out.pooled = net.case_features(case_id, views.views)
        out.device, out.loaded = str(net.device), dict(net.loaded)
    except Exception as err:  # noqa: BLE001 - this case fails; its preview still shows
        out.error = CaseFailure.from_error(err, case_id, ROUTE).reason
    return out


def _worker_network(settings: DeepSettings) -> _Network:
    """This thread's (CPU) or process's (GPU) network for ``settings``, loaded once (networks of
    other settings are dropped). The file must be the one the
    client keyed: a worker that sees another file under the same path fails its cases instead of
    computing other features. Installed or hub-cache weights that are not at the client's path (a
    worker's own virtual environment or ``TORCH_HOME``) are looked up again here, by name, then
    checked the same way."""
    device = pick_device(settings.device)  # "auto": this worker's GPU when it has one
    sig = (settings.backbone, settings.layer, settings.activation, repr(settings.weights),
           str(getattr(settings.weights_source, "path", None)), settings.roi["size"],
           settings.slice_pooling, settings.batch_size, str(device))
    key = (sig, threading.get_ident() if device.type == "cpu" else None)
    with _networks_lock:
        net = _networks.get(key)
        if net is not None:
            return net
        src = settings.weights_source
        if src.kind in ("packaged", "torchvision") and src.path is not None and not Path(src.path).is_file():
            src = resolve_weights(settings.backbone, src.name)
        here = weights_identity(src)
        if here != settings.weights:
            raise RuntimeError(f"the weights this worker reads ({here}) are not those of the client "
                               f"({settings.weights}): the workers must see the same files")
        if any(k[0] != sig for k in _networks):
            _networks.clear()
        net = _networks[key] = _Network(settings, device, src)
        return net


def _case_on_worker(case, settings: DeepSettings, cached: frozenset = frozenset(),
                    previews: frozenset = frozenset()) -> _CaseOut:
    """One case on a Dask worker: read, crop and run through the network there (its GPU, if it
    has one); only the pooled features (and the tiles, for previews) travel back. A case that
    cannot be read raises; one that fails in the network comes back with ``error`` and its tiles."""
    views = _prepare_views(case, settings)
    out = _prepared(case.case_id, views, settings, previews)
    if case.case_id in cached:
        return out
    old = torch.get_num_threads()
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        return _through_network(out, partial(_worker_network, settings), case.case_id, views)
    finally:
        torch.set_num_threads(old)


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
    strategies) for the contact sheet's cases (all, or :data:`~radiodeep.qc.SHEET_MAX_CASES` evenly
    spread over a larger cohort: :func:`~radiodeep.qc.sheet_cases`) in cohort order, cached ones
    included (those are read and cropped again, not run through the network). Reading and cropping run in
    ``context.n_jobs`` worker processes while this process feeds the network (at most
    ``2 * n_jobs`` prepared cases wait at a time); on Dask the workers run the network too.
    """
    remote = context.backend == "dask"  # the network runs on the workers
    device = None if remote else pick_device(settings.device)
    store = FeatureStore(context.cache_dir, ROUTE, settings.key_dict())
    weights_prov = weights_provenance(settings.weights_source)
    # the contact sheet's cases: all, or an even spread of a large cohort (qc.SHEET_MAX_CASES)
    sheet = set(sheet_cases([c.case_id for c in cohort.cases])) if context.previews else set()
    if context.previews and len(sheet) < len(cohort.cases):
        log.info("contact sheet: %d of the %d cases, evenly spread over the cohort", len(sheet), len(cohort.cases))

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
        if cid in sheet:
            todo.append(case)  # read and cropped again for its preview only
    if store.damaged:
        log.warning("deep: %d damaged cache entr%s recomputed: %s", len(store.damaged),
                    "y" if len(store.damaged) == 1 else "ies", ", ".join(store.damaged))

    def case_done(cid: str, pooled: dict[str, np.ndarray], diagnostics: dict) -> None:
        nonlocal names
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
            failures.append(CaseFailure(cid, ROUTE, f"{bad} of {values.size} deep features are not "
                                                    "finite (NaN or inf)"))
            return
        store.save(cid, dict(zip(case_names, values.tolist())), prints[cid], diagnostics)
        names = names or case_names
        rows[cid] = values
        diags[cid] = diagnostics

    # locally, workers read and crop while this process runs the network; on Dask, each worker
    # runs its cases through its own copy of the network (its GPU, if it has one)
    if remote:
        func = partial(_case_on_worker, settings=settings, cached=frozenset(cached), previews=frozenset(sheet))
    else:
        func = partial(_prepare_views, settings=settings)
    ran_on: dict[str, int] = {}  # device -> cases
    threads_used: set[int] = set()
    old_threads = torch.get_num_threads()
    net = None
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        for case, out in map_cases(func, todo, n_jobs=context.n_jobs, backend=context.backend,
                                   address=context.address, progress=context.progress, desc="deep features"):
            cid = case.case_id
            if isinstance(out, BaseException):
                if cid in cached:
                    continue  # the row stays valid (same files, same settings): only its preview is missing
                # one policy for every route: a case that fails, for whatever reason, fails alone
                reason = getattr(out, "reason", None) or CaseFailure.from_error(out, cid, ROUTE).reason
                failures.append(CaseFailure(cid, ROUTE, reason))
                continue
            if not remote:  # prepared in a worker process: the network runs here
                views, out = out, _prepared(cid, out, settings, sheet)
                if cid not in cached:
                    if net is None:  # the network is loaded only when some case needs it
                        net = _Network(settings, device)
                        weights_prov.update(net.loaded)
                    _through_network(out, net, cid, views)
            if cid in sheet:
                preview_items[cid] = out.preview
            if cid in cached:
                continue
            if out.error:
                failures.append(CaseFailure(cid, ROUTE, out.error))
                continue
            if not ran_on:  # the (first worker's) view of the weights: path, loader details
                weights_prov.update(out.loaded)
            threads_used.add(out.threads)
            ran_on[out.device] = ran_on.get(out.device, 0) + 1
            case_done(cid, out.pooled, {"slices": list(out.slices), "notes": list(out.notes)})
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
        "device": ", ".join(sorted(ran_on)) if ran_on else str(device or settings.device),
        "network_ran": {"where": "dask workers" if remote else "this process", "cases_per_device": ran_on},
        "threads": (min(threads_used) if len(threads_used) == 1 else sorted(threads_used)) if threads_used
        else (settings.threads or old_threads),
        **({"contact_sheet": {"cases": len(sheet), "of": len(cohort.cases)}} if context.previews else {}),
        "cache": {"dir": str(store.dir), "key": store.key, "cached": n_cached, "computed": len(ids) - n_cached,
                  "damaged": len(store.damaged)},
        "torch": torch.__version__,
    }
    log.info("deep features: %d cases (%d cached, %d computed, %d failed)", len(ids), n_cached,
             len(ids) - n_cached, len(failures))
    return RouteResult(ROUTE, table, failures, provenance, diagnostics, previews=previews)
