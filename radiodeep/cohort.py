"""The cohort: a manifest CSV of cases, read and checked.

Columns: ``case_id, image, mask, label``; optional ``mask_label``, ``split`` and
``roi_name`` (which structure of an RTSTRUCT / segment of a DICOM-SEG mask is the ROI);
the sequence columns named in ``cohort.sequences``; any other column is kept as a
clinical covariate. Paths are relative to the manifest's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .errors import CaseError, CaseFailure

__all__ = ["Case", "Cohort", "read_manifest", "check_cases", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("case_id", "image", "mask", "label")


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    mask: Path
    label: str
    mask_label: int = 1
    split: str | None = None
    sequences: tuple[Path, ...] = ()
    roi_name: str | None = None  # RTSTRUCT structure / SEG segment (name, regex or number)
    mask_cache: Path | None = field(default=None, compare=False)  # where rasterised DICOM masks are cached
    covariates: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Cohort:
    cases: list[Case]
    positive_label: str | None = None
    excluded: list[CaseFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.cases]

    def y(self) -> "pd.Series":
        """Binary target (1 = positive label) indexed by case id."""
        return pd.Series([int(c.label == self.positive_label) for c in self.cases],
                         index=pd.Index(self.ids, name="case_id"), name="y")

    def without(self, failures: Iterable[CaseFailure]) -> "Cohort":
        bad = {f.case_id for f in failures}
        return Cohort([c for c in self.cases if c.case_id not in bad], self.positive_label,
                      self.excluded + [f for f in failures])


def read_manifest(path: Path | str, *, mask_label: int | None = 1, sequences: list[str] | None = None,
                  positive_label: str | int | None = None, roi_name: str | int | None = None,
                  mask_cache: Path | None = None, labels: bool = True,
                  columns: dict[str, str] | None = None) -> tuple[Cohort, list[str]]:
    """Read a manifest; return the cohort and a list of manifest-level problems.

    Problems that make the manifest unusable (unreadable file, missing columns)
    raise ``ValueError``; per-row problems (duplicate ids, label set) are returned.
    ``labels=False`` reads a manifest for label-free work (extraction, scoring new cases):
    the ``label`` column may be absent, empty or hold a single value (kept as read).
    ``columns`` (``cohort.columns``) maps radiodeep's column names to the manifest's
    (``{label: Outcome}``); a PyRadiomics batch file (``ID,Image,Mask[,Label]``) is recognised
    (:func:`manifest_columns`).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many kinds
        raise ValueError(f"cannot read manifest {path}: {err}") from None
    df.columns = [c.strip() for c in df.columns]
    df = df.rename(columns=manifest_columns(list(df.columns), columns, path, labels))
    need = list(REQUIRED_COLUMNS) + list(sequences or [])
    if not labels and "label" not in df.columns:
        need.remove("label")
        known_label = False
    else:
        known_label = True
    missing = [c for c in need if c not in df.columns]
    if missing:
        hint = ""
        if len(df.columns) == 1 and any(sep in df.columns[0] for sep in ";\t|"):
            sep = next(s for s in ";\t|" if s in df.columns[0])
            hint = (f" (the header holds {sep!r} separators: the manifest must be comma-separated; "
                    "re-save it as CSV with commas, e.g. from a spreadsheet's 'CSV (comma delimited)')")
        if "label" in missing and "mask_label" in df.columns and "Label" not in (columns or {}).values():
            hint += (" (a PyRadiomics batch file: its 'Label' column is the ROI's label value in the MASK, "
                     "not the outcome; add an outcome column and name it in cohort.columns: {label: COLUMN})")
        raise ValueError(f"manifest {path}: missing column(s) {missing}; "
                         f"found {list(df.columns)}; required: {list(REQUIRED_COLUMNS)}{hint}")
    if df.empty:
        raise ValueError(f"manifest {path} has a header but no rows: add one row per case")
    problems: list[str] = []
    base = path.resolve().parent
    known = set(need) | {"mask_label", "split", "roi_name", "label"}
    cases = []
    for i, row in df.iterrows():
        cid = row["case_id"].strip()
        if not cid:
            problems.append(f"manifest row {i + 2}: empty case_id")
            continue
        ml = 1 if mask_label is None else int(mask_label)
        if "mask_label" in df.columns and row["mask_label"].strip():
            try:
                ml = int(float(row["mask_label"]))
            except ValueError:
                problems.append(f"case {cid}: mask_label {row['mask_label']!r} is not an integer")
        cases.append(Case(
            case_id=cid,
            image=_abs(base, row["image"]),
            mask=_abs(base, row["mask"]),
            label=row["label"].strip() if known_label else "",
            mask_label=ml,
            split=(row["split"].strip() or None) if "split" in df.columns else None,
            sequences=tuple(_abs(base, row[c]) for c in (sequences or [])),
            roi_name=_roi_name(row, roi_name),
            mask_cache=mask_cache,
            covariates={c: row[c] for c in df.columns if c not in known},
        ))
    ids = [c.case_id for c in cases]
    for dup in sorted({x for x in ids if ids.count(x) > 1}):
        rows = [i + 2 for i, x in enumerate(df["case_id"].str.strip()) if x == dup]
        problems.append(f"case {dup}: duplicate case_id (manifest rows {rows})")
    if not labels:
        return Cohort(cases, None if positive_label is None else str(positive_label)), problems
    for c in cases:
        if not c.label:
            problems.append(f"case {c.case_id}: empty label")
    values = sorted({c.label for c in cases if c.label})
    pos = None if positive_label is None else str(positive_label)
    if len(values) != 2:
        problems.append(f"a binary task needs exactly two label values; found {len(values)}: {values}"
                        + (f" ({_label_counts(cases, values)})" if len(values) > 2 else "")
                        + ("; feature extraction alone needs no labels (radiodeep run CONFIG --only extract)"
                           if len(values) < 2 else ""))
    elif pos is None:
        problems.append(f"cohort.positive_label is not set; name one of the labels {values}")
    elif pos not in values:
        problems.append(f"cohort.positive_label {pos!r} is not among the labels {values}")
    return Cohort(cases, pos), problems


#: PyRadiomics' batch-file header -> radiodeep's columns. PyRadiomics' ``Label`` is the ROI's
#: value in the MASK (its ``label`` setting), not the outcome.
PYRADIOMICS_BATCH = {"ID": "case_id", "Image": "image", "Mask": "mask", "Label": "mask_label"}
COLUMN_ROLES = ("case_id", "image", "mask", "label", "mask_label", "split", "roi_name")


def is_pyradiomics_batch(header: list[str]) -> bool:
    """A PyRadiomics batch file: ``Image`` and ``Mask`` columns, radiodeep's ``image``/``mask`` absent."""
    return {"Image", "Mask"} <= set(header) and not {"image", "mask"} & set(header)


def manifest_columns(header: list[str], columns: dict[str, str] | None, path: Path | str = "manifest",
                     labels: bool = True) -> dict:
    """The renaming (manifest column -> radiodeep column) a manifest's header needs.

    A PyRadiomics batch header is recognised: ``ID`` -> ``case_id``, ``Image`` -> ``image``,
    ``Mask`` -> ``mask`` and ``Label`` -> ``mask_label``: **PyRadiomics' Label is the label value
    of the ROI in the mask, not the outcome**; the outcome must be another column, named with
    ``cohort.columns: {label: COLUMN}``. ``columns`` (role -> manifest column) applies over it.
    Raises ``ValueError`` for a mapping naming a column the manifest lacks, an unknown role, or
    PyRadiomics' ``Label`` as the outcome."""
    rename: dict[str, str] = {}
    batch = is_pyradiomics_batch(header)
    if batch:
        rename = {src: dst for src, dst in PYRADIOMICS_BATCH.items() if src in header}
    for role, src in (columns or {}).items():
        if role not in COLUMN_ROLES:
            raise ValueError(f"cohort.columns: unknown column role {role!r}; roles: {list(COLUMN_ROLES)}")
        if src not in header:
            if role == "label" and not labels:  # label-free work: new cases have no outcome yet
                continue
            raise ValueError(f"cohort.columns: {role} is {src!r}, which is not a column of {path} "
                             f"(columns: {header})")
        if batch and role == "label" and src == "Label":
            raise ValueError(f"cohort.columns: label (the outcome) cannot be PyRadiomics' 'Label' column of "
                             f"{path}: in a PyRadiomics batch file 'Label' is the ROI's label value in the "
                             f"MASK, not the outcome; name the outcome column")
        rename = {k: v for k, v in rename.items() if v != role}
        rename[src] = role
    return rename


def _label_counts(cases: list[Case], values: list[str], show: int = 5) -> str:
    """'long: 20 cases; medium: 1 case (c3)': the cases of the rarest labels are named."""
    parts = []
    for v in sorted(values, key=lambda v: (-sum(c.label == v for c in cases), v)):
        ids = [c.case_id for c in cases if c.label == v]
        listed = "" if len(ids) > show else f" ({', '.join(ids)})"
        parts.append(f"{v!r}: {len(ids)} case{'s' if len(ids) != 1 else ''}{listed}")
    return "; ".join(parts)


def _roi_name(row, default: str | int | None) -> str | None:
    own = row["roi_name"].strip() if "roi_name" in row.index else ""
    return own or (None if default is None else str(default))


def _abs(base: Path, p: str) -> Path:
    p = Path(p.strip()).expanduser()
    return p if p.is_absolute() else base / p


def check_cases(cases: Iterable[Case], check: Callable[[Case], object],
                stage: str = "input") -> list[CaseFailure]:
    """Run ``check`` on every case and collect failures (every one, not the first)."""
    failures = []
    for case in cases:
        try:
            check(case)
        except CaseError as err:
            failures.append(CaseFailure(err.case_id, stage, err.reason))
        except Exception as err:  # noqa: BLE001 - reported with the case id
            failures.append(CaseFailure.from_error(err, case.case_id, stage))
    return failures
