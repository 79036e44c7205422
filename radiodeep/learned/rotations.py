"""Crops for rotation: cut a larger crop, let the network see its centre.

Rotating a crop leaves its corners empty. For the published 15° rotations the ROI stage cuts a
crop of side :func:`rotation_crop_side` (``ceil(size·√2)``, same parity as ``size``) at the same
pixel scale (:func:`larger_roi`), the augmentation (:mod:`.augment`, ``mode: circle``) rotates
the whole crop, and the network (:class:`~radiodeep.learned.scratch.ScratchNet`) uses only the
centred ``size`` × ``size`` square, which no rotation fills from outside the crop.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rotation_crop_side", "larger_roi", "centre_cut"]


def rotation_crop_side(size: int) -> int:
    """Side of the crop whose centred ``size`` square stays inside the crop at any rotation.

    The square's corner is ``(size-1)/2·√2`` from the centre; ``ceil(size·√2)`` covers it (and
    the bilinear neighbours), rounded up to the parity of ``size`` so the centre cut is exact.
    """
    side = int(math.ceil(size * math.sqrt(2.0)))
    return side + ((side - size) % 2)


def larger_roi(roi, size: int | None = None):
    """The ROI settings that cut the larger crop at the same pixel scale (``crop: window``).

    Returns ``(roi', side)``; the other crop modes fit the crop to the lesion, so there is no larger
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
    """The centred ``size`` × ``size`` square of ``(..., L, L)`` images."""
    L = x.shape[-1]
    if L < size:
        raise ValueError(f"crop of {L}×{L} is smaller than the network input {size}×{size}")
    o = (L - size) // 2
    return x[..., o:o + size, o:o + size]
