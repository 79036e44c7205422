"""report.html: contents, escaping, self-containment, and a real headless-browser check.

The inputs are computed, not typed in: random features with and without signal, radiodeep's
own leave-one-out evaluation of scikit-learn pipelines (selection refitted in every fold), real
AUCs, DeLong and Wilson intervals (checked against independent values in test_evaluation.py).
"""

from __future__ import annotations

import base64
import importlib.resources
import os
import platform
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from radiodeep.config import EvaluationConfig
from radiodeep.evaluation import evaluate, pairwise_delong
from radiodeep.provenance import package_versions
from radiodeep.report import fmt_auc, fmt_p, fmt_pct, write_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot_report.py"
EVIL_ID = "<script>alert('x')</script>"
EVIL_ERROR = 'ValueError: k=<img src="http://evil.example/x.png"> exceeds 3 features & more'
WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


# --------------------------------------------------------------------------- a small study
def _loo(name, X, y, ids, features, routes, k):
    """radiodeep's own leave-one-out (selection refitted in every fold): predictions, metrics
    and selection frequency. The statistics themselves are tested in test_evaluation.py against
    scikit-learn, scipy and the definitions; here they are only inputs of the report."""
    steps = [StandardScaler(), LogisticRegression(C=0.5, solver="liblinear")]
    if k is not None:
        steps.insert(0, SelectKBest(f_classif, k=k))
    Xf = pd.DataFrame(X, index=ids, columns=features)
    res = evaluate(make_pipeline(*steps), Xf, pd.Series(y, index=ids), EvaluationConfig(scheme="loo"),
                   experiment=name)
    freq = res.selection_frequency
    route_of = dict(zip(features, routes))
    sel = pd.DataFrame({"experiment": name, "feature": list(freq.index),
                        "route": [route_of[f] for f in freq.index], "frequency": freq.to_numpy()})
    return res, (sel if k is not None else sel.iloc[:0])


def _contact_sheet(path: Path, n: int, rng) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.2))
    for i in range(n):
        ax = fig.add_subplot(2, (n + 1) // 2, i + 1)
        yy, xx = np.mgrid[-1:1:48j, -1:1:48j]
        blob = np.exp(-((xx - rng.normal(0, .1)) ** 2 + (yy - rng.normal(0, .1)) ** 2) / 0.15)
        ax.imshow(blob + 0.25 * rng.random((48, 48)), cmap="gray")
        ax.set_axis_off()
        ax.set_title(f"case-{i:03d}", fontsize=6)
    fig.savefig(path, format="png", dpi=80)
    return path


def make_study(tmp_path: Path, n: int = 26, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    y = np.array([1] * (n // 2 - 3) + [0] * (n - n // 2 + 3))
    rng.shuffle(y)
    ids = [f"case-{i:03d}" for i in range(n)]
    deep_names = [f"fc7_{j:04d}" for j in rng.choice(4096, 24, replace=False)]
    hc_names = [f"original_{c}_{f}" for c in ("firstorder", "glcm", "glszm", "shape")
                for f in ("Energy", "Entropy", "Contrast", "Sphericity")]
    deep = rng.normal(size=(n, len(deep_names)))
    deep[:, :4] += 1.1 * y[:, None]  # a little real signal in four deep features
    hc = rng.normal(size=(n, len(hc_names)))  # handcrafted: noise only
    both = np.hstack([deep, hc])
    spec = [("deep_lr", deep, deep_names, ["deep"] * 24, "deep", "su", 5),
            ("handcrafted_noise", hc, hc_names, ["handcrafted"] * 16, "handcrafted", "none", None),
            ("combined.su+lr", both, deep_names + hc_names, ["deep"] * 24 + ["handcrafted"] * 16,
             "deep+handcrafted", "su", 8)]
    preds, sels, rows = [], [], []
    for name, X, feats, routes, route_str, selector, k in spec:
        res, s = _loo(name, X, y, ids, feats, routes, k)
        preds.append(res.predictions)
        sels.append(s)
        rows.append({"experiment": name, "routes": route_str, "selector": selector,
                     "k": "all" if k is None else str(k), "classifier": "logistic", **res.metrics})
    predictions = pd.concat(preds, ignore_index=True)
    metrics = pd.DataFrame(rows)
    metrics["perm_p"] = [0.0099, 0.62, 0.031]
    delong = pairwise_delong(predictions)
    failures = pd.DataFrame([
        {"case_id": EVIL_ID, "stage": "deep", "reason": "ROI mask is empty after resampling"},
        {"case_id": "case-099", "stage": "input", "reason": "image file not found: /data/case-099.nrrd"},
    ])
    provenance = {
        "config": {"name": "study <b>&", "cohort": {"manifest": "cohort.csv", "positive_label": "malignant"},
                   "features": {"deep": {"backbone": "alexnet", "weights": WEIGHTS_URL, "layer": "fc7"},
                                "handcrafted": {"mode": "3d", "settings": {"binWidth": 25}}},
                   "evaluation": {"scheme": "loo", "seed": 42, "ci_level": 0.95, "permutations": 100}},
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "packages": package_versions(("numpy", "pandas", "scikit-learn"))},
        "routes": {"deep": {"backbone": "alexnet", "weights": "IMAGENET1K_V1", "sha256": "7be5be79" * 8,
                            "layer": "fc7", "channels": ["r", "r", "r"]},
                   "handcrafted": {"pyradiomics": "3.1.4", "settings": {"binWidth": 25, "label": 1}}},
        "seed": 42, "started": "2024-05-01T10:00:00+00:00", "finished": "2024-05-01T10:03:21+00:00",
    }
    return {
        "title": "Nodule study <b>&amp; friends</b>",
        "metrics": metrics, "predictions": predictions,
        "selection": pd.concat(sels, ignore_index=True), "delong": delong, "failures": failures,
        "experiment_errors": {"broken_exp": EVIL_ERROR}, "provenance": provenance,
        "contact_sheet": _contact_sheet(tmp_path / "crops.png", 8, rng), "positive_label": "malignant",
    }


class _Resources(HTMLParser):
    """Every tag and its attributes, to see what the page would load."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    inputs = make_study(tmp)
    path = write_report(tmp / "out", **inputs)
    return inputs, path, path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- tests
def test_report_written_with_roc_png(study):
    inputs, path, _ = study
    assert path == path.parent / "report.html" and path.is_file()
    roc = path.parent / "roc_curves.png"
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_mode & 0o044 or os.umask(os.umask(0)) & 0o044  # readable as the umask allows
    from matplotlib.image import imread

    img = imread(roc)
    assert img.shape[0] > 400 and img.shape[1] > 400


def test_experiments_and_formatted_metrics(study):
    inputs, _, text = study
    m = inputs["metrics"]
    plain = text.replace("<wbr>", "")  # long names may carry line-break hints
    for _, r in m.iterrows():
        assert str(escape(r["experiment"])) in plain
        assert f'<td class="name">{escape(r["experiment"])}' in plain  # a row of the summary table
        assert fmt_auc(r["auc"]) in text
        assert f"{fmt_auc(r['auc_ci_low'])}\u2013{fmt_auc(r['auc_ci_high'])}" in text
        assert fmt_pct(r["accuracy"]) in text
        assert fmt_pct(r["sensitivity"]) in text
    assert "broken_exp" in text  # the experiment that could not run
    assert "malignant" in text
    assert "DeLong" in text and "Wilson" in text and "below 0.5" in text
    # pairwise DeLong p-values, formatted as in the table
    for p in inputs["delong"]["p"]:
        assert str(escape(fmt_p(p))) in text
    # permutation p-values shown because the column exists
    assert "Perm. p" in text and "0.031" in text


def test_confusion_matrices_name_the_positive_label(study):
    inputs, _, text = study
    assert "Actual<br>malignant" in text and "Predicted<br>not malignant" in text
    r = inputs["metrics"].iloc[0]
    block = text[text.index('<div class="card">'):]
    block = block[:block.index("</table>")]
    assert f">{r['tp']}<" in block and f">{r['tn']}<" in block


def test_images_embedded(study):
    inputs, _, text = study
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # ROC + one selection plot per experiment with selection (2) + contact sheet
    assert len(imgs) == 4
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    sheet = base64.b64encode(inputs["contact_sheet"].read_bytes()).decode()
    assert sheet in imgs
    # the selection plot of the experiment without selection is skipped
    assert 'alt="selection frequency, handcrafted_noise"' not in text
    assert 'alt="selection frequency, deep_lr"' in text


def test_failures_listed(study):
    inputs, _, text = study
    for reason in inputs["failures"]["reason"]:
        assert str(escape(reason)) in text
    assert "case-099" in text


def test_user_strings_escaped(study):
    _, _, text = study
    assert "<script" not in text.lower()
    assert str(escape(EVIL_ID)) in text  # &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;
    assert "&lt;b&gt;&amp;amp; friends&lt;/b&gt;" in text  # the title, escaped once
    assert "<b>&amp; friends</b>" not in text
    assert "&lt;img src=" in text  # the error message is text, not an element
    assert "evil.example" in text


def test_self_contained(study):
    _, _, text = study
    parser = _Resources()
    parser.feed(text)
    for tag, attrs in parser.tags:
        for key in ("src", "href", "srcset", "poster", "data", "action", "background"):
            v = (attrs.get(key) or "").strip()
            if v:
                assert v.startswith(("data:", "#")), f"<{tag} {key}={v[:60]!r}> is not inline"
        if tag == "link":
            assert attrs.get("rel") == "icon" and attrs.get("href", "").startswith("data:")
        assert tag not in ("script", "iframe", "object", "embed", "base")
    lowered = text.lower()
    assert "@import" not in lowered and "@font-face" not in lowered
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", lowered)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", lowered)
    assert "content-security-policy" in lowered and "default-src 'none'" in lowered
    # URLs may appear as text (weights in the provenance), never as something to load
    assert WEIGHTS_URL in text


def test_provenance(study):
    _, _, text = study
    assert "Random seed" in text and ">42<" in text
    assert "3 min 21 s" in text
    assert "IMAGENET1K_V1" in text and "binWidth: 25" in text
    assert "scikit-learn" in text
    assert "<pre>name: study &lt;b&gt;&amp;" in text  # config as escaped YAML


def test_sparse_inputs_do_not_break(tmp_path):
    """Missing columns, NaN, empty frames, no contact sheet: a dash where a value is missing."""
    metrics = pd.DataFrame([{"experiment": "only_auc", "auc": 0.4375, "n": 10, "n_pos": 5},
                            {"experiment": "all_nan", "auc": np.nan, "accuracy": np.nan}])
    preds = pd.DataFrame({"case_id": [f"c{i}" for i in range(10)], "y_true": [0, 1] * 5,
                          "score": np.linspace(0, 1, 10)[::-1], "y_pred": [1, 0] * 5,
                          "fold": range(10), "repeat": 0, "experiment": "only_auc"})
    path = write_report(tmp_path, title="sparse", metrics=metrics, predictions=preds,
                        selection=pd.DataFrame(columns=["experiment", "feature", "route", "frequency"]),
                        delong=pd.DataFrame(), failures=pd.DataFrame(columns=["case_id", "stage", "reason"]),
                        experiment_errors={}, provenance={}, contact_sheet=None)
    text = path.read_text(encoding="utf-8").replace("<wbr>", "")
    assert "0.438" in text and "only_auc" in text and "all_nan" in text
    assert "\u2014" in text
    assert "No case was excluded" in text and "No experiment used feature selection" in text
    assert "No pairwise comparison" in text and "No contact sheet" in text
    assert "No configuration was recorded" in text
    assert (tmp_path / "roc_curves.png").is_file()
    # confusion matrix computed from the predictions when the counts are missing
    assert "false negative" in text


def test_nothing_ran(tmp_path):
    path = write_report(tmp_path, title="t", metrics=pd.DataFrame(), predictions=pd.DataFrame(),
                        selection=pd.DataFrame(), delong=pd.DataFrame(), failures=pd.DataFrame(),
                        experiment_errors={"a": "no features"}, provenance={"seed": 1},
                        contact_sheet=tmp_path / "missing.png")
    text = path.read_text(encoding="utf-8")
    assert "No experiment produced results" in text and "no features" in text
    assert "could not be embedded" in text
    assert (tmp_path / "roc_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_repeated_kfold_pools_repeats(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    rows = [{"case_id": f"c{i}", "y_true": y[i], "score": rng.random() + 0.3 * y[i], "y_pred": 0,
             "fold": i % 5, "repeat": r, "experiment": "e1"} for r in range(3) for i in range(20)]
    preds = pd.DataFrame(rows)
    auc = roc_auc_score(preds["y_true"], preds["score"])
    metrics = pd.DataFrame([{"experiment": "e1", "auc": auc, "n": 20, "n_pos": 10}])
    path = write_report(tmp_path, title="rkf", metrics=metrics, predictions=preds, selection=pd.DataFrame(),
                        delong=pd.DataFrame(), failures=pd.DataFrame(), experiment_errors={},
                        provenance={"config": {"evaluation": {"scheme": "repeated_kfold", "folds": 5,
                                                              "repeats": 3}}},
                        contact_sheet=None)
    text = path.read_text(encoding="utf-8")
    assert "3\u00d7 repeated 5-fold cross-validation" in text
    assert "all 3 repeats together" in text


def _one_pass_report(tmp_path, evaluation: dict):
    """The report of 12 cases scored once each (repeat 0), under the given evaluation settings."""
    y = np.array([0, 1] * 6)
    preds = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "y_true": y, "score": y * 0.5 + 0.1,
                          "y_pred": y, "fold": range(12), "repeat": 0, "experiment": "e1"})
    metrics = pd.DataFrame([{"experiment": "e1", "auc": 1.0, "n": 12, "n_pos": 6}])
    return write_report(tmp_path, title="loo", metrics=metrics, predictions=preds, selection=pd.DataFrame(),
                        delong=pd.DataFrame(), failures=pd.DataFrame(), experiment_errors={},
                        provenance={"config": {"evaluation": evaluation}}, contact_sheet=None)


def test_loo_report_mentions_no_repeats(tmp_path):
    """The config always carries 'repeats' (default 10); under LOO nothing is repeated."""
    path = _one_pass_report(tmp_path, {"scheme": "loo", "folds": 5, "repeats": 10})
    text = path.read_text(encoding="utf-8")
    assert "leave-one-out" in text
    # the prose between the stylesheet and the config dump (which shows every key)
    prose = text.split("<body")[1].split("<h3>Resolved configuration</h3>")[0].replace("<wbr>", "")
    assert "repeats" not in prose and "repeated" not in prose


def test_formatters():
    assert fmt_auc(0.81234) == "0.812" and fmt_auc(None) == fmt_auc(np.nan) == "\u2014"
    assert fmt_pct(0.5) == "50.0%" and fmt_p(0.0004) == "<0.001" and fmt_p(0.04567) == "0.046"


def test_template_ships_inside_the_package():
    tpl = importlib.resources.files("radiodeep") / "templates" / "report.html.j2"
    assert tpl.is_file()


def _chromium() -> str | None:
    for c in ("chromium", "chromium-browser"):
        if shutil.which(c):
            return shutil.which(c)
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_report(study, tmp_path):
    _, path, _ = study
    out = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path), str(out), "--window-size", "1280,1600"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    from matplotlib.image import imread

    img = imread(out)
    assert img.shape[:2] == (1600, 1280)
    assert img[..., :3].std() > 0.05  # not a blank page


@pytest.mark.skipif(_chromium() is None, reason="Chromium not installed (apt-get install chromium)")
def test_screenshot_script_fails_on_missing_report(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.html"), str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and not (tmp_path / "x.png").exists()


def test_selection_chart_labels_stay_distinct():
    """Names that differ only in the middle (cut there, they looked the same) keep distinct labels."""
    from radiodeep import plots

    names = ["wavelet-LLH_glcm_ClusterProminence_binWidth25_resampled_Mean",
             "wavelet-LLH_glszm_ClusterProminence_binWidth25_resampled_Mean",
             "wavelet-LLH_glcm_ClusterShade_binWidth25_resampled_Mean",
             "wavelet-LLH_firstorder_Kurtosis"]
    prefix, labels = plots.feature_labels(names, width=20)
    assert prefix == "wavelet-LLH_"
    assert len(set(labels)) == len(names)
    for name, label in zip(names, labels):
        assert prefix + label.replace("\n", "") == name  # nothing is dropped
        assert all(len(line) <= 20 for line in label.split("\n"))
    # no shared prefix: names kept whole; a lone name keeps its prefix
    assert plots.feature_labels(["alexnet_fc7_r_0001", "original_glcm_Contrast"])[0] == ""
    assert plots.feature_labels(["original_glcm_Contrast"]) == ("", ["original_glcm_Contrast"])
    # the chart draws them (one line per wrapped piece)
    png = plots.selection_figure(names, ["handcrafted"] * 4, [1.0, 0.8, 0.5, 0.1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


class _PerRepeatTable(HTMLParser):
    """Rows of the per-repeat table: experiment -> list of cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self._in, self._row, self._cell = {}, False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "per-repeat" in (a.get("class") or ""):
            self._in = True
        elif self._in and tag == "tr" and "data-experiment" in a:
            self._row = a["data-experiment"]
            self.rows[self._row] = []
        elif self._in and self._row and tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif tag == "td" and self._cell is not None:
            self.rows[self._row].append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_per_repeat_variability_matches_predictions_csv(tmp_path):
    """Repeated k-fold through radiodeep's own evaluation: the report's per-repeat AUCs and
    accuracies, their mean, SD and range equal the ones computed here from predictions.csv."""
    rng = np.random.default_rng(3)
    y = np.array([0, 1] * 12)
    ids = [f"c{i:02d}" for i in range(24)]
    X = pd.DataFrame(rng.normal(size=(24, 4)) + 0.8 * y[:, None] * np.array([1, 0, 0, 0]), index=ids,
                     columns=list("abcd"))
    res = evaluate(make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear")), X,
                   pd.Series(y, index=ids), EvaluationConfig(scheme="repeated_kfold", folds=3, repeats=4, seed=1),
                   experiment="e1")
    res.predictions.to_csv(tmp_path / "predictions.csv", index=False)
    preds = pd.read_csv(tmp_path / "predictions.csv")
    metrics = pd.DataFrame([{"experiment": "e1", **res.metrics}])
    path = write_report(tmp_path, title="rkf", metrics=metrics, predictions=preds, selection=pd.DataFrame(),
                        delong=pd.DataFrame(), failures=pd.DataFrame(), experiment_errors={},
                        provenance={"config": {"evaluation": {"scheme": "repeated_kfold", "folds": 3,
                                                              "repeats": 4}}},
                        contact_sheet=None)
    parser = _PerRepeatTable()
    parser.feed(path.read_text(encoding="utf-8"))
    cells = parser.rows["e1"]
    aucs = [roc_auc_score(g["y_true"], g["score"]) for _, g in preds.groupby("repeat")]
    accs = [float((g["y_true"] == g["y_pred"]).mean()) for _, g in preds.groupby("repeat")]
    assert len(aucs) == 4 and len(set(np.round(aucs, 3))) > 1  # the repeats really differ
    assert cells[1] == f"{res.metrics['auc']:.3f}"
    assert cells[2] == ", ".join(f"{a:.3f}" for a in aucs)
    assert cells[3] == f"{np.mean(aucs):.3f} ({np.std(aucs, ddof=1):.3f})"
    assert cells[4] == f"{min(aucs):.3f}\u2013{max(aucs):.3f}"
    assert cells[5] == ", ".join(f"{100 * a:.1f}%" for a in accs)
    assert cells[6] == f"{100 * np.mean(accs):.1f}% ({100 * np.std(accs, ddof=1):.1f}%)"
    assert cells[7] == f"{100 * min(accs):.1f}%\u2013{100 * max(accs):.1f}%"


def test_per_repeat_table_absent_with_one_repeat(tmp_path):
    path = _one_pass_report(tmp_path, {"scheme": "repeated_kfold", "folds": 5, "repeats": 1})
    assert "per-repeat" not in path.read_text(encoding="utf-8")
