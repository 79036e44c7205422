"""What a paper needs from a run: the cohort table, calibration (curves and Brier score), a
methods paragraph generated from what was done, and a TRIPOD checklist.

Everything here is a function of the run record and the tables beside it (``report.html`` stays
a pure function of the record). Calibration uses the out-of-fold scores of ``predictions.csv``
(all repeats pooled), only for classifiers whose score is a probability (the SVMs' decision
function is no probability: no Brier score, no curve). The figure is written beside the report
as ``calibration.svg`` and ``calibration.png`` (300 dpi).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["brier_score", "cohort_summary", "calibration_points", "paper_context", "methods_text",
           "tripod_items", "CALIBRATION_BINS"]

CALIBRATION_BINS = 5  # equal-width bins of the predicted probability
PROBABILISTIC = {"random_forest", "naive_bayes", "logistic_regression", "decision_tree"}


def brier_score(y_true, prob) -> float:
    """Mean squared difference between P(positive) and the 0/1 outcome (lower is better)."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


# --------------------------------------------------------------------------- cohort
def _median_iqr(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "\u2014"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.4g} ({q1:.4g}\u2013{q3:.4g})"


def cohort_summary(cohort, config) -> dict:
    """The cohort table's data: eligible cases per class, exclusions, covariate summaries
    (numeric: median (IQR); categorical: counts), overall and per class."""
    labels = cohort.labels
    classes = {v: labels.count(v) for v in sorted(set(labels)) if v}
    cov = config.cohort.covariates
    if cov:
        names = list(cov)
    else:  # every other manifest column is kept as a covariate: summarise them all
        names = sorted({k for c in cohort.cases for k in c.covariates})
    frame = pd.DataFrame([{**{n: c.covariates.get(n, "") for n in names}, "_label": c.label}
                          for c in cohort.cases])
    rows = []
    for n in names:
        col = frame[n].astype(str).str.strip() if len(frame) else pd.Series(dtype=str)
        numeric = len(col) and pd.to_numeric(col.replace("", np.nan), errors="coerce").notna().sum() == \
            (col != "").sum() and (col != "").any()
        missing = int((col == "").sum())
        if numeric:
            row = {"name": n, "kind": "numeric", "summary": "median (IQR)", "overall": _median_iqr(col),
                   "per_class": {k: _median_iqr(col[frame["_label"] == k]) for k in classes}}
        else:
            counts = col[col != ""].value_counts().sort_index()
            row = {"name": n, "kind": "categorical", "summary": "n per value",
                   "overall": ", ".join(f"{k}: {v}" for k, v in counts.items()),
                   "per_class": {k: ", ".join(f"{a}: {b}" for a, b in
                                              col[(frame["_label"] == k) & (col != "")].value_counts()
                                              .sort_index().items()) for k in classes}}
        row["missing"] = missing
        rows.append(row)
    excluded: dict[str, int] = {}
    for f in cohort.excluded:
        excluded[f.stage] = excluded.get(f.stage, 0) + 1
    return {"n_cases": len(cohort), "positive_label": cohort.positive_label, "classes": classes,
            "excluded": len(cohort.excluded), "excluded_by_stage": excluded, "covariates": rows}


# --------------------------------------------------------------------------- calibration
def calibration_points(y, prob, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Per non-empty equal-width bin: mean predicted probability, observed fraction, n."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(prob, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows = [(p[idx == b].mean(), y[idx == b].mean(), int((idx == b).sum())) for b in range(bins) if (idx == b).any()]
    return pd.DataFrame(rows, columns=["predicted", "observed", "n"])


def _calibration_figure(curves: dict[str, pd.DataFrame]):
    from matplotlib.figure import Figure

    from .plots import curve_style, mpl_text

    fig = Figure(figsize=(5.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls=":", label="perfect calibration")
    for i, (name, pts) in enumerate(curves.items()):
        colour, style = curve_style(i, len(curves))
        ax.plot(pts["predicted"], pts["observed"], marker="o", color=colour, ls=style, lw=1.5,
                label=mpl_text(name))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (out-of-fold)")
    ax.set_ylabel("observed fraction positive")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _save_figure(fig, out_dir: Path, stem: str) -> tuple[bytes, bytes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=300, facecolor="white", metadata={"Software": None})
    fig.savefig(svg, format="svg", facecolor="white", metadata={"Date": None, "Creator": None})
    (out_dir / f"{stem}.png").write_bytes(png.getvalue())
    (out_dir / f"{stem}.svg").write_bytes(svg.getvalue())
    return png.getvalue(), svg.getvalue()


# --------------------------------------------------------------------------- methods and TRIPOD
def _fmt_params(d: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(d.items())) if d else "defaults"


def methods_text(record) -> str:
    """A methods paragraph stating what the run did, from the record alone."""
    cfg = record.config or {}
    env = (record.environment or {}).get("packages", {})
    coh = getattr(record, "cohort", None) or {}
    parts = []
    if coh:
        classes = "; ".join(f"{k}: {v}" for k, v in coh.get("classes", {}).items())
        parts.append(f"The cohort comprised {coh.get('n_cases')} eligible cases ({classes}; positive class "
                     f"{coh.get('positive_label')!s}); {coh.get('excluded', 0)} case(s) were excluded, each "
                     f"listed with the reason.")
    roi = cfg.get("roi") or {}
    routes = record.routes
    feats = cfg.get("features") or {}
    if "handcrafted" in routes:
        prov = routes["handcrafted"].provenance
        params = prov.get("params") or {}
        setting = params.get("setting") or {}
        parts.append(
            f"Handcrafted features ({routes['handcrafted'].n_features}) were computed with PyRadiomics "
            f"{prov.get('pyradiomics_version', env.get('pyradiomics-bhklab', '?'))} in "
            f"{(feats.get('handcrafted') or {}).get('mode', '3d').upper()} mode (image types "
            f"{', '.join(sorted(params.get('imageType') or {})) or 'Original'}; feature classes "
            f"{', '.join(sorted(params.get('featureClass') or {})) or 'all'}; settings: {_fmt_params(setting)}).")
    if "deep" in routes:
        prov = routes["deep"].provenance
        d = feats.get("deep") or {}
        w = prov.get("weights") or {}
        wtxt = w.get("source") or w.get("file") or w.get("name") or d.get("weights")
        sha = w.get("sha256")
        parts.append(
            f"Deep features ({routes['deep'].n_features}) were the {d.get('activation', 'post_relu').replace('_', '-')} "
            f"activations of layer {d.get('layer')} of {d.get('backbone')} with weights {wtxt}"
            + (f" (SHA-256 {sha})" if sha else " (random, seeded weights: for testing only)" if d.get("weights") is None else "")
            + f", fed the ROI crop (ROI settings: {_fmt_params({k: v for k, v in roi.items() if not isinstance(v, dict)})}; "
            f"channel strategy {d.get('channels')}), computed with torch {env.get('torch', '?')}.")
    if "clinical" in routes:
        enc = routes["clinical"].provenance.get("encoding") or {}
        desc = ", ".join(f"{k} ({v['kind']})" for k, v in enc.items())
        parts.append(f"Clinical covariates {desc} were used as features (categorical ones as indicator "
                     f"columns); cases with a missing covariate were excluded, none imputed.")
    exps = []
    for e in cfg.get("experiments") or []:
        sel = e.get("select") or {}
        if sel.get("method", "none") == "none":
            stxt = "no feature selection"
        else:
            name = {"relieff": "Relief-F", "su": "symmetric uncertainty"}.get(sel["method"], sel["method"])
            k = f"the top {sel['k_per_route']} of each route" if sel.get("k_per_route") else f"the top {sel.get('k')}"
            stxt = f"{name} ranking keeping {k}"
            if sel.get("method") == "relieff":
                stxt += f" ({sel.get('neighbours')} neighbours)"
            if sel.get("correlation_threshold") is not None:
                stxt += f", correlated features (|r| > {sel['correlation_threshold']}) removed"
        clf = e.get("classifier") or {}
        from .experiment import CLASSIFIERS

        spec = CLASSIFIERS.get(clf.get("name"))
        params = {**(spec.defaults if spec else {}), **{k: v for k, v in clf.items() if k != "name"}}
        exps.append(f"{e['name']} ({'+'.join(e['features'])}; {stxt}; {clf.get('name')}, {_fmt_params(params)})")
    if exps:
        parts.append("Experiments: " + "; ".join(exps) + ". Feature selection and scaling (SVMs, logistic "
                     "regression) were fitted on the training cases of each fold only; random seed "
                     f"{(cfg.get('evaluation') or {}).get('seed', 0)}.")
    ev = cfg.get("evaluation") or {}
    scheme = ev.get("scheme", "loo")
    if scheme == "loo":
        vtxt = "leave-one-out cross-validation"
    elif scheme == "repeated_kfold":
        vtxt = f"{ev.get('repeats')} repeats of stratified {ev.get('folds')}-fold cross-validation (seed {ev.get('seed')})"
    else:
        vtxt = f"an external test set (trained on split '{ev.get('train_split')}', tested on '{ev.get('test_split')}')"
    level = round(100 * float(ev.get("ci_level", 0.95)))
    parts.append(
        f"Performance was estimated by {vtxt} from out-of-fold scores (a case is predicted positive above "
        f"0.5 on P(positive), above 0 on an SVM's decision function): AUC with DeLong's {level}% confidence "
        f"interval, accuracy, sensitivity and specificity with Wilson {level}% intervals, pairwise DeLong tests "
        f"between experiments, and the Brier score and a calibration curve for probabilistic classifiers"
        + (f"; a label-permutation test with {ev['permutations']} permutations" if ev.get("permutations") else "")
        + ".")
    if getattr(record, "models", None):
        parts.append("Final models were refitted on all eligible cases with the same pipeline and saved "
                     "with their SHA-256 and package versions.")
    parts.append(f"Software: radiodeep {env.get('radiodeep', '?')}, Python {(record.environment or {}).get('python', '?')}, "
                 f"scikit-learn {env.get('scikit-learn', '?')}, numpy {env.get('numpy', '?')}"
                 + (f", PyRadiomics {env['pyradiomics-bhklab']}" if "pyradiomics-bhklab" in env else "")
                 + (f", torch {env['torch']}" if "torch" in env and "deep" in routes else "") + ".")
    return " ".join(parts)


def tripod_items(record) -> list[dict]:
    """TRIPOD (2015) items a run can document: which it does ("yes"/"partly") and which are the authors'."""
    coh = getattr(record, "cohort", None) or {}
    has_cov = bool(coh.get("covariates"))
    done = bool(record.metrics)
    items = [
        ("4a", "Source of data, study design", "partly", "manifest and case ids; the design is the authors'"),
        ("5a", "Participants: eligibility", "partly", "exclusions with reasons (cohort table); criteria are the authors'"),
        ("6a", "Outcome definition", "partly", f"positive class {record.positive_label!s}; its clinical definition is the authors'"),
        ("7a", "Predictors: definition and measurement", "yes", "methods paragraph: routes, settings, weights and hashes"),
        ("8", "Sample size", "yes" if coh else "partly", "cases and events per class (cohort table)"),
        ("9", "Missing data", "yes", "cases failing a route or missing a covariate are excluded and listed, none imputed"),
        ("10a", "Handling of predictors", "yes", "selection and scaling fitted within each fold"),
        ("10b", "Model type, building, predictor selection", "yes", "experiments: selector, k, classifier and its settings"),
        ("10d", "Measures of performance", "yes" if done else "no", "AUC (DeLong CI), accuracy/sensitivity/specificity (Wilson CI), Brier, calibration"),
        ("13a", "Participant flow", "yes" if coh else "partly", "eligible and excluded cases with reasons"),
        ("13b", "Participant characteristics", "yes" if has_cov else "partly", "covariate summaries per class" if has_cov else "no covariates in the manifest"),
        ("14a", "Number of participants and events", "yes" if coh else "partly", "cohort table"),
        ("15a", "Full model presentation", "partly" if getattr(record, "models", None) else "no", "final model files with sidecars (models/)"),
        ("16", "Model performance", "yes" if done else "no", "metrics with confidence intervals, calibration"),
        ("1-3, 18-22", "Title, abstract, introduction, discussion, funding", "no", "the authors'"),
    ]
    return [{"item": i, "topic": t, "status": s, "where": w} for i, t, s, w in items]


def paper_context(record, out_dir: Path, predictions: pd.DataFrame, metrics: pd.DataFrame) -> dict:
    """The report's paper section; writes ``calibration.svg`` / ``.png`` when there is a curve."""
    import base64

    curves, briers = {}, []
    if not predictions.empty and "brier" in metrics.columns:
        for _, row in metrics.iterrows():
            b = row.get("brier")
            if b is None or (isinstance(b, float) and math.isnan(b)):
                continue
            p = predictions[predictions["experiment"] == row["experiment"]]
            if p.empty:
                continue
            curves[str(row["experiment"])] = calibration_points(p["y_true"], p["score"])
            briers.append({"experiment": str(row["experiment"]), "brier": f"{float(b):.3f}"})
    fig = None
    if curves:
        png, _ = _save_figure(_calibration_figure(curves), Path(out_dir), "calibration")
        fig = {"png": base64.b64encode(png).decode("ascii"), "files": ["calibration.svg", "calibration.png"]}
    return {"cohort": getattr(record, "cohort", None) or None, "calibration": fig, "brier": briers,
            "methods": methods_text(record), "tripod": tripod_items(record)}
