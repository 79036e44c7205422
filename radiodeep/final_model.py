"""Final models: each experiment's whole pipeline fitted on every eligible case, saved for use.

After the evaluation, :func:`fit_final_models` fits the experiments marked ``final: true`` (all
of them when none is marked) on every case that has features in each of its routes, with the
same pipeline (selection, scaling, classifier) and seed the evaluation refitted in every fold,
and saves each in ``OUTPUT/models/``:

* ``<experiment>.joblib``: the fitted ``Pipeline`` (joblib); for learned (``features: [image]``)
  experiments the fitted network estimator (skorch; its torch tensors pickle with it), built and
  trained with the evaluation's settings on every eligible case's ROI tensor, with its audit
  and ensemble-record folders cleared (:func:`detach`) so scoring new cases writes nothing
  beside the study; the fitted estimator keeps its training tensors (for its leakage audit);
* ``<experiment>.json``: its sidecar: the file's SHA-256, the radiodeep, scikit-learn and
  numpy versions that wrote it (torch and skorch too for learned models), the experiment's
  config, each route's settings key and its
  columns (in the order the pipeline takes them), the positive and negative labels, the
  decision threshold, and the study's config (paths relative to the folder) that
  ``radiodeep predict`` rebuilds the routes' settings from.

**The threshold rule.** It is the fixed cut the evaluation used to turn out-of-fold scores into
the predicted labels of ``predictions.csv`` and every count of ``metrics.csv``: a score above
0.5 is the positive class for classifiers with probabilities (the score is P(positive)), a score
above 0 for the SVMs (the score is the decision function). It is never tuned, neither on the
study's cases nor on new ones.

:func:`load_model` refuses, naming what differs, a file whose SHA-256 is not the sidecar's
(changed or damaged) or that was written by another radiodeep, scikit-learn or numpy version
(a pickled estimator is only guaranteed to behave the same under the versions that wrote it).
The hash detects damage and accidental edits; it is no signature: like any pickle, a model file
runs code when loaded, so load only files you trust.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["MODELS_DIR", "FORMAT", "ModelFileError", "FinalModel", "versions", "detach", "threshold_of",
           "final_experiments", "fit_final_models", "save_model", "load_model", "model_files"]

log = logging.getLogger(__name__)

MODELS_DIR = "models"
FORMAT = 1


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and why."""


@dataclass
class FinalModel:
    """A loaded, verified model and its sidecar."""

    path: Path
    pipeline: object
    meta: dict

    @property
    def name(self) -> str:
        return self.meta["experiment"]["name"]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def columns(self) -> list[str]:
        return [c for r in self.meta["routes"] for c in self.meta["routes"][r]["columns"]]

    def score(self, X: pd.DataFrame):
        """(score, predicted 0/1) of the rows of ``X`` (columns in the model's order)."""
        from .evaluation import _positive_score

        return _positive_score(self.pipeline, X[self.columns()])


def versions(learned: bool = False) -> dict[str, str]:
    """The package versions a model file must be loaded under (``learned``: torch and skorch too,
    for the networks of learned experiments)."""
    import numpy
    import sklearn

    from . import __version__

    out = {"radiodeep": __version__, "scikit-learn": sklearn.__version__, "numpy": numpy.__version__}
    if learned:
        import skorch
        import torch

        out.update(torch=torch.__version__, skorch=skorch.__version__)
    return out


def detach(obj, _seen: set | None = None) -> None:
    """Stop a fitted learned model writing beside the study when it scores new cases: every
    estimator in it (pipeline steps, fine-tuned CNN, ensemble members) loses its ``audit_dir``
    (the per-fold leakage audit) and ``record_dir`` (the ensemble's per-fold member records), and
    drops the training images the audit kept (``_train_x``): a saved model holds weights and the
    training tensors' hashes, never the patients' images."""
    from sklearn.base import BaseEstimator

    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, BaseEstimator):
        for attr in ("audit_dir", "record_dir"):
            if getattr(obj, attr, None) is not None:
                setattr(obj, attr, None)
        if getattr(obj, "_train_x", None) is not None:
            obj._train_x = None
        children = list(vars(obj).values())
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return
    for child in children:
        detach(child, seen)


def threshold_of(fitted) -> tuple[float, str]:
    """(threshold, score kind) of a fitted pipeline: the evaluation's fixed cut (module docs)."""
    if hasattr(fitted, "predict_proba"):
        return 0.5, "probability of the positive class"
    return 0.0, "decision function (SVM)"


def final_experiments(config) -> list:
    """The experiments to fit and save: those marked ``final: true``, else every one."""
    marked = [e for e in config.experiments if e.final]
    return marked or list(config.experiments)


def fit_final_models(config, tables: dict[str, pd.DataFrame], y: pd.Series, route_info: dict[str, dict],
                     out: Path, skip: set[str] = frozenset(), negative_label: str | None = None) -> list[dict]:
    """Fit and save the final models (module docs); one that cannot be fitted is logged and left out.

    ``tables``: route -> feature table (the evaluation's); ``y``: 0/1 by case id;
    ``route_info``: route -> {"settings_key": key of those tables, and for the clinical route
    "encoding": the covariates' kinds and categories}; ``skip``: experiments whose evaluation
    failed. Returns one entry per saved model (experiment, file, sha256, n cases)."""
    from sklearn.base import clone

    from .experiment import build_pipeline
    from .learned.schema import is_learned

    folder = Path(out) / MODELS_DIR
    for old in [*folder.glob("*.joblib"), *folder.glob("*.json")]:  # an earlier run's: stale now
        old.unlink()
    saved = []
    study = config.resolved_dict(folder)
    for exp in final_experiments(config):
        if exp.name in skip:
            continue
        try:
            routes = {r: list(tables[r].columns) for r in exp.features}
            X = pd.concat([tables[r] for r in exp.features], axis=1, join="inner")
            ids = X.index.intersection(y.index)
            X, yy = X.loc[ids], y.loc[ids].astype(int)
            if is_learned(exp):  # a network trained on the ROI tensors (radiodeep/learned)
                from .learned.build import build_learned

                pipe = build_learned(exp, config, X)  # the evaluation's estimator and settings
            else:
                from .features.clinical import fold_imputer

                pipe = clone(build_pipeline(exp, routes, config.evaluation.seed, impute=fold_imputer(config, routes)))
            pipe.fit(X, yy.to_numpy())
            if is_learned(exp):
                detach(pipe)
            threshold, kind = threshold_of(pipe)
            meta = {
                "experiment": exp.model_dump(mode="json"),
                "routes": {r: {**route_info[r], "columns": routes[r]} for r in exp.features},
                "positive_label": config.cohort.positive_label if config.cohort.positive_label is None
                else str(config.cohort.positive_label),
                "negative_label": negative_label,
                "threshold": threshold,
                "score": kind,
                "threshold_rule": "the evaluation's fixed cut: positive when the score is above the "
                                  "threshold (0.5 on P(positive); 0 on an SVM's decision function); "
                                  "never tuned",
                "n_cases": int(len(ids)),
                "n_positive": int(yy.sum()),
                "study": study,
                "study_name": config.name,
            }
            entry = save_model(pipe, folder / f"{exp.name}.joblib", meta)
        except Exception as err:  # noqa: BLE001 - one model fails alone
            log.error("final model of experiment %s could not be fitted: %s", exp.name, err)
            continue
        log.info("final model %s: fitted on %d cases, saved to %s", exp.name, len(ids), entry["file"])
        saved.append(entry)
    return saved


def save_model(pipeline, path: Path, meta: dict) -> dict:
    """Write ``path`` (joblib) and its sidecar ``path.with_suffix('.json')``."""
    import joblib

    from .record import _atomic_write, file_sha256, plain_data

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump(pipeline, tmp)
    tmp.replace(path)
    sidecar = {**meta, "format": FORMAT, "file": path.name, "sha256": file_sha256(path),
               "versions": versions(learned="image" in meta.get("routes", {}))}
    _atomic_write(path.with_suffix(".json"), json.dumps(plain_data(sidecar), indent=2, sort_keys=True,
                                                        allow_nan=False).encode("utf-8"))
    return {"experiment": meta["experiment"]["name"], "file": f"{path.parent.name}/{path.name}",
            "sha256": sidecar["sha256"], "n_cases": meta.get("n_cases")}


def load_model(path: Path | str) -> FinalModel:
    """A saved model, after checking its sidecar: format, SHA-256, package versions.

    Raises :class:`ModelFileError` naming the file and every mismatch."""
    from .record import file_sha256

    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    if not side.is_file():
        raise ModelFileError(f"model file {path.name}: its sidecar {side.name} is missing; without its "
                             f"hash and versions the file is not loaded")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"model sidecar {side} cannot be read: {err}") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"model file {path.name}: sidecar format {meta.get('format')!r}; this "
                             f"radiodeep reads format {FORMAT}")
    sha = file_sha256(path)
    if sha != meta.get("sha256"):
        raise ModelFileError(f"model file {path.name} refused: its SHA-256 ({sha}) is not the one "
                             f"recorded in {side.name} ({meta.get('sha256')}): the file was changed or "
                             f"damaged since it was saved")
    here = versions(learned="torch" in (meta.get("versions") or {}))
    diff = [f"{k} {meta.get('versions', {}).get(k)} (model) vs {v} (here)" for k, v in here.items()
            if meta.get("versions", {}).get(k) != v]
    if diff:
        raise ModelFileError(f"model file {path.name} refused: written under other package versions: "
                             f"{'; '.join(diff)}; install the versions that wrote it (or refit the "
                             f"model with 'radiodeep run')")
    import joblib

    return FinalModel(path, joblib.load(path), meta)


def model_files(target: Path | str, experiment: str | None = None) -> list[Path]:
    """The model file(s) ``target`` names: a ``.joblib`` file, a ``models/`` folder or a study's
    output folder (every model in it, or the one of ``experiment``)."""
    target = Path(target)
    if target.is_file():
        return [target]
    folder = target / MODELS_DIR if (target / MODELS_DIR).is_dir() else target
    files = sorted(folder.glob("*.joblib"))
    if experiment is not None:
        files = [f for f in files if f.stem == experiment]
        if not files:
            known = sorted(f.stem for f in folder.glob("*.joblib"))
            raise ModelFileError(f"no model of experiment {experiment!r} in {folder}; models: {known}")
    if not files:
        raise ModelFileError(f"no model file in {target} (a study's output folder holds them in "
                             f"{MODELS_DIR}/ after 'radiodeep run')")
    return files
