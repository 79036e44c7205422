"""Figures for the report, drawn with matplotlib's Agg canvas and returned as PNG bytes.

No pyplot: figures are plain ``matplotlib.figure.Figure`` objects, so nothing here touches
global GUI state and it is safe in worker threads and on headless machines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print
# the line styles below keep curves apart.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C6D31")
LINESTYLES = ("-", "--", "-.", ":")
ROUTE_COLOURS = {"deep": "#0072B2", "handcrafted": "#E69F00"}
OTHER_ROUTE_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#D55E00")
UNKNOWN_ROUTE_COLOUR = "#9AA5B1"
DPI = 144  # PNG pixels per inch: 1.5x the CSS 96 px/inch, sharp on screens and in print

_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "axes.edgecolor": "#52606D",
    "axes.labelcolor": "#1F2933",
    "axes.linewidth": 0.8,
    "xtick.color": "#3E4C59",
    "ytick.color": "#3E4C59",
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "svg.fonttype": "none",
}


@dataclass(frozen=True)
class RocCurve:
    """One experiment's pooled out-of-fold ROC curve."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n: int
    n_pos: int


def mpl_text(s: object) -> str:
    """A user string made safe for matplotlib: no mathtext, and not hidden from legends."""
    t = str(s).replace("$", r"\$")
    return " " + t if t.startswith("_") else t


def _shorten(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "\u2026"


_JOINTS = "_-.:"


def _wrap(s: str, width: int) -> list[str]:
    """``s`` on lines of at most ``width`` characters, broken after its joints (``_ - . :``);
    every character is kept, so distinct names give distinct labels."""
    lines, cur = [], ""
    tokens, tok = [], ""
    for ch in s:
        tok += ch
        if ch in _JOINTS:
            tokens.append(tok)
            tok = ""
    if tok:
        tokens.append(tok)
    for t in tokens:
        while len(t) > width:  # a joint-free run longer than a line: cut it
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(t[:width])
            t = t[width:]
        if len(cur) + len(t) > width and cur:
            lines.append(cur)
            cur = ""
        cur += t
    if cur:
        lines.append(cur)
    return lines or [""]


def common_prefix(names: Sequence[str]) -> str:
    """The longest prefix, ending at a joint, that every name shares (and none is made of)."""
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    cut = max((i + 1 for i in range(n) if first[i] in _JOINTS), default=0)
    if any(len(x) <= cut for x in names):
        return ""
    return first[:cut]


def feature_labels(names: Sequence[str], width: int = 34) -> tuple[str, list[str]]:
    """(prefix shared by every name, the rest of each name wrapped on lines of ``width``).

    Nothing is cut from the middle: two different features never show the same label.
    """
    names = [str(x) for x in names]
    prefix = common_prefix(names)
    return prefix, ["\n".join(_wrap(x[len(prefix):], width)) for x in names]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(fig, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (no metadata text chunks, so nothing in it points anywhere)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def roc_curve_points(y_true: Sequence, score: Sequence) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(fpr, tpr, auc) of pooled scores, or None when both classes are not present."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    ok = np.isfinite(y) & np.isfinite(s)
    y, s = y[ok].astype(int), s[ok]
    if y.size < 2 or np.unique(y).size < 2:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr, float(roc_auc_score(y, s))


def curve_style(i: int, n: int) -> tuple[str, str]:
    """Colour and line style of the i-th of n ROC curves (styles cycle once colours run out)."""
    colour = PALETTE[i % len(PALETTE)]
    style = LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)] if n > len(PALETTE) else LINESTYLES[0]
    return colour, style


def roc_figure(curves: Sequence[RocCurve], *, note: str | None = None, svg_to=None) -> bytes:
    """Every experiment's pooled ROC curve on one square plot, with the chance diagonal
    (``svg_to``: also written there as SVG, for a paper)."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        many = len(curves) > 6
        fig = _figure(6.6 if not many else 7.2, 6.0 if not many else 7.4)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([0, 1], [0, 1], color="#9AA5B1", lw=1.0, ls=(0, (4, 3)), label="chance (AUC 0.5)")
        for i, c in enumerate(curves):
            colour, style = curve_style(i, len(curves))
            label = f"{_shorten(mpl_text(c.name), 40)}  (AUC {c.auc:.3f})"
            ax.step(c.fpr, c.tpr, where="post", color=colour, lw=1.9, ls=style, label=label)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("1 \u2212 specificity (false-positive rate)")
        ax.set_ylabel("Sensitivity (true-positive rate)")
        ax.grid(True, color="#E4E7EB", lw=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if not curves:
            ax.text(0.5, 0.55, "no experiment produced predictions\nwith both classes present",
                    ha="center", va="center", color="#52606D", transform=ax.transAxes)
        handles, labels = ax.get_legend_handles_labels()
        # experiments first, chance last
        handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
        if many:
            fig.legend(handles, labels, loc="outside lower center", ncols=2)
        else:
            ax.legend(handles, labels, loc="lower right", handlelength=2.4)
        if note:
            ax.set_title(note, loc="left", color="#52606D", fontsize=9)
        png = png_bytes(fig)
        if svg_to is not None:
            buf = io.BytesIO()
            fig.savefig(buf, format="svg", facecolor="white", metadata={"Date": None, "Creator": None})
            Path(svg_to).write_bytes(buf.getvalue())
        return png


def selection_figure(features: Sequence[str], routes: Sequence[str], frequency: Sequence[float],
                     *, route_colours: dict[str, str] | None = None) -> bytes:
    """Horizontal bars of selection frequency (most often selected on top), coloured by route."""
    import matplotlib
    from matplotlib.patches import Patch

    colours = dict(route_colours or {})
    n = len(features)
    prefix, labels = feature_labels([str(f) for f in features])
    n_lines = sum(lab.count("\n") + 1 for lab in labels)
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 0.1 * max(n, 3) + 0.16 * max(n_lines, 3) + 1.1 + (0.2 if prefix else 0.0))
        ax = fig.add_subplot(1, 1, 1)
        ypos = np.arange(n)[::-1]
        bar_colours = [colours.get(r, UNKNOWN_ROUTE_COLOUR) for r in routes]
        freq = np.asarray(frequency, dtype=float)
        ax.barh(ypos, freq, color=bar_colours, height=0.72, edgecolor="none")
        for yy, f in zip(ypos, freq):
            ax.text(f + 0.015, yy, f"{100 * f:.0f}%", va="center", ha="left", fontsize=8, color="#3E4C59")
        ax.set_yticks(ypos, [mpl_text(lab) for lab in labels], fontsize=7.5 if n_lines > n else None)
        if prefix:
            ax.set_title(f"feature names without their common prefix \u201c{mpl_text(prefix)}\u201d",
                         loc="left", color="#52606D", fontsize=8)
        ax.set_xlim(0, 1.13)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
        ax.set_xlabel("Selected in % of fits")
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(True, axis="x", color="#E4E7EB", lw=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        present = list(dict.fromkeys(routes))
        if present:
            handles = [Patch(color=colours.get(r, UNKNOWN_ROUTE_COLOUR), label=mpl_text(r or "unknown"))
                       for r in present]
            fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), title=None)
        return png_bytes(fig)


def route_colours(routes: Sequence[str]) -> dict[str, str]:
    """A fixed colour per route name: deep blue, handcrafted orange, others from a spare list."""
    out: dict[str, str] = {}
    spare = iter(OTHER_ROUTE_COLOURS * 4)
    for r in dict.fromkeys(routes):
        out[r] = ROUTE_COLOURS.get(r) or next(spare, UNKNOWN_ROUTE_COLOUR)
    return out
