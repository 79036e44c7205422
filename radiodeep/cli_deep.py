"""``radiodeep weights`` and ``radiodeep extract-deep``: the command-line side of
:mod:`radiodeep.features.weights` and :mod:`radiodeep.features.extract`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("radiodeep")

__all__ = ["add_commands", "add_download_option", "apply_download_option"]


def add_download_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-download", action="store_true",
                        help="let this run download missing torchvision weights (sha256 checked; recorded in the "
                             "provenance). Same as RADIODEEP_ALLOW_DOWNLOAD=1; off by default")


def apply_download_option(args) -> None:
    if getattr(args, "allow_download", False):
        from .features.weights import ENV_ALLOW

        os.environ[ENV_ALLOW] = "1"


def _cmd_weights(args) -> int:
    from .features import weights as W

    if args.action == "list":
        return W.main_list()
    if args.action == "verify":
        results = W.verify(args.names or None)
        if not results:
            print("no known weights file is present")
            return 0
        bad = 0
        for w, path, problem in results:
            if problem and "not verified" not in problem:
                bad += 1
                print(f"FAIL {w.name}: {problem}")
            else:
                print(f"{'ok  ' if not problem else 'note'} {w.name}: {path}" + (f" ({problem})" if problem else ""))
        return 1 if bad else 0
    if args.action == "fetch":
        if not args.names:
            print("radiodeep weights fetch: name a backbone (radiodeep weights list)", file=sys.stderr)
            return 2
        code = 0
        for name in args.names:
            try:
                path = W.fetch(name, progress=args.progress)
                print(f"{name}: {path}")
            except (W.DownloadError, ValueError) as err:
                print(f"radiodeep weights fetch {name}: {err}", file=sys.stderr)
                code = 1
        return code
    if args.action == "import":
        if not args.names:
            print("radiodeep weights import: give the file(s) to import", file=sys.stderr)
            return 2
        code = 0
        for f in args.names:
            try:
                w, dst = W.import_file(f)
                print(f"{f}: the published {w.file} ({w.name}); copied to {dst}")
            except (ValueError, OSError) as err:
                print(f"radiodeep weights import: {err}", file=sys.stderr)
                code = 1
        return code
    raise AssertionError(args.action)


def _cmd_extract_deep(args) -> int:
    from .features.backbones import WeightsError, WeightsNotFound
    from .features.extract import extract_deep_features

    apply_download_option(args)
    roi = None
    if args.roi_size or args.modality or args.window:
        roi = {}
        if args.roi_size:
            roi["size"] = args.roi_size
        if args.modality or args.window:
            roi["intensity"] = {"modality": args.modality or "CT", **({"window": args.window} if args.window else {})}
    weights = None if str(args.weights).lower() in ("null", "none", "random") else args.weights
    try:
        table = extract_deep_features(args.inputs, backbone=args.backbone, layer=args.layer,
                                      activation=args.activation, weights=weights, out=args.out, roi=roi,
                                      channels=args.channels, batch_size=args.batch_size, size=args.size,
                                      n_jobs=args.jobs, progress=args.progress)
    except (WeightsNotFound, WeightsError, ValueError, FileNotFoundError) as err:
        print(f"radiodeep extract-deep: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {table.shape[0]} images x {table.shape[1]} features ({args.backbone} {args.layer})")
    if weights is None:
        print("WARNING: RANDOM network weights (--weights null): these are not ImageNet features")
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("weights", parents=[common],
                       help="known ImageNet weights: list, verify (sha256), fetch (download), import (a local file)")
    w.add_argument("action", choices=["list", "verify", "fetch", "import"])
    w.add_argument("names", nargs="*", help="fetch: backbone names; import: files; verify: backbone names (all)")
    w.set_defaults(func=_cmd_weights)

    e = sub.add_parser("extract-deep", parents=[common],
                       help="deep features of a folder of pictures or a manifest, one row per image (no study)")
    e.add_argument("inputs", type=Path, help="a folder of PNG/JPEG pictures, or a manifest CSV "
                                             "(columns image; optional case_id, mask)")
    e.add_argument("--backbone", default="efficientnet_lite0")
    e.add_argument("--layer", default="penultimate", help="penultimate | logits | head | blockN | fc6 | fc7 | a module path")
    e.add_argument("--activation", default="post_relu", choices=["pre_relu", "post_relu"])
    e.add_argument("--weights", default="IMAGENET1K_V1", help="IMAGENET1K_V1 (default), a local .pth file, or null")
    e.add_argument("--out", type=Path, required=True, help="the CSV to write (provenance JSON beside it)")
    e.add_argument("--size", type=int, default=None, help="pictures: input size (default: the backbone's own)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--channels", default="r", help="volumes: channel strategy (as features.deep.channels)")
    e.add_argument("--roi-size", type=int, default=None, help="volumes: roi.size (default 224)")
    e.add_argument("--modality", choices=["CT", "MR"], default=None, help="volumes: roi.intensity.modality")
    e.add_argument("--window", default=None, help="volumes: CT window name (e.g. lung)")
    e.add_argument("--jobs", type=int, default=1, help="volumes: worker processes")
    add_download_option(e)
    e.set_defaults(func=_cmd_extract_deep)
