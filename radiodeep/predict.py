"""``radiodeep predict``: score new cases, without labels, with saved final models.

For the model(s) named (a ``.joblib`` file, or a study's output folder: every model in its
``models/``), after :func:`~radiodeep.final_model.load_model` has checked each file's hash and
package versions:

1. the study's config is rebuilt from the sidecar, with the new manifest as its cohort; each
   route the models need gets its settings slice from it, through the one route interface, and
   its settings key must equal the one the model was fitted with (a parameter file or weights
   changed since are refused, named);
2. the new manifest is read without labels (a ``label`` column, if any, is ignored) and every
   case is checked as ``radiodeep validate`` does; cases that fail there or in a route are listed
   in ``failures_new.csv`` and the page, the others are scored;
3. the routes extract the features with the study's settings into the output folder's own route
   cache (``OUT/cache``: scoring again computes nothing already computed). Not the study's
   cache: a new cohort's case ids often repeat the study's (``patient001``), and its entries
   would replace the study's;
4. each model scores every case with features in all of its routes: ``predictions_new.csv``
   (case, experiment, score, predicted label, threshold used, score kind) and
   ``predictions_new.html``. The threshold is the model's (the evaluation's fixed cut; see
   :mod:`radiodeep.final_model`), never tuned on the new cases.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import CaseFailure
from .final_model import FinalModel, ModelFileError, load_model, model_files

__all__ = ["PredictResult", "predict", "PREDICTION_COLUMNS"]

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["case_id", "experiment", "score", "predicted_label", "threshold", "score_kind"]


@dataclass
class PredictResult:
    output_dir: Path
    predictions: pd.DataFrame
    failures: pd.DataFrame
    models: list[FinalModel] = field(default_factory=list)
    features: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # per case: e.g. a category unseen in training

    def summary(self) -> str:
        lines = [f"{self.predictions['case_id'].nunique() if len(self.predictions) else 0} case(s) "
                 f"scored by {len(self.models)} model(s): {self.output_dir / 'predictions_new.csv'}"]
        if len(self.failures):
            lines.append(f"{len(self.failures)} case problem(s), not scored: "
                         f"{self.output_dir / 'failures_new.csv'}")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s) (e.g. a category not seen in training): "
                         f"{self.output_dir / 'warnings_new.txt'}")
        lines.append(f"page: {self.output_dir / 'predictions_new.html'}")
        return "\n".join(lines)


def study_config(model: FinalModel, manifest: Path, out: Path):
    """The study's config as the model's sidecar records it, with ``manifest`` as the cohort."""
    from .config import parse_config

    data = {k: v for k, v in model.meta["study"].items()}
    data["cohort"] = {**data["cohort"], "manifest": str(Path(manifest).resolve())}
    data["output"] = str(Path(out).resolve())
    data["experiments"] = []
    # its own route cache, never the study's: new cohorts often reuse the study's case ids
    # (patient001, ...), and their entries would replace the study's
    data["execution"] = {**data.get("execution", {}), "cache_dir": str(Path(out).resolve() / "cache")}
    return parse_config(data, base_dir=model.path.parent, source=f"{model.path.name} (sidecar)")


def predict(target: Path | str, manifest: Path | str, out: Path | str, *, experiment: str | None = None,
            progress: bool = False) -> PredictResult:
    """Score the cases of ``manifest`` with the model(s) of ``target`` (module docs); write the
    outputs to ``out``. Raises :class:`~radiodeep.final_model.ModelFileError` for a model that
    is refused, ``ValueError`` for a manifest or settings that cannot be used."""
    from .features.routes import RunContext, get_route
    from .features.store import export_csv
    from .record import write_table
    from .validate import load_cohort

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [load_model(p) for p in model_files(target, experiment)]
    studies = {m.meta.get("study_name") for m in models}
    if len(studies) > 1:
        raise ModelFileError(f"the models come from different studies {sorted(map(str, studies))}; "
                             f"score with one at a time")
    config = study_config(models[0], Path(manifest), out)
    needed = sorted({r for m in models for r in m.meta["routes"]})
    settings = {}
    for name in needed:
        route = get_route(name)
        problems = route.config_problems(config)
        if problems:
            raise ValueError(f"route {name} cannot be set up as the model was:\n"
                             + "\n".join(f"  - {p}" for p in problems))
        settings[name] = route.settings_from_config(config)
        for m in models:
            want = m.meta["routes"].get(name, {}).get("settings_key")
            if want is not None and settings[name].cache_key() != want:
                raise ValueError(f"model {m.path.name}: the {name} settings differ from those it was "
                                 f"fitted with (settings key {settings[name].cache_key()} now, {want} "
                                 f"then): a parameter file or weights changed since; refit the model")

    report = load_cohort(config, check_images=True, progress=progress, labels=False)
    if report.problems:
        raise ValueError("the manifest cannot be used:\n" + "\n".join(f"  - {p}" for p in report.problems))
    for w in report.warnings:
        log.warning("%s", w)
    failures: list[CaseFailure] = list(report.failures)
    warnings: list[str] = []
    cohort = report.cohort.without(report.failures)
    context = RunContext.from_config(config, progress=progress)
    tables: dict[str, pd.DataFrame] = {}
    for name in needed:
        if not len(cohort):
            continue
        route = get_route(name)
        encoding = next((m.meta["routes"][name]["encoding"] for m in models
                         if "encoding" in m.meta["routes"].get(name, {})), None)
        if encoding is not None and hasattr(route, "extract_like"):  # the encoding the model was fitted with
            res = route.extract_like(cohort, settings[name], context, encoding)
        else:
            res = route.extract(cohort, settings[name], context)
        failures += res.failures
        warnings += res.provenance.get("warnings", [])
        tables[name] = res.features
        export_csv(res.features, out / f"features_{name}_new.csv",
                   {"radiodeep_route": name, "settings_key": settings[name].cache_key()})

    rows = []
    failed = {f.case_id for f in failures}
    for m in models:
        frames = [tables[r] for r in m.meta["routes"] if r in tables]
        if len(frames) != len(m.meta["routes"]) or not len(cohort):
            continue
        X = pd.concat(frames, axis=1, join="inner")
        X = X.loc[[c for c in cohort.ids if c in X.index and c not in failed]]
        if X.empty:
            continue
        score, pred = m.score(X)
        labels = [m.meta["positive_label"] if p else m.meta["negative_label"] for p in pred]
        rows += [{"case_id": c, "experiment": m.name, "score": float(s), "predicted_label": lab,
                  "threshold": m.threshold, "score_kind": m.meta["score"]}
                 for c, s, lab in zip(X.index, score, labels)]
    predictions = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    fails = pd.DataFrame([f.to_dict() for f in failures], columns=["case_id", "stage", "reason"])
    write_table(predictions, out / "predictions_new.csv")
    write_table(fails, out / "failures_new.csv")
    (out / "predictions_new.html").write_text(_page(models, predictions, fails, Path(manifest).name, warnings),
                                              encoding="utf-8")
    (out / "warnings_new.txt").write_text("".join(f"{w}\n" for w in warnings), encoding="utf-8")
    return PredictResult(out, predictions, fails, models, tables, warnings)


def _page(models: list[FinalModel], predictions: pd.DataFrame, failures: pd.DataFrame, manifest: str,
          warnings: list[str] = ()) -> str:
    """A short, self-contained page: the models used, their threshold rule, scores, failures."""
    esc = html.escape
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model_rows = "".join(
        f"<tr><td>{esc(m.name)}</td><td>{esc('+'.join(m.meta['routes']))}</td>"
        f"<td>{esc(m.meta['experiment']['classifier']['name'])}</td><td>{m.meta['n_cases']}</td>"
        f"<td>{esc(m.meta['score'])}</td><td>{m.threshold:g}</td>"
        f"<td><code>{esc(m.meta['sha256'][:16])}…</code></td></tr>" for m in models)
    pred_rows = "".join(
        f"<tr><td>{esc(str(r.case_id))}</td><td>{esc(r.experiment)}</td><td>{r.score:.4f}</td>"
        f"<td>{esc(str(r.predicted_label))}</td></tr>" for r in predictions.itertuples())
    fail_rows = "".join(f"<tr><td>{esc(str(r.case_id))}</td><td>{esc(r.stage)}</td><td>{esc(r.reason)}</td></tr>"
                        for r in failures.itertuples())
    fails = (f"<h2>Cases not scored ({len(failures)})</h2><table><tr><th>case</th><th>stage</th>"
             f"<th>reason</th></tr>{fail_rows}</table>") if len(failures) else "<p>Every case was scored.</p>"
    warn = (f"<h2>Warnings ({len(warnings)})</h2><ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings)
            + "</ul>") if warnings else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>radiodeep predictions: {esc(manifest)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}</style></head><body>
<h1>Predictions for {esc(manifest)}</h1>
<p>Generated {when}. New cases, no outcome known: these are model outputs, not evaluated results.
Each model was fitted on every eligible case of its study after the study's evaluation; its
threshold is the fixed cut the evaluation used (a score above 0.5 on P(positive), above 0 on an SVM's
decision function), never tuned on these cases.</p>
<h2>Models</h2><table><tr><th>experiment</th><th>routes</th><th>classifier</th><th>training cases</th>
<th>score</th><th>threshold</th><th>SHA-256</th></tr>{model_rows}</table>
<h2>Scores ({len(predictions)})</h2><table><tr><th>case</th><th>experiment</th><th>score</th>
<th>predicted label</th></tr>{pred_rows}</table>
{fails}
{warn}
</body></html>
"""
