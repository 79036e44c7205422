"""Quality control: a contact sheet of every crop, so a researcher sees what the network sees.

:func:`contact_sheet` is the only function of the ROI stage that writes a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # pragma: no cover
    from .roi import RoiViews

__all__ = ["contact_sheet", "views_items", "network_view_items", "sheet_cases", "SHEET_MAX_CASES"]

#: the most cases a contact sheet shows: a larger cohort shows this many, evenly spread over it (a
#: sheet of thousands of tiles helps no eye, and holding or re-reading them all would cost memory
#: and time at cohort scale)
SHEET_MAX_CASES = 400

_GAP = 4  # pixels between tiles
_BG = (0, 0, 0)
_FG = (255, 255, 255)


def _tile(case_id: str, arr: np.ndarray) -> np.ndarray:
    """A (H, W, 3) uint8 tile from a 2D grey or (3, H, W) RGB array in [0, 1]."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    else:
        raise ValueError(f"case {case_id}: a contact-sheet tile must be 2D grey or (3, H, W) RGB, "
                         f"got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"case {case_id}: empty tile {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font of fixed size
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(items: Sequence[tuple[str, np.ndarray]], path: Path, columns: int | None = None,
                  *, tile_px: int | None = None) -> Path:
    """Write a PNG grid of crops with each case id under its tile; return ``path``.

    ``items``: ``(case_id, array)`` with a 2D grey array in [0, 1] or a (3, H, W)
    RGB array in [0, 1] (values outside are clipped, NaN shown black).
    ``columns``: tiles per row (default: a near-square grid). ``tile_px``: scale
    every tile to this side (default: native size; tiles of different sizes are
    placed top-left in cells of the largest size). Parent folders are created.
    """
    items = list(items)
    if not items:
        raise ValueError("contact sheet needs at least one crop")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    tiles = []
    for case_id, arr in items:
        t = Image.fromarray(_tile(str(case_id), arr), mode="RGB")
        if tile_px is not None:
            t = t.resize((int(tile_px), int(tile_px)), Image.Resampling.BILINEAR)
        tiles.append((str(case_id), t))
    n = len(tiles)
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    cw = max(t.width for _, t in tiles)
    ch = max(t.height for _, t in tiles)
    fsize = int(np.clip(cw // 12, 10, 18))
    font = _font(fsize)
    label_h = fsize + 6
    sheet = Image.new("RGB", (cols * cw + (cols + 1) * _GAP, rows * (ch + label_h) + (rows + 1) * _GAP), _BG)
    draw = ImageDraw.Draw(sheet)
    for i, (case_id, t) in enumerate(tiles):
        r, c = divmod(i, cols)
        x = _GAP + c * (cw + _GAP)
        y = _GAP + r * (ch + label_h + _GAP)
        sheet.paste(t, (x, y))
        text = _fit(draw, case_id, font, cw)
        tw = draw.textlength(text, font=font)
        draw.text((x + max(0.0, (cw - tw) / 2.0), y + ch + 2), text, fill=_FG, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def views_items(views: Sequence["RoiViews"], tag: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Contact-sheet items for prepared cases: every slice of every case.

    ``tag=None`` shows the grey crop; a tag (e.g. ``'ct_windows'``) shows that
    view's RGB input. A case with several slices is labelled ``case_id [k]``.
    """
    out: list[tuple[str, np.ndarray]] = []
    for v in views:
        arrs = v.grey if tag is None else v.views[tag]
        many = len(v.slice_indices) > 1
        for k, a in zip(v.slice_indices, arrs):
            out.append((f"{v.case_id} [{k}]" if many else v.case_id, a))
    return out


# channel strategies whose three channels hold different images: the sheet shows that RGB input
COMPOSITES = ("ct_windows", "slices", "sequences")


def network_view_items(views: "RoiViews", channels: str, max_side: int = 128) -> list[tuple[str, np.ndarray]]:
    """What the contact sheet shows of one case: the network's RGB input where the channel
    strategy composes one (``ct_windows``, ``slices``, ``sequences``), else the grey crop
    (``r``, ``g``, ``b``, ``grey3`` and ``each`` put that grey into one or all channels).
    Every slice is shown, labelled ``case_id [k]`` when there are several; those tiles are
    subsampled to at most ``max_side`` pixels, so a cohort's sheet stays small in memory."""
    items = views_items([views], channels if channels in COMPOSITES else None)
    if len(items) > 1:
        step = -(-items[0][1].shape[-1] // max_side)
        items = [(label, np.ascontiguousarray(a[..., ::step, ::step])) for label, a in items]
    return items


def sheet_cases(case_ids: Sequence[str], limit: int | None = None) -> list[str]:
    """The cases a contact sheet shows: all of them, or ``limit`` (:data:`SHEET_MAX_CASES`) evenly
    spread over the cohort's order (the first and last included), the same on every run."""
    ids = list(case_ids)
    limit = SHEET_MAX_CASES if limit is None else int(limit)
    if len(ids) <= limit:
        return ids
    picks = np.unique(np.linspace(0, len(ids) - 1, max(1, limit)).round().astype(int))
    return [ids[i] for i in picks]
