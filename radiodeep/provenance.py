"""What produced a result: package versions, platform, device."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("radiodeep", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "SimpleITK",
            "pyradiomics-bhklab", "torch", "torchvision", "pydantic", "PyYAML", "dask")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment() -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            env["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - provenance must never break a run
        pass
    return env
