"""Read every number report.html prints and compare it with metrics.csv and delong.csv."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from radiodeep.report import fmt_auc, fmt_p, fmt_pct, fmt_signed


class _Tables(HTMLParser):
    """Every table: its class, its header texts and its rows of cells (text + text per span class)."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._cell = None
        self._span: list[str] = []
        self._th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"cls": a.get("class", ""), "head": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = {"text": "", "spans": {}, "th": tag == "th"}
        elif tag == "span":
            self._span.append(a.get("class", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None
        elif tag == "span" and self._span:
            self._span.pop()

    def handle_data(self, data):
        if self._cell is None:
            return
        self._cell["text"] += data
        if self._span:
            cls = self._span[-1]
            self._cell["spans"][cls] = self._cell["spans"].get(cls, "") + data


def _ci(lo, hi, fmt) -> str:
    return f"{fmt(lo).rstrip('%')}\u2013{fmt(hi)}"


def check_report_numbers(out: Path) -> int:
    """Assert that every number of report.html equals metrics.csv / delong.csv at its printed
    precision; returns how many numbers were compared."""
    text = (out / "report.html").read_text(encoding="utf-8")
    metrics = pd.read_csv(out / "metrics.csv")
    delong = pd.read_csv(out / "delong.csv")
    parser = _Tables()
    parser.feed(text)
    tables = parser.tables
    by_name = {r["experiment"]: r for _, r in metrics.iterrows()}
    checked = 0

    # the summary table
    summary = next(t for t in tables if "summary" in t["cls"])
    rows = [r for r in summary["rows"] if r and not r[0]["th"]]
    assert len(rows) == len(metrics)
    for r in rows:
        name = r[0]["text"]
        m = by_name[name]
        assert r[4]["text"] == f"{int(m['n'])} ({int(m['n_pos'])})", name
        assert r[5]["spans"]["main-val"] == fmt_auc(m["auc"]), name
        assert r[5]["spans"]["ci"] == _ci(m["auc_ci_low"], m["auc_ci_high"], fmt_auc), name
        for col, key in ((6, "accuracy"), (8, "sensitivity"), (9, "specificity")):
            ci = r[col]["spans"]["ci"]
            assert r[col]["text"] == fmt_pct(m[key]) + ci, (name, key)
            assert ci == _ci(m[f"{key}_ci_low"], m[f"{key}_ci_high"], fmt_pct), (name, key)
        assert r[7]["text"] == fmt_pct(m["balanced_accuracy"]), name
        checked += 14

    # the ROC legend
    legend = next(t for t in tables if t["rows"] and any("AUC (pooled)" in c["text"] for c in t["rows"][0]))
    rows = [r for r in legend["rows"] if r and not r[0]["th"]]
    assert len(rows) == len(metrics)
    for r in rows:
        m = by_name[r[0]["text"]]
        assert r[1]["text"] == fmt_auc(m["auc"]), r[0]["text"]
        assert r[2]["text"] == f"{int(m['n'])} ({int(m['n_pos'])})"
        checked += 3

    # the confusion matrices and the line under each
    cards = re.findall(r'<h3>((?:[^<]|<wbr>)*)</h3>\s*<table class="cm">(.*?)</table>\s*<div class="sub">(.*?)</div>',
                       text, flags=re.S)
    assert len(cards) == len(metrics)
    for raw_name, table, line in cards:
        m = by_name[html.unescape(raw_name.replace("<wbr>", ""))]
        cells = [int(v) for v in re.findall(r'<td class="(?:hit|miss|tot)">(\d+)', table)]
        tp, fn, fp, tn = (int(m[k]) for k in ("tp", "fn", "fp", "tn"))
        assert cells == [tp, fn, tp + fn, fp, tn, fp + tn, tp + fp, fn + tn, tp + fn + fp + tn]
        want = (f"Sensitivity {fmt_pct(m['sensitivity'])} \u00b7 specificity {fmt_pct(m['specificity'])}"
                f" \u00b7 PPV {fmt_pct(m['ppv'])} \u00b7 NPV {fmt_pct(m['npv'])}")
        assert html.unescape(line) == want
        checked += 13

    # the DeLong table: AUCs are the metrics' AUCs, the rest is delong.csv
    dl = next((t for t in tables if t["cls"] == "dl"), None)
    rows = [] if dl is None else [r for r in dl["rows"] if r and not r[0]["th"]]
    assert len(rows) == len(delong)
    for r, (_, d) in zip(rows, delong.iterrows()):
        assert (r[0]["text"], r[2]["text"]) == (d["experiment_a"], d["experiment_b"])
        assert r[1]["text"] == fmt_auc(d["auc_a"]) == fmt_auc(by_name[d["experiment_a"]]["auc"])
        assert r[3]["text"] == fmt_auc(d["auc_b"]) == fmt_auc(by_name[d["experiment_b"]]["auc"])
        assert r[4]["text"] == fmt_signed(d["diff"])
        assert r[5]["text"] == fmt_signed(d["z"], 2)
        assert html.unescape(r[6]["text"]) == fmt_p(d["p"])
        checked += 5
    return checked
