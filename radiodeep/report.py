"""``report.html``: one self-contained, printable page that summarises a study.

Everything the page needs is inside it: CSS is inline, figures are base64 PNGs drawn with
matplotlib's Agg canvas, there is no JavaScript, and a Content-Security-Policy forbids the
browser to fetch anything. Every user string goes through Jinja2 autoescaping.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import write_atomic
from .record import plain_data
from . import plots

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
ROC_PNG = "roc_curves.png"
TOP_FEATURES = 20
DELONG_MATRIX_MAX = 12  # more experiments than this: the pairwise list only

SCHEME_NAMES = {
    "loo": "leave-one-out cross-validation",
    "repeated_kfold": "repeated k-fold cross-validation",
    "external": "external test set",
}


# --------------------------------------------------------------------------- formatting
def _num(v: Any) -> float | None:
    """A finite float, or None for anything missing (None, NaN, pd.NA, '', non-numbers)."""
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(round(f))


def fmt_auc(v: Any) -> str:
    f = _num(v)
    return "\u2014" if f is None else f"{f:.3f}"


def fmt_pct(v: Any) -> str:
    f = _num(v)
    return "\u2014" if f is None else f"{100 * f:.1f}%"


def fmt_p(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "\u2014"
    if f < 0.001:
        return "<0.001"
    return f"{f:.3f}"


def fmt_signed(v: Any, digits: int = 3) -> str:
    f = _num(v)
    return "\u2014" if f is None else f"{f:+.{digits}f}".replace("-", "\u2212")


def _ci(lo: Any, hi: Any, fmt) -> str | None:
    a, b = _num(lo), _num(hi)
    if a is None or b is None:
        return None
    return f"{fmt(a).rstrip('%')}\u2013{fmt(b)}"


def _text(v: Any, default: str = "") -> str:
    if v is None or v is pd.NA:
        return default
    if isinstance(v, float) and math.isnan(v):
        return default
    return str(v)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(plain_data(obj), sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=100).rstrip()


def _css_width(png: bytes) -> int:
    """Display width in CSS pixels of a figure PNG, so that its text shows at its point size."""
    return round(int.from_bytes(png[16:20], "big") * 96 / plots.DPI)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def _parse_time(v: Any) -> _dt.datetime | None:
    if isinstance(v, _dt.datetime):
        return v
    try:
        return _dt.datetime.fromisoformat(str(v))
    except (TypeError, ValueError):
        return None


def _duration(start: Any, end: Any) -> str | None:
    a, b = _parse_time(start), _parse_time(end)
    if a is None or b is None or (a.tzinfo is None) != (b.tzinfo is None):
        return None
    s = int(round((b - a).total_seconds()))
    if s < 0:
        return None
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{sec} s")


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


# --------------------------------------------------------------------------- sections
def _scheme(provenance: dict, predictions: pd.DataFrame) -> dict:
    """How the estimates were made, from the config (or guessed from the predictions)."""
    ev = (provenance.get("config") or {}).get("evaluation") or {}
    scheme = ev.get("scheme")
    repeats = _int(ev.get("repeats"))
    folds = _int(ev.get("folds"))
    if scheme is None and not predictions.empty and {"fold", "case_id"} <= set(predictions.columns):
        one = predictions[predictions["experiment"] == predictions["experiment"].iloc[0]] \
            if "experiment" in predictions.columns else predictions
        n_rep = one["repeat"].nunique() if "repeat" in one.columns else 1
        n_folds = one["fold"].nunique() / max(n_rep, 1)
        n_cases = one["case_id"].nunique()
        scheme = "loo" if n_rep <= 1 and n_folds == n_cases else "repeated_kfold"
        repeats, folds = n_rep, int(round(n_folds))
    if scheme == "repeated_kfold" and folds and repeats:
        label = f"{repeats}\u00d7 repeated {folds}-fold cross-validation"
    elif scheme == "external":
        tr, te = ev.get("train_split"), ev.get("test_split")
        label = "external test set" + (f" (trained on \u201c{tr}\u201d, tested on \u201c{te}\u201d)"
                                       if tr and te else "")
    else:
        label = SCHEME_NAMES.get(scheme or "", str(scheme) if scheme else "cross-validation")
    level = _num(ev.get("ci_level")) or 0.95
    return {
        "scheme": scheme or "",
        "label": label,
        # only repeated k-fold repeats anything; the config's default 'repeats' means nothing elsewhere
        "repeats": (repeats or 1) if scheme == "repeated_kfold" else 1,
        "ci": f"{100 * level:g}% CI",
        "permutations": _int(ev.get("permutations")) or 0,
    }


def _experiment_rows(metrics: pd.DataFrame) -> list[dict]:
    rows = []
    has_perm = "perm_p" in metrics.columns and metrics["perm_p"].map(_num).notna().any()
    for _, r in metrics.iterrows():
        auc = _num(r.get("auc"))
        sel = _text(r.get("selector"))
        k = _text(r.get("k"))
        selection = "none" if sel in ("", "none") else (f"{sel}, k\u00a0=\u00a0{k}" if k else sel)
        rows.append({
            "name": _text(r.get("experiment"), "?"),
            "routes": _text(r.get("routes")).replace("+", " + "),
            "selection": selection,
            "classifier": _text(r.get("classifier")),
            "n": _int(r.get("n")),
            "n_pos": _int(r.get("n_pos")),
            "auc": fmt_auc(auc),
            "auc_ci": _ci(r.get("auc_ci_low"), r.get("auc_ci_high"), fmt_auc),
            "below_chance": auc is not None and auc < 0.5,
            "accuracy": fmt_pct(r.get("accuracy")),
            "accuracy_ci": _ci(r.get("accuracy_ci_low"), r.get("accuracy_ci_high"), fmt_pct),
            "balanced_accuracy": fmt_pct(r.get("balanced_accuracy")),
            "sensitivity": fmt_pct(r.get("sensitivity")),
            "sensitivity_ci": _ci(r.get("sensitivity_ci_low"), r.get("sensitivity_ci_high"), fmt_pct),
            "specificity": fmt_pct(r.get("specificity")),
            "specificity_ci": _ci(r.get("specificity_ci_low"), r.get("specificity_ci_high"), fmt_pct),
            "perm_p": fmt_p(r.get("perm_p")) if has_perm else None,
        })
    return rows


def _roc(metrics: pd.DataFrame, predictions: pd.DataFrame, scheme: dict) -> list[plots.RocCurve]:
    """One curve per experiment from all its out-of-fold scores (every repeat); the AUC shown
    with it is the metrics table's (the same pooled AUC: the area under this curve)."""
    need = {"experiment", "y_true", "score"}
    if predictions.empty or not need <= set(predictions.columns):
        return []
    order = list(dict.fromkeys([*map(str, _col(metrics, "experiment").dropna()),
                                *map(str, predictions["experiment"].dropna())]))
    table_auc = {_text(r.get("experiment")): _num(r.get("auc")) for _, r in metrics.iterrows()}
    curves = []
    for name in order:
        p = predictions[predictions["experiment"].astype(str) == name]
        pts = plots.roc_curve_points(p["y_true"], p["score"])
        if pts is None:
            continue
        fpr, tpr, auc = pts
        if table_auc.get(name) is not None:
            auc = table_auc[name]
        y = pd.to_numeric(p["y_true"], errors="coerce")
        n_rep = max(int(p["repeat"].nunique()), 1) if "repeat" in p.columns else 1
        curves.append(plots.RocCurve(name, fpr, tpr, auc, int(y.notna().sum()) // n_rep,
                                     int((y == 1).sum()) // n_rep))
    return curves


def _confusion(metrics: pd.DataFrame, predictions: pd.DataFrame, pos: str, neg: str) -> list[dict]:
    """The metrics table's confusion counts (all repeats, each case once per repeat) and the
    metrics table's sensitivity, specificity, PPV and NPV (ratios of those same counts)."""
    out = []
    for _, r in metrics.iterrows():
        name = _text(r.get("experiment"), "?")
        cells = {k: _int(r.get(k)) for k in ("tn", "fp", "fn", "tp")}
        source = "table"
        if any(v is None for v in cells.values()) and not predictions.empty \
                and {"experiment", "y_true", "y_pred"} <= set(predictions.columns):
            p = predictions[predictions["experiment"].astype(str) == name]
            yt = pd.to_numeric(p["y_true"], errors="coerce")
            yp = pd.to_numeric(p["y_pred"], errors="coerce")
            ok = yt.notna() & yp.notna()
            if ok.any():
                yt, yp = yt[ok], yp[ok]
                cells = {"tn": int(((yt == 0) & (yp == 0)).sum()), "fp": int(((yt == 0) & (yp == 1)).sum()),
                         "fn": int(((yt == 1) & (yp == 0)).sum()), "tp": int(((yt == 1) & (yp == 1)).sum())}
                source = "predictions"
        if any(v is None for v in cells.values()):
            continue
        tp, fn, fp, tn = cells["tp"], cells["fn"], cells["fp"], cells["tn"]
        ratio = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
                 "npv": (tn, tn + fn)}
        shown = {}
        for key, (num, den) in ratio.items():
            v = _num(r.get(key)) if source == "table" else None
            shown[key] = fmt_pct(v if v is not None else (num / den if den else None))
        out.append({
            "name": name, **cells, "source": source,
            "pos_total": tp + fn, "neg_total": fp + tn,
            "pred_pos_total": tp + fp, "pred_neg_total": fn + tn, "total": tp + fn + fp + tn,
            **shown,
            "pos": pos, "neg": neg,
        })
    return out


def _per_repeat(metrics: pd.DataFrame, predictions: pd.DataFrame, scheme: dict) -> list[dict]:
    """Repeated k-fold only: each repeat's AUC and accuracy per experiment (from the out-of-fold
    scores of predictions.csv), their mean, SD (n - 1) and range, beside the pooled AUC."""
    if scheme["repeats"] <= 1 or predictions.empty or "repeat" not in predictions.columns:
        return []
    from .stats import delong_variance

    pooled = {_text(r.get("experiment")): _num(r.get("auc")) for _, r in metrics.iterrows()}
    rows = []
    for name in [str(x) for x in _col(metrics, "experiment").dropna()]:
        p = predictions[predictions["experiment"].astype(str) == name]
        if p.empty or p["repeat"].nunique() <= 1:
            continue
        aucs, accs = [], []
        for _, g in p.groupby("repeat", sort=True):
            y = g["y_true"].to_numpy()
            aucs.append(delong_variance(y, g["score"].to_numpy().astype(float))[0]
                        if len(set(y)) == 2 else float("nan"))
            accs.append(float(np.mean(g["y_pred"].to_numpy() == y)))
        a, c = np.array(aucs, dtype=float), np.array(accs, dtype=float)
        rows.append({"name": name, "pooled_auc": fmt_auc(pooled.get(name)), "n_repeats": len(a),
                     "aucs": [fmt_auc(v) for v in a], "accs": [fmt_pct(v) for v in c],
                     "auc_mean": fmt_auc(np.nanmean(a)), "auc_sd": fmt_auc(np.nanstd(a, ddof=1)),
                     "auc_min": fmt_auc(np.nanmin(a)), "auc_max": fmt_auc(np.nanmax(a)),
                     "acc_mean": fmt_pct(c.mean()), "acc_sd": fmt_pct(c.std(ddof=1)),
                     "acc_min": fmt_pct(c.min()), "acc_max": fmt_pct(c.max())})
    return rows


def _selection(selection: pd.DataFrame, order: list[str]) -> list[dict]:
    need = {"experiment", "feature", "frequency"}
    if selection.empty or not need <= set(selection.columns):
        return []
    sel = selection.copy()
    sel["experiment"] = sel["experiment"].astype(str)
    sel["route"] = _col(sel, "route").map(lambda v: _text(v))
    sel["frequency"] = pd.to_numeric(sel["frequency"], errors="coerce")
    sel = sel[sel["frequency"].notna() & (sel["frequency"] > 0)]
    colours = plots.route_colours(sorted(sel["route"].unique(), key=lambda r: (r not in plots.ROUTE_COLOURS, r)))
    names = list(dict.fromkeys([*order, *sel["experiment"]]))
    out = []
    for name in names:
        s = sel[sel["experiment"] == name]
        if s.empty:
            continue
        s = s.assign(feature=s["feature"].astype(str)).sort_values(
            ["frequency", "feature"], ascending=[False, True], kind="mergesort")
        top = s.head(TOP_FEATURES)
        png = plots.selection_figure(list(top["feature"]), list(top["route"]), list(top["frequency"]),
                                     route_colours=colours)
        by_route = s.groupby("route")["feature"].count().to_dict()
        out.append({
            "name": name,
            "png": _b64(png),
            "width": _css_width(png),
            "n_features": len(s),
            "shown": len(top),
            "always": int((s["frequency"] >= 1 - 1e-9).sum()),
            "by_route": [{"route": r or "unknown", "n": int(n)} for r, n in sorted(by_route.items())],
        })
    return out


def _delong(delong: pd.DataFrame, order: list[str]) -> dict:
    need = {"experiment_a", "experiment_b", "p"}
    if delong.empty or not need <= set(delong.columns):
        return {"pairs": [], "matrix": None}
    pairs = []
    pmap: dict[tuple[str, str], float | None] = {}
    for _, r in delong.iterrows():
        a, b = _text(r.get("experiment_a")), _text(r.get("experiment_b"))
        p = _num(r.get("p"))
        pmap[(a, b)] = pmap[(b, a)] = p
        pairs.append({"a": a, "b": b, "auc_a": fmt_auc(r.get("auc_a")), "auc_b": fmt_auc(r.get("auc_b")),
                      "diff": fmt_signed(r.get("diff")), "z": fmt_signed(r.get("z"), 2), "p": fmt_p(p),
                      "significant": p is not None and p < 0.05})
    names = [n for n in dict.fromkeys([*order, *(x for ab in pmap for x in ab)])
             if any(n in ab for ab in pmap)]
    matrix = None
    if 2 < len(names) <= DELONG_MATRIX_MAX:
        matrix = {"names": names, "rows": []}
        for i, a in enumerate(names, 1):
            cells = []
            for b in names:
                if a == b:
                    cells.append({"text": "", "kind": "diag"})
                elif (a, b) in pmap:
                    p = pmap[(a, b)]
                    cells.append({"text": fmt_p(p), "kind": "sig" if p is not None and p < 0.05 else ""})
                else:
                    cells.append({"text": "n/a", "kind": "na"})
            matrix["rows"].append({"i": i, "name": a, "cells": cells})
    return {"pairs": pairs, "matrix": matrix}


def _failures(failures: pd.DataFrame) -> list[dict]:
    if failures is None or failures.empty:
        return []
    return [{"case_id": _text(r.get("case_id")), "stage": _text(r.get("stage")),
             "reason": _text(r.get("reason"))} for _, r in failures.iterrows()]


def _kv(d: Any) -> list[dict]:
    """A mapping as rows: scalars as text, nested values as YAML blocks."""
    if not isinstance(d, dict):
        return [{"key": "", "value": _yaml(d), "block": True}] if d not in (None, {}) else []
    rows = []
    for k, v in d.items():
        v = plain_data(v)
        if isinstance(v, (dict, list)):
            rows.append({"key": str(k), "value": _yaml(v) if v else "(none)", "block": bool(v)})
        else:
            rows.append({"key": str(k), "value": "\u2014" if v is None else str(v), "block": False})
    return rows


def _provenance(provenance: dict) -> dict:
    env = dict(provenance.get("environment") or {})
    packages = env.pop("packages", None) or {}
    started, finished = provenance.get("started"), provenance.get("finished")
    run = [("Started", _text(started, "\u2014")), ("Finished", _text(finished, "\u2014"))]
    dur = _duration(started, finished)
    if dur:
        run.append(("Duration", dur))
    run.append(("Random seed", _text(provenance.get("seed"), "\u2014")))
    routes = provenance.get("routes") or {}
    extra = {k: v for k, v in provenance.items()
             if k not in ("config", "environment", "routes", "seed", "started", "finished")}
    return {
        "run": run,
        "environment": _kv(env),
        "packages": [{"name": str(k), "version": _text(v, "not installed")} for k, v in packages.items()],
        "routes": [{"name": str(k), "rows": _kv(v)} for k, v in routes.items()] if isinstance(routes, dict)
        else [{"name": "routes", "rows": _kv({"routes": routes})}],
        "config": _yaml(provenance["config"]) if provenance.get("config") else None,
        "extra": _kv(extra),
    }


def _contact_sheet(path: Path | None) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        return {"error": f"could not read {path.name}: {err.strerror or err}", "mime": None, "b64": None}
    mime = _image_mime(data)
    if mime is None:
        return {"error": f"{path.name} is not a PNG or JPEG image", "mime": None, "b64": None}
    return {"error": None, "mime": mime, "b64": _b64(data)}


# --------------------------------------------------------------------------- entry point
def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["wbr"] = _wbr
    return env


def _wbr(s: Any):
    """Escape, then allow line breaks after _ + . - / so that long names wrap at their joints."""
    from markupsafe import Markup, escape

    text = str(escape(s))
    for ch in "_+.-/":
        text = text.replace(ch, ch + "<wbr>")
    return Markup(text)


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data)  # a report is meant to be shared: it follows the umask


def _frame(df: pd.DataFrame | None) -> pd.DataFrame:
    return pd.DataFrame() if df is None else df


def _random_weights(provenance: dict) -> str | None:
    from .features.weights import random_weight_experiments, random_weight_routes, random_weights_line

    experiments = (provenance.get("config") or {}).get("experiments")
    return random_weights_line(random_weight_routes(provenance.get("routes")),
                               random_weight_experiments(experiments))


def write_report(out_dir: Path, *, title: str,
                 metrics: pd.DataFrame,
                 predictions: pd.DataFrame,
                 selection: pd.DataFrame,
                 delong: pd.DataFrame,
                 failures: pd.DataFrame,
                 experiment_errors: dict[str, str],
                 provenance: dict,
                 contact_sheet: Path | None,
                 positive_label: str | None = None,
                 paper: dict | None = None,
                 ) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/roc_curves.png``.

    ``metrics`` has one row per experiment (see the module docs of the pipeline for columns;
    missing columns and NaN are shown as a dash). ``predictions`` holds the out-of-fold scores;
    the ROC curves pool all of them per experiment. Returns the path of the HTML file.
    """
    from . import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, predictions = _frame(metrics), _frame(predictions)
    selection, delong, failures = _frame(selection), _frame(delong), _frame(failures)
    provenance = dict(provenance or {})
    experiment_errors = dict(experiment_errors or {})

    scheme = _scheme(provenance, predictions)
    label = _text(positive_label)
    pos_named = bool(label) and label[:1].isalpha()  # "malignant" reads well; "1" does not
    if pos_named:
        pos, neg, neg_prose = label, f"not {label}", f"non-{label}"
    else:
        pos = f"positive ({label})" if label else "positive"
        neg = neg_prose = "negative"
    order = [str(x) for x in _col(metrics, "experiment").dropna()]

    curves = _roc(metrics, predictions, scheme)
    roc_note = None
    if scheme["repeats"] > 1:
        roc_note = f"out-of-fold scores of all {scheme['repeats']} repeats pooled per experiment"
    roc_png = plots.roc_figure(curves, note=roc_note, svg_to=out_dir / "roc_curves.svg")
    _write_atomic(out_dir / ROC_PNG, roc_png)

    experiments = _experiment_rows(metrics)
    n_cases = max((e["n"] for e in experiments if e["n"] is not None), default=None)
    n_pos = max((e["n_pos"] for e in experiments if e["n_pos"] is not None), default=None)
    if n_cases is None and not predictions.empty and "case_id" in predictions.columns:
        n_cases = int(predictions["case_id"].nunique())
    fails = _failures(failures)
    errors = [{"name": str(k), "message": _text(v)} for k, v in experiment_errors.items()]

    context = {
        "title": _text(title) or "radiodeep report",
        "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scheme": scheme,
        "positive_label": pos,
        "positive_named": pos_named,
        "negative_label": neg,
        "negative_prose": neg_prose,
        "label_raw": label,
        "n_cases": n_cases,
        "n_pos": n_pos,
        "experiments": experiments,
        "any_below_chance": any(e["below_chance"] for e in experiments),
        "has_perm": any(e["perm_p"] is not None for e in experiments),
        "errors": errors,
        "roc": {"png": _b64(roc_png), "width": _css_width(roc_png), "n": len(curves), "file": ROC_PNG,
                "curves": [{"name": c.name, "auc": fmt_auc(c.auc), "n": c.n, "n_pos": c.n_pos,
                            "colour": plots.curve_style(i, len(curves))[0]} for i, c in enumerate(curves)],
                "missing": [e["name"] for e in experiments if e["name"] not in {c.name for c in curves}]},
        "confusion": _confusion(metrics, predictions, pos, neg),
        "per_repeat": _per_repeat(metrics, predictions, scheme),
        "selection": _selection(selection, order),
        "top_n": TOP_FEATURES,
        "delong": _delong(delong, order),
        "failures": fails,
        "failure_stages": sorted({f["stage"] for f in fails if f["stage"]}),
        "contact_sheet": _contact_sheet(contact_sheet),
        "contact_sheet_requested": contact_sheet is not None,
        "provenance": _provenance(provenance),
        "random_weights": _random_weights(provenance),
        "paper": paper,  # cohort table, calibration, methods paragraph, TRIPOD (radiodeep.paper)
    }
    html = _environment().get_template(TEMPLATE_NAME).render(**context)
    path = out_dir / "report.html"
    _write_atomic(path, html.encode("utf-8"))
    return path


__all__ = ["write_report", "fmt_auc", "fmt_pct", "fmt_p"]
