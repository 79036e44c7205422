"""The ``clinical`` route: manifest covariates (``cohort.covariates``) as a feature table.

* A **numeric** covariate gives one column, ``clinical_<name>``, its value as read.
* A **categorical** covariate gives one indicator column per value of the study's manifest,
  ``clinical_<name>_<value>`` (1.0 for the case's value, else 0.0; values sorted). A list in
  ``cohort.covariates`` makes a covariate numeric when every value is a number, else
  categorical; a mapping (``{age: numeric, stage: categorical}``) says it.
* **Missing values: refused.** A case with a covariate empty (or ``NA``/``nan``) fails in this
  route with the covariate named, and is left out of the experiments that use the route, as
  any failed case; nothing is imputed.
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

import pandas as pd

from ..cohort import Cohort
from ..config import Config
from ..errors import CaseFailure
from .routes import RouteSettings, RunContext
from .store import RouteResult

__all__ = ["ClinicalSettings", "settings_from_config", "config_problems", "extract", "extract_like",
           "encode", "column_names"]

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


def encode(cohort: Cohort, encoding: dict) -> tuple[pd.DataFrame, list[CaseFailure], list[str]]:
    """The feature table of ``cohort`` under ``encoding``; failures (missing, not a number) and
    warnings (a category not in the encoding)."""
    cols = column_names(encoding)
    rows, ids, failures, warnings = [], [], [], []
    for case in cohort.cases:
        row, bad, said = {}, [], []
        for name, e in encoding.items():
            v = case.covariates.get(name)
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
    table, failures, warnings = encode(cohort, encoding)
    for w in warnings:
        log.warning("%s", w)
    prov = {"route": "clinical", "settings": settings.as_dict(), "encoding": encoding, "warnings": warnings,
            "missing_policy": "refuse: a case with a missing covariate fails in this route"}
    return RouteResult("clinical", table, failures, provenance=prov)


def extract(cohort: Cohort, settings: ClinicalSettings, context: RunContext) -> RouteResult:
    """The route interface: the encoding is learnt from the cohort's values (module docs)."""
    return _result(cohort, settings, learn_encoding(cohort, settings))


def extract_like(cohort: Cohort, settings: ClinicalSettings, context: RunContext, encoding: dict) -> RouteResult:
    """New cases under the encoding a model was fitted with (``radiodeep predict``)."""
    return _result(cohort, settings, encoding)
