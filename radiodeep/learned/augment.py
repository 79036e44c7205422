"""Augmentation of training images, applied inside ``fit`` only (never before the split).

Two modes, both seeded by the estimator's ``seed``:

* ``random``: every training batch, every image gets an angle drawn uniformly in
  ``[-rotate_deg, rotate_deg]`` and each listed flip with probability 1/2;
* ``grid``: the training images are expanded once, inside ``fit``, into every combination of
  the listed angles (``rotate_deg`` a number r -> ``[-r, 0, r]``; a list -> those angles) and
  flips (none, each flip, both): an exhaustive, deterministic set;
* ``circle`` (the published screening-nodule protocol): every ``rotate_deg`` step around the
  full circle (15 -> 0, 15, ..., 345: 24 angles) × {no flip, each listed flip alone}: 24 × 3 =
  72 images per training image, expanded once inside ``fit`` (a vertical flip is a horizontal
  flip turned by 180°, so the 72 hold 48 distinct images, as published);
* ``circle_random``: every training batch, each image gets one of those same transforms, drawn.

To keep the corners of a rotated crop out of the network's view, give the network a larger crop
and let it use the centre (:class:`~radiodeep.learned.scratch.ScratchNet` cuts the centred
``input_size`` square; :func:`~radiodeep.learned.rotations.rotation_crop_side`).

Images are ``(N, C, H, W)`` in the ROI stage's [0, 1] range; rotation is bilinear about the
centre, and what comes in from outside the crop is ``fill`` (``zeros``: black, ``border``:
the nearest edge pixel, ``reflection``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

__all__ = ["Augment", "rotate", "parse_augment"]

FLIPS = ("horizontal", "vertical")
FILLS = ("zeros", "border", "reflection")
MODES = ("random", "grid", "circle", "circle_random")


def parse_augment(spec: Mapping[str, Any] | None) -> "Augment | None":
    """An :class:`Augment` from a mapping (``mode``, ``rotate_deg``, ``flip``, ``fill``), or None."""
    if spec is None:
        return None
    if isinstance(spec, Augment):
        return spec
    spec = dict(spec)
    unknown = sorted(set(spec) - {"mode", "rotate_deg", "flip", "fill"})
    if unknown:
        raise ValueError(f"augment: unknown key(s) {unknown}; accepted: mode, rotate_deg, flip, fill")
    aug = Augment(mode=spec.get("mode", "random"), rotate_deg=spec.get("rotate_deg", 0),
                  flip=tuple(spec.get("flip") or ()), fill=spec.get("fill", "zeros"))
    return None if aug.is_identity else aug


class Augment:
    """Rotations and flips of training images (see the module docstring)."""

    def __init__(self, mode: str = "random", rotate_deg: float | list[float] = 0,
                 flip: tuple[str, ...] = (), fill: str = "zeros"):
        if mode not in MODES:
            raise ValueError(f"augment.mode must be one of {list(MODES)}, got {mode!r}")
        bad = [f for f in flip if f not in FLIPS]
        if bad:
            raise ValueError(f"augment.flip: unknown flip(s) {bad}; choose from {list(FLIPS)}")
        if fill not in FILLS:
            raise ValueError(f"augment.fill must be one of {list(FILLS)}, got {fill!r}")
        if mode.startswith("circle"):
            step = float(rotate_deg) if not isinstance(rotate_deg, (list, tuple)) else 0.0
            n = int(round(360.0 / step)) if step > 0 else 0
            if n < 1 or not math.isclose(n * step, 360.0):
                raise ValueError(f"augment.rotate_deg must be a step that divides 360 with mode: {mode}, "
                                 f"got {rotate_deg!r}")
        if mode == "random" and isinstance(rotate_deg, (list, tuple)):
            raise ValueError("augment.rotate_deg is a list of angles only with mode: grid; "
                             "with mode: random give the largest angle (a number)")
        self.mode, self.rotate_deg, self.flip, self.fill = mode, rotate_deg, tuple(dict.fromkeys(flip)), fill

    @property
    def is_identity(self) -> bool:
        return not self.flip and (self.angles() == [0.0])

    def angles(self) -> list[float]:
        if self.mode.startswith("circle"):
            step = float(self.rotate_deg)
            return [i * step for i in range(int(round(360.0 / step)))]
        r = self.rotate_deg
        if isinstance(r, (list, tuple)):
            return [float(a) for a in r] or [0.0]
        r = abs(float(r))
        return [0.0] if r == 0 else [-r, 0.0, r]

    def flip_sets(self) -> list[tuple[str, ...]]:
        if self.mode.startswith("circle"):  # no flip, then each flip alone
            return [(), *((f,) for f in self.flip)]
        return [c for n in range(len(self.flip) + 1) for c in itertools.combinations(self.flip, n)]

    def grid_size(self) -> int:
        """Images made from each training image (grid mode; 1 for random mode)."""
        return len(self.angles()) * len(self.flip_sets()) if self.mode in ("grid", "circle") else 1

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "rotate_deg": self.rotate_deg, "flip": list(self.flip), "fill": self.fill,
                "images_per_training_image": self.grid_size(), "applied": "inside fit, training rows only"}

    # ------------------------------------------------------------------ the two modes
    def expand(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid mode: every (angle, flips) combination of every image, in a fixed order."""
        if self.mode not in ("grid", "circle"):
            return x, y
        parts = []
        for flips in self.flip_sets():
            f = _flip(x, flips)
            for a in self.angles():
                parts.append(rotate(f, torch.full((len(x),), a), self.fill) if a else f)
        return torch.cat(parts), y.repeat(len(parts))

    def random_batch(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random mode: a random rotation and random flips of every image of a batch."""
        if self.mode == "circle_random":
            return self._circle_batch(x, gen)
        if self.mode != "random":
            return x
        n = x.shape[0]
        for f in self.flip:
            pick = torch.rand(n, generator=gen) < 0.5
            x = torch.where(pick.view(n, 1, 1, 1).to(x.device), _flip(x, (f,)), x)
        r = abs(float(self.rotate_deg))
        if r:
            x = rotate(x, (torch.rand(n, generator=gen) * 2 - 1) * r, self.fill)
        return x


    def _circle_batch(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        angles = torch.tensor(self.angles())
        sets = self.flip_sets()
        a = angles[torch.randint(len(angles), (n,), generator=gen)]
        f = torch.randint(len(sets), (n,), generator=gen)
        out = x
        for k, flips in enumerate(sets):
            if flips:
                out = torch.where((f == k).view(n, 1, 1, 1).to(x.device), _flip(x, flips), out)
        return rotate(out, a, self.fill)


def _flip(x: torch.Tensor, flips: tuple[str, ...]) -> torch.Tensor:
    dims = [-1 if f == "horizontal" else -2 for f in flips]
    return torch.flip(x, dims) if dims else x


def rotate(x: torch.Tensor, degrees: torch.Tensor, fill: str = "zeros") -> torch.Tensor:
    """Rotate each image of ``x`` (N, C, H, W) by its angle (degrees, counter-clockwise), bilinear."""
    t = degrees.to(torch.float64) * (math.pi / 180.0)
    c, s = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(t)
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=fill, align_corners=False)
