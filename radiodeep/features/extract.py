"""A plain deep-feature extractor: one row per image, no labels, no study.

:func:`extract_deep_features` (and ``radiodeep extract-deep``) takes a folder of images or
a manifest CSV and writes one row per image:

* PNG/JPEG pictures go to the network as they are, apart from a resize to the
  backbone's input size (bilinear, antialiased) and its input normalisation, so
  ``layer="logits"`` on a photograph gives the ImageNet class scores, columns in
  class-index order (``efficientnet_lite0_logits_rgb_0000`` .. ``_0999``);
* medical volumes with a mask (manifest columns ``case_id, image, mask``) go through the
  ROI stage and the deep route exactly as in a study (:func:`radiodeep.features.deep.extract_deep`,
  same cache), with the ROI settings given as ``roi`` (a dict of the config's ``roi`` section).

Both reuse the deep route's backbones, layer taps, normalisation and per-case cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from .backbones import feature_extractor, load_backbone, native_size, normalisation_affine, resolve_layer, get_spec
from .store import FeatureStore, file_fingerprint

__all__ = ["extract_deep_features", "photo_features", "read_photo", "PHOTO_SUFFIXES"]

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
PHOTO_ROUTE = "deep_photos"


def read_photo(path: Path | str, size: int) -> np.ndarray:
    """An RGB picture as ``(3, size, size)`` float32 in [0, 1] (grey copied to R, G, B; alpha dropped)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)  # Pillow antialiases when shrinking
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _photo_id(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def photo_features(paths: Iterable[Path | str], *, backbone: str = "efficientnet_lite0", layer: str = "penultimate",
                   activation: str = "post_relu", weights: str | Path | None = "IMAGENET1K_V1",
                   size: int | None = None, batch_size: int = 32, ids: Iterable[str] | None = None,
                   cache_dir: Path | str | None = None, base_dir: Path | str | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any], list[tuple[str, str]]]:
    """Features of pictures: ``(table, provenance, failures)``; rows indexed by ``ids`` (the paths by default).

    ``size`` defaults to the backbone's own input size (224 for EfficientNet-Lite0).
    An unreadable picture is a failure ``(id, reason)``; the others go on.
    """
    from .deep import feature_names

    paths = [Path(p) for p in paths]
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    spec = get_spec(backbone)
    tap = resolve_layer(spec, layer, activation)
    size = size or native_size(backbone)
    model, wprov = load_backbone(backbone, weights, base_dir)
    settings = {"route": PHOTO_ROUTE, "schema": 1, "backbone": backbone, "layer": layer, "module": tap.path,
                "activation": activation, "size": size, "resize": "bilinear-antialiased",
                "weights": {k: wprov.get(k) for k in ("kind", "file", "sha256", "seed", "torch")}}
    store = FeatureStore(cache_dir, PHOTO_ROUTE, settings) if cache_dir is not None else None
    extract = feature_extractor(model, backbone, layer, activation)
    scale, shift = (torch.from_numpy(a) for a in normalisation_affine(model, backbone))
    rows: dict[str, np.ndarray] = {}
    failures: list[tuple[str, str]] = []
    names: list[str] | None = None
    todo: list[tuple[str, np.ndarray]] = []

    def flush():
        nonlocal names
        if not todo:
            return
        x = torch.from_numpy(np.stack([a for _, a in todo])).mul_(scale).add_(shift)
        feats = extract(x).double().numpy()
        if names is None:
            names = feature_names(backbone, layer, "rgb", feats.shape[1])
        for (pid, _), row in zip(todo, feats):
            rows[pid] = row
            if store is not None:
                store.save(pid, dict(zip(names, row.tolist())), prints[pid])
        todo.clear()

    prints = {}
    for pid, p in zip(ids, paths):
        if store is not None:
            prints[pid] = file_fingerprint(p) if p.is_file() else ""
            cached = store.load(pid, prints[pid])
            if cached is not None:
                names = names or list(cached)
                rows[pid] = np.fromiter(cached.values(), dtype=np.float64, count=len(cached))
                continue
        try:
            todo.append((pid, read_photo(p, size)))
        except ValueError as err:
            failures.append((pid, str(err)))
            continue
        if len(todo) == batch_size:
            flush()
    flush()
    done = [i for i in ids if i in rows]
    table = pd.DataFrame(np.vstack([rows[i] for i in done]) if done else np.empty((0, 0)),
                         index=pd.Index(done, name="case_id"), columns=names if done else None)
    prov = {**settings, "weights": wprov, "normalisation": _norm(backbone), "torch": torch.__version__}
    return table, prov, failures


def _norm(backbone: str) -> dict:
    from .backbones import normalisation_provenance

    return normalisation_provenance(backbone)


def _read_manifest(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    if "image" not in df.columns:
        raise ValueError(f"manifest {path}: needs a column 'image' (and 'mask' for volumes); found {list(df.columns)}")
    if "case_id" not in df.columns:
        df["case_id"] = [Path(p).name for p in df["image"]]
    if "mask" not in df.columns:
        df["mask"] = ""
    dupes = sorted(set(df.case_id[df.case_id.duplicated()]))
    if dupes:
        raise ValueError(f"manifest {path}: repeated case_id(s) {dupes[:5]}")
    return df


def _is_photo(p: str | Path) -> bool:
    return str(p).lower().endswith(PHOTO_SUFFIXES)


def extract_deep_features(inputs: Path | str, *, backbone: str = "efficientnet_lite0", layer: str = "penultimate",
                          activation: str = "post_relu", weights: str | Path | None = "IMAGENET1K_V1",
                          out: Path | str | None = None, roi: dict | None = None, channels: str = "r",
                          batch_size: int = 32, size: int | None = None, cache_dir: Path | str | None = None,
                          n_jobs: int = 1, progress: bool = False) -> pd.DataFrame:
    """Deep features of every image in a folder (PNG/JPEG) or a manifest CSV, one row per image.

    A manifest has a column ``image`` and optionally ``case_id`` and ``mask``; a row with a mask is a
    medical volume and goes through the ROI stage (``roi``: the config's ``roi`` section as a dict,
    ``channels``: the channel strategy) and the deep route as in a study; a row without a mask must be
    a PNG/JPEG picture. ``out``: write the table as CSV (``case_id`` first) and its provenance beside it.
    Failed images are logged with the reason and left out. Returns the table.
    """
    from .store import export_csv

    inputs = Path(inputs)
    out = Path(out) if out is not None else None
    if cache_dir is None and out is not None:
        cache_dir = out.parent / "cache"
    if inputs.is_dir():
        files = sorted(p for p in inputs.rglob("*") if p.is_file() and _is_photo(p))
        if not files:
            raise ValueError(f"no PNG/JPEG pictures in {inputs}; volumes need masks: give a manifest CSV with "
                             "columns case_id, image, mask")
        df = pd.DataFrame({"case_id": [_photo_id(p, inputs) for p in files], "image": [str(p) for p in files],
                           "mask": ""})
        base = inputs
    elif inputs.is_file():
        df = _read_manifest(inputs)
        base = inputs.parent
    else:
        raise FileNotFoundError(f"no such folder or manifest: {inputs}")
    resolve = (lambda p: Path(p) if Path(p).is_absolute() else base / p)
    photos = df[df["mask"] == ""]
    bad = [p for p in photos["image"] if not _is_photo(p)]
    if bad:
        raise ValueError(f"{inputs}: {len(bad)} image(s) without a mask are not PNG/JPEG pictures, e.g. {bad[0]}; "
                         "a medical volume needs a mask (manifest column 'mask') to go through the ROI stage")
    tables, provs, failures = [], {}, []
    if len(photos):
        t, prov, fails = photo_features([resolve(p) for p in photos["image"]], backbone=backbone, layer=layer,
                                        activation=activation, weights=weights, size=size, batch_size=batch_size,
                                        ids=list(photos["case_id"]), cache_dir=cache_dir, base_dir=base)
        tables.append(t)
        provs["photos"] = prov
        failures += fails
    volumes = df[df["mask"] != ""]
    if len(volumes):
        t, prov, fails = _volume_features(volumes, resolve, backbone=backbone, layer=layer, activation=activation,
                                          weights=weights, roi=roi, channels=channels, batch_size=batch_size,
                                          cache_dir=cache_dir, base=base, manifest=inputs.resolve(), n_jobs=n_jobs,
                                          progress=progress)
        tables.append(t)
        provs["volumes"] = prov
        failures += fails
    for cid, reason in failures:
        log.warning("image %s left out: %s", cid, reason)
    table = pd.concat(tables) if len(tables) > 1 else tables[0]
    if len(tables) > 1 and table.isna().any().any():
        raise ValueError("pictures and volumes gave different feature sets (channel strategy 'each'?); "
                         "extract them separately")
    order = [c for c in df["case_id"] if c in table.index]
    table = table.loc[order]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        export_csv(table, out, {"radiodeep_route": "extract-deep", **provs,
                                "failures": [{"case_id": c, "reason": r} for c, r in failures]})
    return table


def _volume_features(df: pd.DataFrame, resolve, *, backbone, layer, activation, weights, roi, channels,
                     batch_size, cache_dir, base, manifest, n_jobs, progress):
    from ..cohort import Case, Cohort
    from ..config import parse_config
    from .deep import extract_deep

    data = {
        "cohort": {"manifest": str(manifest)},  # the config names it; the cohort (no labels) is built here
        "roi": dict(roi or {}),
        "features": {"deep": {"backbone": backbone, "weights": None if weights is None else str(weights),
                              "layer": layer, "activation": activation, "channels": channels,
                              "batch_size": batch_size}},
        "output": str(Path(cache_dir).parent if cache_dir else base / "results"),
        "execution": {"n_jobs": n_jobs, "progress": progress,
                      **({"cache_dir": str(cache_dir)} if cache_dir else {})},
    }
    config = parse_config(data, base_dir=base, source="extract-deep")
    cases = [Case(str(r.case_id), resolve(r.image), resolve(r["mask"]), label="",
                  mask_label=int(r.get("mask_label") or 1)) for _, r in df.iterrows()]
    res = extract_deep(Cohort(cases), config, progress=progress)
    return res.features, res.provenance, [(f.case_id, f.reason) for f in res.failures]
