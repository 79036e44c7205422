"""The ``clinical`` route: manifest covariates (``cohort.covariates``) as a feature table.

* A **numeric** covariate gives one column, ``clinical_<name>``, its value as read.
* A **categorical** covariate gives one indicator column per value of the study's manifest,
  ``clinical_<name>_<value>`` (1.0 for the case's value, else 0.0; values sorted). A list in
  ``cohort.covariates`` makes a covariate numeric when every value is a number, else
  categorical; a mapping (``{age: numeric, stage: categorical}``) says it.
* **Missing values** (``features.clinical.missing``). ``refuse`` (the default): a case with a
  covariate empty (or ``NA``/``nan``) fails in this route with the covariate named, and is left
  out of the experiments that use the route, as any failed case. ``impute``: the value stays
  missing in the table (NaN in ``clinical_<name>``, or in every indicator column of a
  categorical covariate) and :class:`FoldImputer`, the first step of every experiment using the
  route, fills it inside each fold from that fold's training cases only: a numeric covariate's
  median, a categorical covariate's most frequent category (ties: the first in sorted order).
  The final model's imputer is fitted on every eligible case, and fills new cases the same way.
* **Leakage.** The encoding holds no outcome information (the indicator columns come from the
  values present in the manifest, not from the labels). Everything fitted from data is fitted
  inside each fold, by the experiment's pipeline: the selector, and the scaling of the scaled
  classifiers (SVMs, logistic regression), clinical columns included. A category present only
  in a fold's test cases has an all-zero column in that fold's training cases.
* **New cases** (``radiodeep predict``): the encoding the model was fitted with (kinds and
  categories, in its sidecar) is applied as it is. A value **not seen in training** sets every
  indicator column of that covariate to 0 (the case is scored as belonging to none of the known
  categories) and gives a per-case warning naming the case, the covariate and the value.

Computing it is instant, so it has no cache; its settings key is the covariates and their kinds.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from ..cohort import Cohort
from ..config import Config
from ..errors import CaseFailure
from .routes import RouteSettings, RunContext
from .store import RouteResult

__all__ = ["ClinicalSettings", "settings_from_config", "config_problems", "extract", "extract_like",
           "encode", "column_names", "FoldImputer", "fold_imputer"]

log = logging.getLogger(__name__)

MISSING = {"", "na", "nan", "n/a", "none", "null"}


@dataclass(frozen=True)
class ClinicalSettings(RouteSettings):
    covariates: tuple[tuple[str, str], ...]  # (manifest column, "numeric" | "categorical" | "auto")
    missing: str = "refuse"


def settings_from_config(config: Config) -> ClinicalSettings:
    cov = config.cohort.covariates or []
    pairs = tuple(cov.items()) if isinstance(cov, dict) else tuple((c, "auto") for c in cov)
    return ClinicalSettings(covariates=pairs, missing=config.features.clinical.missing)


def config_problems(config: Config) -> list[str]:
    """Covariates that are not columns of the manifest (or that are one of its reserved columns)."""
    cov = list(config.cohort.covariates or [])
    path = config.resolve(config.cohort.manifest)
    try:
        header = [c.strip() for c in pd.read_csv(path, dtype=str, nrows=0).columns]
    except Exception:  # noqa: BLE001 - an unreadable manifest is reported by the cohort checks
        return []
    reserved = {"case_id", "image", "mask", "label", "mask_label", "split", "roi_name",
                *(config.cohort.sequences or [])}
    from ..cohort import manifest_columns

    try:
        reserved |= set(manifest_columns(header, config.cohort.columns, path))
    except ValueError:  # a bad mapping is reported by the cohort checks
        pass
    problems = [f"cohort.covariates: {c!r} is not a column of {path.name} (columns: {header})"
                for c in cov if c not in header]
    problems += [f"cohort.covariates: {c!r} is a reserved manifest column, not a covariate"
                 for c in cov if c in reserved]
    return problems


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in MISSING


def _number(v) -> float | None:
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _tag(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value).strip())


def learn_encoding(cohort: Cohort, settings: ClinicalSettings) -> dict:
    """{covariate: {"kind": ..., "categories": [...]}} from the cohort's values (no labels used)."""
    enc = {}
    for name, kind in settings.covariates:
        values = [c.covariates.get(name) for c in cohort.cases]
        present = [str(v).strip() for v in values if not _missing(v)]
        if kind == "auto":
            kind = "numeric" if present and all(_number(v) is not None for v in present) else "categorical"
        enc[name] = {"kind": kind, "categories": sorted(set(present)) if kind == "categorical" else []}
    return enc


def column_names(encoding: dict) -> list[str]:
    cols = []
    for name, e in encoding.items():
        if e["kind"] == "numeric":
            cols.append(f"clinical_{name}")
        else:
            cols += [f"clinical_{name}_{_tag(v)}" for v in e["categories"]]
    return cols


def encode(cohort: Cohort, encoding: dict, missing: str = "refuse") -> tuple[pd.DataFrame, list[CaseFailure], list[str]]:
    """The feature table of ``cohort`` under ``encoding``; failures (missing under ``refuse``,
    not a number) and warnings (a category not in the encoding). ``missing="impute"``: a missing
    value is NaN (in every indicator column of a categorical covariate), filled in each fold."""
    cols = column_names(encoding)
    rows, ids, failures, warnings = [], [], [], []
    for case in cohort.cases:
        row, bad, said = {}, [], []
        for name, e in encoding.items():
            v = case.covariates.get(name)
            if _missing(v) and missing == "impute":
                cols_of = [f"clinical_{name}"] if e["kind"] == "numeric" else \
                    [f"clinical_{name}_{_tag(cat)}" for cat in e["categories"]]
                row.update({c: math.nan for c in cols_of})
                continue
            if _missing(v):
                bad.append(f"covariate {name!r} is missing (clinical route: missing values are refused, "
                           f"never imputed)")
                continue
            v = str(v).strip()
            if e["kind"] == "numeric":
                x = _number(v)
                if x is None:
                    bad.append(f"covariate {name!r} is {v!r}, not a number")
                row[f"clinical_{name}"] = x
            else:
                for cat in e["categories"]:
                    row[f"clinical_{name}_{_tag(cat)}"] = 1.0 if v == cat else 0.0
                if v not in e["categories"]:
                    said.append(f"case {case.case_id}: covariate {name!r} has value {v!r}, not seen in "
                                    f"training (categories {e['categories']}); all its indicator columns are 0")
        if bad:
            failures.append(CaseFailure(case.case_id, "clinical", "; ".join(bad)))
            continue
        warnings += said  # a failed case is listed as failed, not warned about
        rows.append([row[c] for c in cols])
        ids.append(case.case_id)
    table = pd.DataFrame(rows, index=pd.Index(ids, name="case_id"), columns=cols, dtype="float64")
    return table, failures, warnings


def _result(cohort, settings, encoding) -> RouteResult:
    table, failures, warnings = encode(cohort, encoding, settings.missing)
    for w in warnings:
        log.warning("%s", w)
    policy = ("impute: filled inside each fold from its training cases (median; most frequent category)"
              if settings.missing == "impute" else "refuse: a case with a missing covariate fails in this route")
    prov = {"route": "clinical", "settings": settings.as_dict(), "encoding": encoding, "warnings": warnings,
            "missing_policy": policy}
    return RouteResult("clinical", table, failures, provenance=prov)


def extract(cohort: Cohort, settings: ClinicalSettings, context: RunContext) -> RouteResult:
    """The route interface: the encoding is learnt from the cohort's values (module docs)."""
    return _result(cohort, settings, learn_encoding(cohort, settings))


def extract_like(cohort: Cohort, settings: ClinicalSettings, context: RunContext, encoding: dict) -> RouteResult:
    """New cases under the encoding a model was fitted with (``radiodeep predict``)."""
    return _result(cohort, settings, encoding)


# --------------------------------------------------------------------------- in-fold imputation
class FoldImputer(TransformerMixin, BaseEstimator):
    """Fills the clinical route's missing values from the cases it is fitted on (a fold's
    training cases): ``numeric`` columns with their median, each group of ``groups`` (the
    indicator columns of one categorical covariate) with the most frequent category (ties: the
    first column). Other columns pass unchanged; a frame stays a frame (names kept)."""

    imputes_missing = True  # evaluation lets NaN reach a pipeline that starts with it

    def __init__(self, numeric=(), groups=()):
        self.numeric = numeric
        self.groups = groups

    @staticmethod
    def _frame(X) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise TypeError("FoldImputer needs a DataFrame (it fills columns by name)")
        return X

    def fit(self, X, y=None):
        df = self._frame(X)
        self.feature_names_in_ = np.asarray(df.columns, dtype=object)
        self.medians_ = {}
        for c in self.numeric:
            med = df[c].median(skipna=True)
            self.medians_[c] = float(med) if pd.notna(med) else 0.0
        self.categories_ = []
        for cols in self.groups:
            cols = list(cols)
            counts = df[cols].dropna().sum(axis=0)
            best = cols[int(np.argmax(counts.to_numpy()))] if len(counts) and counts.max() > 0 else cols[0]
            self.categories_.append({c: 1.0 if c == best else 0.0 for c in cols})
        return self

    def transform(self, X):
        df = self._frame(X).copy()
        for c, v in self.medians_.items():
            df[c] = df[c].fillna(v)
        for fill in self.categories_:
            cols = list(fill)
            rows = df[cols].isna().any(axis=1).to_numpy()
            if rows.any():
                df.loc[rows, cols] = [fill[c] for c in cols]
        return df

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_in_ if input_features is None else input_features, dtype=object)


def fold_imputer(config, routes) -> FoldImputer | None:
    """The experiment's imputer under ``features.clinical.missing: impute`` when it uses the
    clinical route (else None): each covariate's columns found by name in the route's columns."""
    clinical = config.features.clinical
    if clinical is None or clinical.missing != "impute" or "clinical" not in routes:
        return None
    cols = list(routes["clinical"])
    numeric, groups = [], []
    names = list(config.cohort.covariates or [])
    for name in names:
        if f"clinical_{name}" in cols:
            numeric.append(f"clinical_{name}")
            continue
        longer = [n for n in names if n != name and n.startswith(f"{name}_")]  # e.g. stage vs stage_t
        group = [c for c in cols if c.startswith(f"clinical_{name}_")
                 and not any(c == f"clinical_{n}" or c.startswith(f"clinical_{n}_") for n in longer)]
        if group:
            groups.append(group)
    return FoldImputer(numeric=numeric, groups=groups)
