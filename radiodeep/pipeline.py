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
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .errors import CaseFailure, ExitCode, os_fault
from .features.store import RouteResult, export_csv, read_features
from .learned.schema import is_learned as _is_learned
from .provenance import environment, shareable
from .validate import check_output_writable, check_routes, load_cohort

log = logging.getLogger(__name__)

__all__ = ["RunError", "RunResult", "run", "exit_code", "extract_routes", "evaluate_experiments"]

ROUTES = ("handcrafted", "deep", "image", "clinical")  # image: the learned route (radiodeep/learned)


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
    random_weights: list[str] = field(default_factory=list)  # routes whose network had random weights
    random_start: list[str] = field(default_factory=list)  # learned experiments fine-tuned from random weights

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
            lines.append(f"features_{route}.{'npz' if route == 'image' else 'csv'}: {df.shape[0]} cases x "
                         f"{df.shape[1]} features")
        if self.report is not None:
            lines.append(f"report: {self.report}")
        lines.append(f"outputs in: {self.output_dir}")
        from .features.weights import random_weights_line

        if self.random_weights or self.random_start:  # last, where the eye lands at the end of a run
            lines.append(random_weights_line(self.random_weights, self.random_start))
        return "\n".join(lines)


# --------------------------------------------------------------------------- stages
def prepare(config: Config, progress: bool, extracting: bool = True, labels: bool = True):
    """Check the output folder, the routes' settings (when features are to be extracted)
    and the cohort; apply the on_invalid policy. Nothing is computed before all pass.
    ``labels=False`` (``--only extract``): the manifest needs no label column (or one value)."""
    out = config.output_dir
    reason = check_output_writable(out)
    if reason:
        raise RunError(reason)
    problems = check_routes(config) if extracting else []
    if not problems:
        problems = k_problems(config)
    if problems:
        raise RunError("the feature settings cannot be used:\n" + "\n".join(f"  - {p}" for p in problems))
    # evaluation alone opens no image: the manifest's labels are all it needs
    report = load_cohort(config, check_images=extracting, progress=progress, labels=labels)
    if report.problems:
        raise RunError("the cohort cannot be used:\n" + "\n".join(f"  - {p}" for p in report.problems))
    cohort = report.cohort
    for note in report.notes:
        log.info("%s", note)
    for warning in report.warnings:
        log.warning("%s", warning)
    if report.failures:
        listing = "\n".join(f"  - case {f.case_id}: {f.reason}" for f in report.failures)
        if config.cohort.on_invalid == "error":
            raise RunError(f"{len(report.failures)} invalid case(s); fix them or set "
                           f"cohort.on_invalid: skip to exclude them:\n{listing}")
        log.warning("excluding %d invalid case(s):\n%s", len(report.failures), listing)
        cohort = cohort.without(report.failures)
    present = set(cohort.labels)
    if labels and len(present) < 2:
        raise RunError(f"after exclusions only label(s) {sorted(present)} remain; a binary task needs both")
    return cohort


def known_feature_counts(config: Config) -> dict[str, int]:
    """Feature counts that are known before extraction (route -> count; routes whose count
    depends on the data or on a parameter file are absent)."""
    counts = {}
    deep = config.features.deep
    if deep is not None:
        try:
            import torch
            import torchvision

            from .features.backbones import get_spec, resolve_layer
            from .roi import view_tags

            spec = get_spec(deep.backbone)
            if spec.family == "torchvision" and hasattr(torchvision.models, deep.backbone):
                tap = resolve_layer(spec, deep.layer, deep.activation)
                with torch.device("meta"):  # the shapes only: no memory, no weights
                    module = getattr(torchvision.models, deep.backbone)().get_submodule(tap.path)
                width = module.in_features if tap.where == "input" else module.out_features
                counts["deep"] = int(width) * len(view_tags(deep.channels))
        except Exception:  # noqa: BLE001 - unknown here: the experiment checks it after extraction
            pass
    return counts


def k_problems(config: Config) -> list[str]:
    """Experiments whose ``k`` exceeds a feature count known before extraction."""
    counts = known_feature_counts(config)
    problems = []
    for exp in config.experiments:
        sel = exp.select
        if sel.method == "none":
            continue
        if sel.k_per_route is not None:
            for r in exp.features:
                if r in counts and sel.k_per_route > counts[r]:
                    problems.append(f"experiment {exp.name}: k_per_route={sel.k_per_route} but route "
                                    f"{r!r} gives {counts[r]} features; lower k_per_route")
        elif isinstance(sel.k, int) and all(r in counts for r in exp.features):
            total = sum(counts[r] for r in exp.features)
            if sel.k > total:
                problems.append(f"experiment {exp.name}: k={sel.k} but its route(s) "
                                f"{'+'.join(exp.features)} give {total} features; lower k")
    return problems


def extract_routes(cohort, config: Config, *, progress: bool, previews: bool = False) -> dict[str, RouteResult]:
    """Every configured route through the one route interface: its settings slice (resolved
    once, its cache key) in; features, failures and (when asked) contact-sheet previews out."""
    from .features.routes import RunContext, configured_routes, get_route

    context = RunContext.from_config(config, progress=progress, previews=previews)
    results = {}
    for name in configured_routes(config):
        t0 = time.perf_counter()
        log.info("extracting %s features for %d cases", name, len(cohort))
        route = get_route(name)
        settings = route.settings_from_config(config)
        res = route.extract(cohort, settings, context)
        res.provenance["settings_key"] = settings.cache_key()  # run_record.json keeps it
        for f in res.failures:
            log.warning("case %s failed in %s route: %s", f.case_id, name, f.reason)
        log.info("%s: %d cases x %d features in %.1f s (%d failed)", name, res.features.shape[0],
                 res.features.shape[1], time.perf_counter() - t0, len(res.failures))
        results[name] = res
    return results


def route_settings_key(name: str, config: Config) -> str:
    """The settings (cache) key the config gives route ``name``: what its features depend on."""
    from .features.routes import get_route

    return get_route(name).settings_from_config(config).cache_key()


def _read_exported(config: Config, record) -> dict[str, RouteResult]:
    """The exported feature tables, exactly as the extraction wrote them, after checking that
    they were made with the settings the config gives now."""
    from .features.routes import configured_routes
    from .record import file_sha256

    out = config.output_dir
    results = {}
    problems = []

    for route in configured_routes(config):
        rec = record.routes.get(route)
        if rec is None:
            problems.append(f"no {route} features were extracted in {out} (run_record.json)")
            continue
        p = out / rec.features_csv
        if not p.exists():
            problems.append(f"{p} is missing")
            continue
        if rec.sha256 and file_sha256(p) != rec.sha256:
            problems.append(f"{p.name} changed since it was extracted (its SHA-256 is not the one in "
                            f"run_record.json)")
            continue
        key = route_settings_key(route, config)
        if key != rec.settings_key:
            problems.append(f"{p.name} was made with other {route} settings than the config's now "
                            f"(settings key {rec.settings_key}, config {key})")
            continue
        results[route] = RouteResult(route, _read_table(p), provenance=rec.provenance)
    if problems:
        raise RunError("--only evaluate cannot use the exported features; run 'radiodeep run CONFIG' "
                       "(or --only extract) first:\n" + "\n".join(f"  - {m}" for m in problems))
    return results


def _read_table(path: Path) -> pd.DataFrame:
    """An exported route table: CSV, or the learned image route's tensors (``.npz``)."""
    if path.suffix == ".npz":
        from .learned.route import read_tensors

        return read_tensors(path)
    return read_features(path)


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
    from .evaluation import evaluate, pairwise_delong
    from .experiment import build_pipeline

    rows, preds, sels, errors = [], [], [], {}
    for i, exp in enumerate(config.experiments, 1):
        log.info("experiment %d/%d: %s (%s, scheme %s)", i, len(config.experiments), exp.name,
                 "+".join(exp.features), config.evaluation.scheme)
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
                from .features.clinical import fold_imputer

                pipe = build_pipeline(exp, routes, config.evaluation.seed, impute=fold_imputer(config, routes))
            ex = config.execution
            res = evaluate(pipe, X, yy, config.evaluation, experiment=exp.name,
                           split=None if split is None else split.loc[ids], progress=progress,
                           n_jobs=ex.n_jobs, backend=ex.backend, address=ex.address)
        except Exception as err:  # noqa: BLE001 - one experiment fails alone
            from .evaluation import error_text

            text = error_text(err)  # with the fold it was raised in
            log.error("experiment %s could not run: %s", exp.name, text)
            errors[exp.name] = f"{type(err).__name__}: {text}" if not isinstance(err, ValueError) else text
            continue
        from .paper import brier_score

        brier = (brier_score(res.predictions["y_true"], res.predictions["score"])
                 if hasattr(pipe, "predict_proba") else float("nan"))  # scores are probabilities
        rows.append({"experiment": exp.name, **_describe(exp), **res.metrics, "brier": brier})
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
    delong = pairwise_delong(predictions)
    return metrics, predictions, selection, delong, errors


def _metric_columns() -> list[str]:
    """The columns of ``metrics.csv`` (those of any experiment's row)."""
    from .stats import binary_metrics

    demo = binary_metrics(np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.6, 0.4]), np.array([0, 1, 1, 0]))
    return ["experiment", "routes", "selector", "k", "classifier", *demo, "brier"]


def _write_json(path: Path, obj) -> None:
    from .record import plain_data  # NaN -> null: strict JSON

    path.write_text(json.dumps(plain_data(obj), indent=2, sort_keys=True, allow_nan=False), encoding="utf-8")


# --------------------------------------------------------------------------- the run
def _load_record(out: Path):
    from .record import RECORD_NAME, RunRecord

    try:
        return RunRecord.load(out)
    except FileNotFoundError:
        raise RunError(f"--only evaluate needs {out / RECORD_NAME} from a run that extracted the "
                       f"features; run 'radiodeep run CONFIG --only extract' first") from None
    except (ValueError, TypeError, KeyError) as err:
        raise RunError(f"{out / RECORD_NAME} cannot be read: {err}") from None


def run(config: Config, only: str | None = None) -> RunResult:
    """Run a study; ``only`` is None, ``"extract"`` or ``"evaluate"``.

    The output folder is locked for the whole run (a second run on it is refused with the
    first one's PID and start time). A foreseeable file-system fault (disk full, folder not
    writable) stops the run with a :class:`RunError` naming the path and the fix; every case
    finished before it stays cached. Nothing written holds an absolute path of this machine
    (paths are shown relative to the study folder), so a report can be shared.
    """
    from .outdir import OutputLock, OutputLocked

    out = config.output_dir
    reason = check_output_writable(out)
    if reason:
        raise RunError(reason)
    try:
        with OutputLock(out):
            ex = config.execution
            if ex.backend != "dask" or ex.cluster is None:
                return _run(config, only)
            from .cluster import start_cluster

            # the cluster lives as long as the run; the address is not written to the outputs
            with start_cluster(ex.cluster) as address:
                return _run(config, only, address=address)
    except OutputLocked as err:
        raise RunError(str(err)) from None
    except OSError as err:
        raise RunError(os_fault(err)) from err


def exit_code(result: RunResult, config: Config) -> int:
    """:class:`~radiodeep.errors.ExitCode` of a finished run: 0 only when every case and
    experiment succeeded (cases excluded or failed count only when ``cohort.on_invalid`` is
    ``error``; ``skip`` asked for them to be left out)."""
    if result.experiment_errors:
        return ExitCode.EXPERIMENT_FAILED
    if len(result.failures) and config.cohort.on_invalid != "skip":
        return ExitCode.CASES_FAILED
    return ExitCode.OK


def _run(config: Config, only: str | None = None, address: str | None = None) -> RunResult:
    """:func:`run` inside the lock.

    Every run leaves a :class:`~radiodeep.record.RunRecord` (``run_record.json``); the report is
    drawn from it. ``--only evaluate`` reloads it and opens no image: labels come from the
    manifest, features from the exported CSVs (checked against the config's route settings),
    failures from the record. A full run evaluates those same exported CSVs, so both give
    byte-identical metrics, predictions and selection tables.
    """
    from .record import RouteRecord, RunRecord, file_sha256, plain_data, write_table

    written = config  # a cluster started for this run: the written config keeps 'cluster'
    if address is not None:
        config = config.model_copy(update={"execution": config.execution.model_copy(
            update={"address": address, "cluster": None})})

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    progress = config.execution.progress
    out = config.output_dir
    cohort = prepare(config, progress, extracting=only != "evaluate", labels=only != "extract")
    if only != "evaluate":
        from .outdir import remove_stale_evaluation

        remove_stale_evaluation(out)  # they describe the features being replaced
    result = RunResult(output_dir=out)
    base = config.base_dir  # paths in what is written: relative to the study folder
    env = environment()
    (out / "config.resolved.yaml").write_text(written.resolved_yaml(out), encoding="utf-8")
    _write_json(out / "environment.json", env)

    contact_sheet = out / "crops_contact_sheet.png"
    if only == "evaluate":
        log.info("--only evaluate: reading the run record and the exported features (%s) in %s",
                 ", ".join(f"features_{r}.csv" for r in ROUTES if getattr(config.features, r) is not None),
                 out)
        record = _load_record(out)
        record.config, record.environment, record.started = shareable(written.to_dict(), base), env, started
        record.positive_label = cohort.positive_label
        routes = _read_exported(config, record)
    else:
        record = RunRecord(name=config.name, config=shareable(written.to_dict(), base), environment=env,
                           started=started,
                           positive_label=cohort.positive_label)
        failures: list[CaseFailure] = list(cohort.excluded)
        extracted = extract_routes(cohort, config, progress=progress, previews=True)
        previews = [item for res in extracted.values() for item in res.previews]
        for name, res in extracted.items():
            failures.extend(res.failures)
            prov = {**res.provenance, "radiodeep_route": name, "environment": env["packages"]}
            prov = shareable(plain_data(prov), base)
            if name == "image":  # learned route: float32 tensors as .npz (a row holds 3 x size x size values)
                from .learned.route import export_tensors

                csv = export_tensors(res.features, out / "features_image.npz", prov)
            else:
                csv = export_csv(res.features, out / f"features_{name}.csv", prov)
            record.routes[name] = RouteRecord(name, res.provenance["settings_key"], csv.name,
                                              int(res.features.shape[0]), int(res.features.shape[1]),
                                              prov, sha256=file_sha256(csv))
            result.features[name] = res.features
            if res.diagnostics is not None and not res.diagnostics.empty:
                res.diagnostics.to_csv(out / f"diagnostics_{name}.csv")
        if previews:
            from .qc import contact_sheet as write_sheet

            write_sheet(previews, contact_sheet)
            record.outputs["contact_sheet"] = contact_sheet.name
        record.failures = [{**f.to_dict(), "reason": shareable(f.reason, base)} for f in failures]
        record.computed = ["extract"]
        # evaluation reads the exported tables back (bit for bit): the numbers --only evaluate sees
        routes = {name: RouteResult(name, _read_table(out / rec.features_csv), provenance=rec.provenance)
                  for name, rec in record.routes.items()}
    from .features.weights import random_weight_experiments, random_weight_routes
    from .paper import cohort_summary

    record.cohort = cohort_summary(cohort, config)  # the report's cohort table

    result.random_weights = random_weight_routes({name: res.provenance for name, res in routes.items()})
    result.random_start = random_weight_experiments(
        [e.model_dump(mode="json") for e in config.experiments if _is_learned(e)])
    result.failures = record.failures_frame()
    write_table(result.failures, out / "failures.csv")
    if only == "extract" or not config.experiments:
        if only != "extract":
            log.warning("no experiments in the config: nothing to evaluate")
        else:
            log.info("features written; evaluation skipped (--only extract)")
        record.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record.save(out)
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
    errors = shareable(errors, base)
    if metrics.empty:  # every experiment failed: the file still says what it would hold
        metrics = pd.DataFrame(columns=_metric_columns())
    write_table(metrics, out / "metrics.csv")
    _write_json(out / "metrics.json", {
        "experiments": metrics.to_dict(orient="records"),
        "errors": errors,
        "evaluation": config.evaluation.model_dump(mode="json"),
    })
    write_table(predictions, out / "predictions.csv")
    write_table(selection, out / "selected_features.csv")
    write_table(delong, out / "delong.csv")
    from .final_model import fit_final_models

    record.models = fit_final_models(
        config, tables, y, {n: {"settings_key": r.settings_key,
                                **({"encoding": r.provenance["encoding"]} if "encoding" in r.provenance else {})}
                            for n, r in record.routes.items()}, out, skip=set(errors),
        negative_label=next((v for v in sorted(set(cohort.labels)) if v != cohort.positive_label), None))

    record.metrics = metrics.to_dict(orient="records")
    record.delong = delong.to_dict(orient="records")
    record.experiment_errors = shareable(dict(errors), config.base_dir)
    record.outputs.update(predictions="predictions.csv", selection="selected_features.csv",
                          metrics="metrics.csv", delong="delong.csv")
    if "evaluate" not in record.computed:
        record.computed.append("evaluate")
    if any((out / "ensembles" / e.name / "summary.json").is_file() for e in config.experiments):
        record.outputs["ensembles"] = "ensembles"  # cnn_ensemble: members, DeLong vs each, seed spread
    record.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record.save(out)

    from .record import write_report

    result.report = write_report(RunRecord.load(out), out)  # from what was persisted, nothing else
    return result

