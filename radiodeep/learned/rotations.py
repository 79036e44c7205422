"""The published augmentation: every 15° rotation × {none, horizontal, vertical} flips.

24 rotations × 3 flips = **72 images per real image**, as published (a vertical flip is a
horizontal flip plus a 180° rotation, so the 72 hold each of 48 distinct images twice; we keep
the published count). ``random`` draws ``copies`` transforms per image from the same 72 instead.

Rotating a crop leaves its corners empty. The ROI stage therefore cuts a larger crop
(:func:`rotation_crop_side`: ``ceil(size·√2)``, same parity as ``size``, at the same pixel
scale: :func:`larger_roi`), and each transform samples only the centred ``size`` × ``size``
square of the rotated crop, so no output pixel comes from outside the crop (one bilinear
resampling; the 0° transform reproduces the centre cut exactly). Given a crop of exactly
``size``, the corners are filled by the nearest edge pixel instead (and :func:`augment` says
so in its ``notes``).

Everything here runs inside ``fit`` on the training fold only; it never sees held-out cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FLIPS", "transforms", "rotation_crop_side", "larger_roi", "centre_cut", "apply", "augment"]

FLIPS = ("none", "horizontal", "vertical")


def transforms(rotate_deg: float = 15.0, flips: Sequence[str] = FLIPS) -> list[tuple[float, str]]:
    """The exhaustive grid ``[(angle, flip), ...]``: 360/rotate_deg angles × the flips."""
    flips = tuple(dict.fromkeys(["none", *flips]))  # 'none' always included, order kept
    bad = [f for f in flips if f not in FLIPS]
    if bad:
        raise ValueError(f"unknown flip(s) {bad}: choose from {list(FLIPS)}")
    if rotate_deg <= 0 or rotate_deg > 360:
        angles = [0.0]
    else:
        n = int(round(360.0 / rotate_deg))
        if not math.isclose(n * rotate_deg, 360.0):
            raise ValueError(f"rotate_deg must divide 360, got {rotate_deg}")
        angles = [i * rotate_deg for i in range(n)]
    return [(a, f) for f in flips for a in angles]


def rotation_crop_side(size: int) -> int:
    """Side of the crop to cut so that any rotation of its centred ``size`` square stays inside.

    The sampled square's corner is ``(size-1)/2·√2`` from the centre; ``ceil(size·√2)`` covers it,
    rounded up to the parity of ``size`` so that the 0° cut is pixel-exact.
    """
    side = int(math.ceil(size * math.sqrt(2.0)))
    return side + ((side - size) % 2)


def larger_roi(roi, size: int | None = None):
    """The ROI settings that cut the larger crop at the same pixel scale (``crop: window``).

    Returns ``(roi', side)``; other crop modes fit the crop to the lesion, so there is no larger
    crop at the same scale: they are returned unchanged with ``side = size``.
    """
    size = size or roi.size
    side = rotation_crop_side(size)
    if roi.crop != "window":
        return roi, size
    update = {"size": side}
    if roi.window_mm is not None:
        update["window_mm"] = roi.window_mm * side / size
    elif roi.window_px is not None:
        update["window_px"] = int(round(roi.window_px * side / size))
    return roi.model_copy(update=update), side


def centre_cut(x: np.ndarray, size: int) -> np.ndarray:
    """The centred ``size`` × ``size`` square of ``(..., L, L)`` images (``L - size`` even)."""
    L = x.shape[-1]
    if L < size:
        raise ValueError(f"crop of {L}×{L} is smaller than the network input {size}×{size}")
    o = (L - size) // 2
    return x[..., o:o + size, o:o + size]


def _grid(angle_deg: float, L: int, size: int, n: int) -> torch.Tensor:
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    v, u = torch.meshgrid(u, u, indexing="ij")  # v: rows, u: columns
    if angle_deg % 90 == 0:  # exact cos/sin for right angles
        c, s = round(c), round(s)
    x = (L - 1) / 2.0 + c * u - s * v
    y = (L - 1) / 2.0 + s * u + c * v
    scale = 2.0 / (L - 1) if L > 1 else 1.0
    g = torch.stack([x * scale - 1.0, y * scale - 1.0], dim=-1).to(torch.float32)
    return g.unsqueeze(0).expand(n, -1, -1, -1)


def apply(x: np.ndarray, angle: float, flip: str, size: int) -> np.ndarray:
    """Rotate ``(N, C, L, L)`` crops by ``angle`` degrees (counter-clockwise on screen), keep the
    centred ``size`` square, then flip it (``horizontal``: left-right, ``vertical``: up-down)."""
    x = np.asarray(x, dtype=np.float32)
    n, _, L, L2 = x.shape
    if L != L2:
        raise ValueError(f"crops must be square, got {L}×{L2}")
    if angle % 360 == 0 and (L - size) % 2 == 0:
        out = np.ascontiguousarray(centre_cut(x, size))
    else:
        t = torch.from_numpy(x)
        out = F.grid_sample(t, _grid(angle, L, size, n), mode="bilinear", padding_mode="border",
                            align_corners=True).numpy()
    if flip == "horizontal":
        out = out[..., ::-1]
    elif flip == "vertical":
        out = out[..., ::-1, :]
    elif flip != "none":
        raise ValueError(f"unknown flip {flip!r}: choose from {list(FLIPS)}")
    return np.ascontiguousarray(out, dtype=np.float32)


def augment(X: np.ndarray, y: np.ndarray, size: int, *, rotate_deg: float = 15.0,
            flips: Sequence[str] = FLIPS, mode: str = "grid", copies: int = 8,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Augmented training set of ``size`` × ``size`` images from ``(N, C, L, L)`` crops.

    ``mode='grid'``: every transform of :func:`transforms` for every image (72 × N as published).
    ``mode='random'``: ``copies`` transforms per image drawn (seeded) from the same grid.
    ``mode='none'``: the centre cut only. Returns ``(X_aug, y_aug, notes)``.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    notes = []
    L = X.shape[-1]
    if L < rotation_crop_side(size) and mode != "none" and rotate_deg and rotate_deg % 90 != 0:
        notes.append(f"crops are {L}×{L}, smaller than the {rotation_crop_side(size)}×"
                     f"{rotation_crop_side(size)} a {size}×{size} rotation needs: corners are "
                     "filled with the nearest edge pixel")
    if mode == "none":
        return apply(X, 0.0, "none", size), y.copy(), notes
    grid = transforms(rotate_deg, flips)
    if mode == "grid":
        parts = [apply(X, a, f, size) for a, f in grid]
        return np.concatenate(parts), np.tile(y, len(grid)), notes
    if mode != "random":
        raise ValueError(f"augmentation mode must be 'grid', 'random' or 'none', got {mode!r}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(grid), size=(len(X), copies))
    out = np.empty((len(X) * copies, X.shape[1], size, size), np.float32)
    for g in np.unique(picks):
        rows, cols = np.nonzero(picks == g)
        a, f = grid[g]
        out[cols * len(X) + rows] = apply(X[rows], a, f, size)
    return out, np.tile(y, copies), notes
