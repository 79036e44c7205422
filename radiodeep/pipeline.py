"""One study from config to report: validate -> extract -> evaluate -> report.

Per-case, label-free work (PyRadiomics features, frozen-CNN features) is cached
once, outside cross-validation; everything fitted across cases (selection,
scaling, the classifier) lives in an sklearn Pipeline refitted in every fold.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import Config
from .learned.schema import is_learned as _is_learned
from .errors import CaseFailure
from .features.store import RouteResult, export_csv
from .provenance import environment
from .validate import check_output_writable, check_routes, load_cohort

log = logging.getLogger(__name__)

__all__ = ["RunError", "RunResult", "run", "extract_routes", "evaluate_experiments"]

ROUTES = ("handcrafted", "deep", "image")  # image: the learned route (radiodeep/learned)


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why (every problem, each on a line)."""


@dataclass
class RunResult:
    output_dir: Path
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    delong: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    experiment_errors: dict[str, str] = field(default_factory=dict)
    features: dict[str, pd.DataFrame] = field(default_factory=dict)
    report: Path | None = None

    def summary(self) -> str:
        lines = []
        if not self.metrics.empty:
            cols = [c for c in ("experiment", "n", "accuracy", "auc", "auc_ci_low", "auc_ci_high",
                                "sensitivity", "specificity") if c in self.metrics]
            table = self.metrics[cols].copy()
            lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        for name, msg in self.experiment_errors.items():
            lines.append(f"experiment {name} could not run: {msg}")
        if not self.failures.empty:
            lines.append(f"{len(self.failures)} case problem(s): see {self.output_dir / 'failures.csv'}")
        for route, df in self.features.items():
            lines.append(f"features_{route}.csv: {df.shape[0]} cases x {df.shape[1]} features")
        if self.report is not None:
            lines.append(f"report: {self.report}")
        lines.append(f"outputs in: {self.output_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- stages
def prepare(config: Config, progress: bool, extracting: bool = True):
    """Check the output folder, the routes' settings (when features are to be extracted)
    and the cohort; apply the on_invalid policy. Nothing is computed before all pass."""
    out = config.output_dir
    reason = check_output_writable(out)
    if reason:
        raise RunError(reason)
    problems = check_routes(config) if extracting else []
    if problems:
        raise RunError("the feature settings cannot be used:\n" + "\n".join(f"  - {p}" for p in problems))
    report = load_cohort(config, check_images=True, progress=progress)
    if report.problems:
        raise RunError("the cohort cannot be used:\n" + "\n".join(f"  - {p}" for p in report.problems))
    cohort = report.cohort
    for note in report.notes:
        log.info("%s", note)
    if report.failures:
        listing = "\n".join(f"  - case {f.case_id}: {f.reason}" for f in report.failures)
        if config.cohort.on_invalid == "error":
            raise RunError(f"{len(report.failures)} invalid case(s); fix them or set "
                           f"cohort.on_invalid: skip to exclude them:\n{listing}")
        log.warning("excluding %d invalid case(s):\n%s", len(report.failures), listing)
        cohort = cohort.without(report.failures)
    labels = set(cohort.labels)
    if len(labels) < 2:
        raise RunError(f"after exclusions only label(s) {sorted(labels)} remain; a binary task needs both")
    return cohort


def _extractor(route: str):
    if route == "handcrafted":
        from .features.handcrafted import extract_handcrafted

        return extract_handcrafted
    if route == "image":  # learned route: the ROI tensors themselves, cached, never exported as CSV
        from .learned.route import extract_image

        return extract_image
    from .features.deep import extract_deep

    return extract_deep


def extract_routes(cohort, config: Config, *, progress: bool, qc: list | None = None) -> dict[str, RouteResult]:
    results = {}
    for route in ROUTES:
        if getattr(config.features, route) is None:
            continue
        t0 = time.perf_counter()
        log.info("extracting %s features for %d cases", route, len(cohort))
        extract = _extractor(route)
        kwargs = {"progress": progress}
        if route == "deep" and qc is not None:
            kwargs["qc"] = qc
        res = extract(cohort, config, **kwargs)
        for f in res.failures:
            log.warning("case %s failed in %s route: %s", f.case_id, route, f.reason)
        log.info("%s: %d cases x %d features in %.1f s (%d failed)", route, res.features.shape[0],
                 res.features.shape[1], time.perf_counter() - t0, len(res.failures))
        results[route] = res
    return results


def _read_exported(config: Config) -> dict[str, RouteResult]:
    out = config.output_dir
    results = {}
    for route in ROUTES:
        if getattr(config.features, route) is None or route == "image":  # image: re-read from its cache
            continue
        p = out / f"features_{route}.csv"
        if not p.exists():
            raise RunError(f"--only evaluate needs {p}; run 'radiodeep run CONFIG --only extract' first")
        df = pd.read_csv(p, index_col="case_id", dtype={"case_id": str})
        prov_p = p.with_suffix(".provenance.json")
        prov = json.loads(prov_p.read_text(encoding="utf-8")) if prov_p.exists() else {}
        results[route] = RouteResult(route, df.astype(float), provenance=prov)
    return results


def _failures_frame(failures: list[CaseFailure]) -> pd.DataFrame:
    return pd.DataFrame([f.to_dict() for f in failures], columns=["case_id", "stage", "reason"])


def _describe(exp) -> dict:
    sel = exp.select
    if sel.method == "none":
        k = "all"
    elif sel.k_per_route is not None:
        k = f"{sel.k_per_route} per route"
    else:
        k = str(sel.k)
    return {"routes": "+".join(exp.features), "selector": sel.method, "k": k,
            "classifier": exp.classifier.name}


def evaluate_experiments(config: Config, tables: dict[str, pd.DataFrame], y: pd.Series,
                         split: pd.Series | None, *, progress: bool):
    """Run every experiment; one that cannot run fails alone with its message."""
    from .evaluation import build_pipeline, delong_test, evaluate

    rows, preds, sels, errors = [], [], [], {}
    for exp in config.experiments:
        try:
            frames = [tables[r] for r in exp.features]
            X = pd.concat(frames, axis=1, join="inner")
            if X.columns.duplicated().any():
                dup = X.columns[X.columns.duplicated()].tolist()[:5]
                raise ValueError(f"feature names repeated across routes: {dup}")
            routes = {r: list(tables[r].columns) for r in exp.features}
            ids = X.index.intersection(y.index)
            X, yy = X.loc[ids], y.loc[ids]
            missing = y.index.difference(ids)
            if len(missing):
                log.info("experiment %s: %d case(s) without features in every route are left out",
                         exp.name, len(missing))
            if yy.nunique() < 2:
                raise ValueError("fewer than two classes among the cases with features")
            if _is_learned(exp):  # learned route (radiodeep/learned): a network trained in every fold
                from .learned.build import build_learned, cost_estimate

                cost = cost_estimate(exp, config, yy, None if split is None else split.loc[ids])
                log.info("%s", cost["text"])
                if progress:
                    print(cost["text"], file=sys.stderr, flush=True)
                pipe = build_learned(exp, config, X)
                if exp.classifier.name == "cnn_ensemble":  # members' records: radiodeep/learned/scratch.py
                    from .learned.scratch import clear_record

                    clear_record(config, exp.name)
            else:
                pipe = build_pipeline(exp, routes, config.evaluation.seed)
            res = evaluate(pipe, X, yy, config.evaluation, experiment=exp.name,
                           split=None if split is None else split.loc[ids], progress=progress,
                           n_jobs=config.execution.n_jobs)
        except Exception as err:  # noqa: BLE001 - one experiment fails alone
            log.error("experiment %s could not run: %s", exp.name, err)
            errors[exp.name] = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            continue
        rows.append({"experiment": exp.name, **_describe(exp), **res.metrics})
        preds.append(res.predictions)
        if getattr(exp.classifier, "name", None) == "cnn_ensemble":  # each member and combination beside it
            from .learned.scratch import ensemble_rows

            try:
                more, more_preds, _ = ensemble_rows(config, exp, res.predictions, _describe(exp))
                rows.extend(more)
                preds.append(more_preds)
            except Exception as err:  # noqa: BLE001 - the ensemble's own result stands
                log.error("experiment %s: its members could not be reported: %s", exp.name, err)
        freq = res.selection_frequency
        if freq is not None and len(freq):
            route_of = {c: r for r, cols in routes.items() for c in cols}
            sels.append(pd.DataFrame({"experiment": exp.name, "feature": freq.index,
                                      "route": [route_of.get(f, "") for f in freq.index],
                                      "frequency": freq.values}))
    metrics = pd.DataFrame(rows)
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(
        columns=["case_id", "y_true", "score", "y_pred", "fold", "repeat", "experiment"])
    selection = pd.concat(sels, ignore_index=True) if sels else pd.DataFrame(
        columns=["experiment", "feature", "route", "frequency"])
    if not selection.empty:
        selection = selection.sort_values(["experiment", "frequency", "feature"],
                                          ascending=[True, False, True], kind="mergesort")
    delong = _pairwise_delong(predictions, delong_test)
    return metrics, predictions, selection, delong, errors


def _pairwise_delong(predictions: pd.DataFrame, delong_test) -> pd.DataFrame:
    rows = []
    if predictions.empty:
        return pd.DataFrame(columns=["experiment_a", "experiment_b", "auc_a", "auc_b", "diff", "z", "p"])
    # one score per case per experiment (repeated schemes: mean over repeats)
    scores = predictions.groupby(["experiment", "case_id"])["score"].mean().unstack(0)
    truth = predictions.groupby("case_id")["y_true"].first()
    names = list(dict.fromkeys(predictions["experiment"]))
    for a, b in combinations(names, 2):
        both = scores[[a, b]].dropna()
        yt = truth.loc[both.index].to_numpy()
        if len(both) < 3 or len(np.unique(yt)) < 2:
            continue
        r = delong_test(yt, both[a].to_numpy(), both[b].to_numpy())
        rows.append({"experiment_a": a, "experiment_b": b, **r})
    return pd.DataFrame(rows, columns=["experiment_a", "experiment_b", "auc_a", "auc_b", "diff", "z", "p"])


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable), encoding="utf-8")


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, Path):
        return str(v)
    return str(v)


# --------------------------------------------------------------------------- the run
def run(config: Config, only: str | None = None) -> RunResult:
    """Run a study; ``only`` is None, ``"extract"`` or ``"evaluate"``."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    progress = config.execution.progress
    out = config.output_dir
    cohort = prepare(config, progress, extracting=only != "evaluate")
    result = RunResult(output_dir=out)
    env = environment()
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    _write_json(out / "environment.json", env)

    failures: list[CaseFailure] = list(cohort.excluded)
    contact_sheet = out / "crops_contact_sheet.png"
    if only == "evaluate":
        routes = _read_exported(config)
        if config.features.image is not None:  # learned route: the ROI tensors, from their cache
            routes.update(extract_routes(cohort, config.model_copy(update={"features": config.features.model_copy(
                update={"handcrafted": None, "deep": None})}), progress=progress))
    else:
        qc: list = []
        routes = extract_routes(cohort, config, progress=progress, qc=qc)
        for name, res in routes.items():
            failures.extend(res.failures)
            prov = {**res.provenance, "radiodeep_route": name, "environment": env["packages"]}
            if name == "image":  # learned route: tensors stay in the cache (a row is 3 x size x size values)
                _write_json(out / "features_image.provenance.json", prov)
                continue
            export_csv(res.features, out / f"features_{name}.csv", prov)
            result.features[name] = res.features
            if res.diagnostics is not None and not res.diagnostics.empty:
                res.diagnostics.to_csv(out / f"diagnostics_{name}.csv")
        if qc:
            from .qc import contact_sheet as write_sheet

            write_sheet(qc, contact_sheet)
    result.failures = _failures_frame(failures)
    result.failures.to_csv(out / "failures.csv", index=False)
    if only == "extract":
        log.info("features written; evaluation skipped (--only extract)")
        return result
    if not config.experiments:
        log.warning("no experiments in the config: nothing to evaluate")
        return result

    y = cohort.y()
    split = None
    if config.evaluation.scheme == "external":
        split = pd.Series({c.case_id: c.split for c in cohort.cases}, name="split")
    tables = {name: res.features for name, res in routes.items()}
    metrics, predictions, selection, delong, errors = evaluate_experiments(
        config, tables, y, split, progress=progress)
    result.metrics, result.predictions, result.selection = metrics, predictions, selection
    result.delong, result.experiment_errors = delong, errors
    metrics.to_csv(out / "metrics.csv", index=False)
    _write_json(out / "metrics.json", {
        "experiments": metrics.to_dict(orient="records"),
        "errors": errors,
        "evaluation": config.evaluation.model_dump(mode="json"),
    })
    predictions.to_csv(out / "predictions.csv", index=False)
    selection.to_csv(out / "selected_features.csv", index=False)
    delong.to_csv(out / "delong.csv", index=False)

    from .report import write_report

    provenance = {
        "config": config.to_dict(),
        "environment": env,
        "routes": {name: res.provenance for name, res in routes.items()},
        "seed": config.evaluation.seed,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ensembles = {e.name: json.loads((out / "ensembles" / e.name / "summary.json").read_text(encoding="utf-8"))
                 for e in config.experiments if (out / "ensembles" / e.name / "summary.json").is_file()}
    if ensembles:  # cnn_ensemble: members used, DeLong vs each member, seed spread
        provenance["ensembles"] = ensembles
    result.report = write_report(
        out, title=config.name, metrics=metrics, predictions=predictions, selection=selection,
        delong=delong, failures=result.failures, experiment_errors=errors, provenance=provenance,
        contact_sheet=contact_sheet if contact_sheet.exists() else None,
        positive_label=cohort.positive_label)
    return result
