"""``radiodeep demo``: a phantom CT cohort and the bundled sample study, end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from .config import load_config
from .pipeline import RunResult, run
from .synth import make_cohort

log = logging.getLogger(__name__)

HEADER = """\
# radiodeep demo study, written by `radiodeep demo`. Edit it and rerun with
#   radiodeep run {path}
# Features are cached under results/cache: a rerun recomputes only what a change affects.
#
# features.deep.weights is {weights_note}
"""


def imagenet_weights_cached(backbone: str = "alexnet") -> bool:
    """True when the ImageNet weights of ``backbone`` are on this machine (nothing is downloaded)."""
    from .features.backbones import resolve_weights

    try:
        resolve_weights(backbone, "IMAGENET1K_V1")
        return True
    except (ValueError, FileNotFoundError):
        return False


def demo_config(quick: bool = False, weights: str | None = "IMAGENET1K_V1", deep: dict | None = None) -> dict:
    trees = 50 if quick else 200
    return {
        "name": "radiodeep demo: phantom CT cohort, short vs long survival",
        "cohort": {"manifest": "cohort/manifest.csv", "positive_label": "short"},
        "roi": {
            "slice": "largest", "crop": "window", "window_px": 56, "size": 224 if not quick else 112,
            "intensity": {"modality": "CT", "window": "lung"},
        },
        "features": {
            "handcrafted": {"mode": "3d", "settings": {"binWidth": 25, "label": 1}},
            "deep": deep or {"backbone": "alexnet", "weights": weights, "layer": "fc7",
                             "activation": "post_relu", "channels": "r", "batch_size": 16},
        },
        "experiments": [
            {"name": "deep-su10-rf", "features": ["deep"], "select": {"method": "su", "k": 10},
             "classifier": {"name": "random_forest", "n_estimators": trees}},
            {"name": "handcrafted-su10-rf", "features": ["handcrafted"],
             "select": {"method": "su", "k": 10},
             "classifier": {"name": "random_forest", "n_estimators": trees}},
            {"name": "both-relieff5+5-nb", "features": ["deep", "handcrafted"],
             "select": {"method": "relieff", "k_per_route": 5}, "classifier": "naive_bayes"},
            {"name": "both-su5+5-rf", "features": ["deep", "handcrafted"],
             "select": {"method": "su", "k_per_route": 5},
             "classifier": {"name": "random_forest", "n_estimators": trees}},
        ],
        "evaluation": {"scheme": "loo", "seed": 0},
        "output": "results",
        "execution": {"n_jobs": 2},
    }


def run_demo(folder: Path | str = "demo", n_cases: int = 40, quick: bool = False,
             progress: bool = True) -> RunResult:
    folder = Path(folder).resolve()
    manifest = folder / "cohort" / "manifest.csv"
    if not manifest.exists():
        log.info("writing a phantom CT cohort of %d cases to %s", n_cases, manifest.parent)
        make_cohort(manifest.parent, n_cases=n_cases, seed=0, modality="ct")
    from .features.weights import fallback_deep_settings

    deep, fallback = fallback_deep_settings(demo_config(quick=quick)["features"]["deep"])
    if fallback is None:
        note = f"{deep['weights']} ({deep['backbone']}, found on this machine)."
    else:
        note = (f"{deep['weights']} of {deep['backbone']}: the ImageNet weights installed with radiodeep.\n"
                "# AlexNet's (alexnet-owt-7be5be79.pth) are not in the torch hub cache; with them there\n"
                "# (see the README: radiodeep weights import FILE) the demo uses alexnet fc7, as published.")
    study = folder / "study.yaml"
    cfg_dict = demo_config(quick=quick, deep=deep)
    study.write_text(HEADER.format(path=study, weights_note=note)
                     + yaml.safe_dump(cfg_dict, sort_keys=False), encoding="utf-8")
    config = load_config(study)
    config.execution.progress = progress
    if fallback is not None:
        log.info("demo: %s", fallback)
    return run(config)
