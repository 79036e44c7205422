"""Honest evaluation of an experiment: one scikit-learn Pipeline, refitted in every fold.

An experiment (routes x selector x k x classifier) becomes one ``Pipeline``
(:func:`radiodeep.experiment.build_pipeline`): ``select`` (fitted on the training cases of the fold only) ->
``scale`` (SVMs, logistic regression) -> ``clf``. :func:`evaluate` runs it under

* ``loo``: leave-one-out (the default); the out-of-fold scores of all cases are pooled and the
  AUC is computed once over the cohort (a single left-out case has no AUC);
* ``repeated_kfold``: repeated stratified k-fold; each case is scored once per repeat;
* ``external``: fitted once on the cases of ``train_split``, tested on those of ``test_split``
  (e.g. two cohorts: the published screening design).

Leave-one-out shares work between the folds where it can without changing any result: the
selectors' ``loo_fits`` give, for each fold, exactly the selector a cold refit would give, and
the rest of the pipeline is then fitted on the selected columns as the cold pipeline would be
(``fast=False`` runs the plain per-fold refit, with identical predictions).

Metrics, one definition for every scheme (:func:`radiodeep.stats.binary_metrics`): the
out-of-fold scores of all repeats are pooled, each case counted once per repeat. The AUC is the
pooled AUC (the area under the report's ROC curve), the confusion matrix counts all repeats, and
accuracy, sensitivity and specificity are ratios of those counts; the intervals count cases, not
repeats (DeLong with each case's placements averaged over its repeats; Wilson on counts / R).
The pairwise DeLong tests of :func:`pairwise_delong` use the same pooled AUCs.

AUC with DeLong's 95% interval, accuracy, balanced accuracy, sensitivity and
specificity with Wilson intervals, the confusion matrix; an opt-in label-permutation test
(``EvaluationConfig.permutations``); how often each feature was selected over the fits.

Where the work runs: folds in ``n_jobs`` threads, or in chunks of a few on the Dask workers; the
leave-one-out shared selection where the folds run (one Dask task); each permutation one call (a
thread, or on Dask a task running that permutation's folds one after the other), its labels drawn
here, in order, from one generator seeded with ``seed``: the same null AUCs on either backend.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import partial
from typing import Mapping

import numpy as np
import pandas as pd
import sklearn
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from .execution import map_calls, shared_values
from .progress import progress as _progress
from .selection import CorrelationFilter, ReliefF, RouteTopK, SymmetricUncertainty
from .selection.route_topk import _resolve_routes
from .stats import binary_metrics, delong_ci, delong_test, delong_variance, wilson_ci

__all__ = [
    "EvaluationResult",
    "pairwise_delong",
    "evaluate",
    "delong_test",
    "delong_ci",
    "wilson_ci",
    "binary_metrics",
]

PREDICTION_COLUMNS = ["case_id", "y_true", "score", "y_pred", "fold", "repeat", "experiment"]


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns for one experiment."""

    experiment: str
    predictions: pd.DataFrame  # case_id, y_true, score, y_pred, fold, repeat, experiment
    metrics: dict  # auc (+ci), accuracy (+ci), balanced_accuracy, sensitivity (+ci), ...
    selection_frequency: pd.Series  # feature -> fraction of fits that selected it (> 0 only)
    null_aucs: np.ndarray | None = field(default=None, repr=False)  # permutation test


# --------------------------------------------------------------------------- selector checks
def _check_selector(sel, names: np.ndarray, where: str = "") -> None:
    """Raise ValueError where a (known) selector cannot run on these columns."""
    p = len(names)
    if isinstance(sel, CorrelationFilter):
        _check_selector(sel._base(), names, where)
    elif isinstance(sel, RouteTopK):
        routes = _resolve_routes(sel.routes, names, p)
        for r, idx in routes.items():
            k = sel._route_k(r)
            if k != "all" and k > idx.size:
                raise ValueError(f"{where}k_per_route={k} but route {r!r} has only {idx.size} features")
    elif isinstance(sel, (ReliefF, SymmetricUncertainty)):
        k = sel.k
        if isinstance(k, numbers.Integral) and k > p:
            raise ValueError(f"{where}k={k} but X has only {p} features")


# --------------------------------------------------------------------------- inputs and folds
def _check_xy(X, y, allow_nan: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    """``allow_nan``: the pipeline's first step imputes (inside each fold), so NaN may reach it."""
    if not isinstance(X, pd.DataFrame):
        X = pd.DataFrame(np.asarray(X))
    if not isinstance(y, pd.Series):
        y = pd.Series(np.asarray(y), index=X.index)
    if X.shape[1] == 0:
        raise ValueError("X has no feature columns")
    if X.index.has_duplicates:
        raise ValueError(f"case ids repeated in X: {X.index[X.index.duplicated()].tolist()[:5]}")
    if not X.index.equals(y.index):
        if set(X.index) != set(y.index):
            only_x = X.index.difference(y.index).tolist()[:5]
            only_y = y.index.difference(X.index).tolist()[:5]
            raise ValueError(f"X and y hold different cases (only in X: {only_x}; only in y: {only_y})")
        y = y.loc[X.index]
    numeric = np.fromiter((pd.api.types.is_numeric_dtype(t) for t in X.dtypes), bool, X.shape[1])
    nonnum = X.columns[~numeric].tolist()
    if nonnum:
        raise ValueError(f"{len(nonnum)} non-numeric feature column(s), e.g. {nonnum[:3]}")
    vals = X.to_numpy(dtype=np.float64)
    bad = np.isinf(vals) if allow_nan else ~np.isfinite(vals)
    if bad.any():
        cols = X.columns[bad.any(axis=0)].tolist()
        raise ValueError(f"X holds missing or infinite values in {len(cols)} column(s), e.g. "
                         f"{cols[:3]}: impute or drop them before evaluation")
    if y.isna().any():
        raise ValueError(f"y has no label for {int(y.isna().sum())} case(s)")
    labels = set(pd.unique(y))
    if not labels <= {0, 1, True, False}:
        raise ValueError(f"y must hold 0/1 labels (1 = positive), got {sorted(map(str, labels))[:5]}")
    y = y.astype(int)
    if y.nunique() < 2:
        raise ValueError("y holds a single class")
    return X, y


def _folds(cfg, y: np.ndarray, index: pd.Index, split) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    n = len(y)
    counts = np.bincount(y, minlength=2)
    if cfg.scheme == "loo":
        if counts.min() < 2:
            raise ValueError(f"leave-one-out needs at least 2 cases of each class, got {counts.tolist()}")
        rows = np.arange(n)
        return [(0, q, np.delete(rows, q), np.array([q])) for q in range(n)]
    if cfg.scheme == "repeated_kfold":
        if counts.min() < cfg.folds:
            raise ValueError(f"{cfg.folds}-fold stratified cross-validation needs at least {cfg.folds} "
                             f"cases of each class, got {counts.tolist()}")
        cv = RepeatedStratifiedKFold(n_splits=cfg.folds, n_repeats=cfg.repeats, random_state=cfg.seed)
        return [(i // cfg.folds, i % cfg.folds, tr, te)
                for i, (tr, te) in enumerate(cv.split(np.zeros(n), y))]
    if cfg.scheme == "external":
        if split is None:
            raise ValueError("external validation needs each case's split (the manifest's 'split' column)")
        s = pd.Series(split).reindex(index)
        s = s.where(s.isna(), s.astype(str))
        tr = np.flatnonzero((s == str(cfg.train_split)).to_numpy())
        te = np.flatnonzero((s == str(cfg.test_split)).to_numpy())
        found = sorted(map(str, s.dropna().unique()))
        if tr.size == 0:
            raise ValueError(f"no case in the training split {cfg.train_split!r} (splits found: {found})")
        if te.size == 0:
            raise ValueError(f"no case in the test split {cfg.test_split!r} (splits found: {found})")
        if len(np.unique(y[tr])) < 2:
            raise ValueError(f"the training split {cfg.train_split!r} holds a single class")
        return [(0, 0, tr, te)]
    raise ValueError(f"unknown evaluation scheme {cfg.scheme!r}")


# --------------------------------------------------------------------------- one fold
def _positive_score(est, X) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the positive class (1) and the predicted labels.

    Probabilistic models: P(1), predicted 1 above 0.5 (as ``predict``); others (SVMs): the
    decision function, predicted 1 above 0.
    """
    classes = list(getattr(est, "classes_", []))
    if 1 not in classes or len(classes) != 2:
        raise ValueError(f"the training cases of a fold hold classes {classes}; both 0 and 1 are needed")
    if hasattr(est, "predict_proba"):
        s = np.asarray(est.predict_proba(X))[:, classes.index(1)]
        return s, (s > 0.5).astype(int)
    if hasattr(est, "decision_function"):
        d = np.asarray(est.decision_function(X), dtype=np.float64).ravel()
        if classes[1] != 1:
            d = -d
        return d, (d > 0).astype(int)
    raise ValueError(f"{type(est).__name__} has neither predict_proba nor decision_function")


def _selected_mask(fitted, names: np.ndarray) -> np.ndarray | None:
    """Which input columns reach the classifier (None when it cannot be told)."""
    if not isinstance(fitted, Pipeline) or len(fitted.steps) < 2:
        return np.ones(len(names), dtype=bool)
    try:
        out = fitted[:-1].get_feature_names_out(names)
    except Exception:  # noqa: BLE001 - a transformer without feature names
        return None
    return np.isin(names, np.asarray(out, dtype=object))


_NAME_FREE = (ReliefF, SymmetricUncertainty, StandardScaler, RandomForestClassifier, SVC, GaussianNB,
              LogisticRegression, DecisionTreeClassifier)


def _wants_frame(est) -> bool:
    """Whether the pipeline may need the feature names (else it is fitted on plain arrays)."""
    if isinstance(est, Pipeline):
        return any(_wants_frame(step) for _, step in est.steps)
    if isinstance(est, CorrelationFilter):
        return _wants_frame(est._base())
    if isinstance(est, RouteTopK):
        routes = est.routes
        if routes is None:
            return True
        cols = routes.values() if isinstance(routes, Mapping) else routes
        return any(not isinstance(c, (numbers.Integral, np.integer)) for r in cols for c in r)
    return not isinstance(est, _NAME_FREE)


def _cold_job(est, Xv: np.ndarray, names: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray):
    """Fit the whole pipeline on the rows ``tr``, score the rows ``te``."""
    if _wants_frame(est):
        est.fit(pd.DataFrame(Xv[tr], columns=names), y[tr])
        score, pred = _positive_score(est, pd.DataFrame(Xv[te], columns=names))
    else:
        est.fit(Xv[tr], y[tr])
        score, pred = _positive_score(est, Xv[te])
    return score, pred, _selected_mask(est, names)


def _fit_score(est, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray):
    """Fit the pipeline after its (already fitted) selector; score the test rows."""
    est.fit(Xtr, ytr)
    score, pred = _positive_score(est, Xte)
    return score, pred, None


def _supports_fast_loo(pipeline) -> bool:
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) < 2:
        return False
    first = pipeline.steps[0][1]
    out = (getattr(first, "_sklearn_output_config", {}).get("transform")
           or sklearn.get_config().get("transform_output", "default"))
    # the shared path hands plain arrays on, as the selector does with its default output
    return hasattr(first, "loo_fits") and hasattr(first, "get_support") and out == "default"


def _loo_supports(selector, labels: list[str], *, Xv: np.ndarray, names: np.ndarray,
                  y: np.ndarray) -> list[np.ndarray]:
    """The shared leave-one-out selection (``selector.loo_fits``: e.g. ReliefF's pairwise work
    over all folds at once): each fold's selected columns, in the order of the LOO folds
    (``labels``: each fold in words, for an error).

    One call: it runs where the folds run (on a Dask worker with ``backend="dask"``); only the
    column indices come back.
    """
    out = []
    for i, sel in enumerate(selector.loo_fits(pd.DataFrame(Xv, columns=names), y)):
        cols = np.flatnonzero(np.asarray(sel.get_support(), dtype=bool))
        if cols.size == 0:
            err = ValueError("the selector kept no feature")
            err.add_note(labels[i])
            raise err
        out.append(cols)
    return out


def _fold_label(scheme: str, rep: int, fold: int, te: np.ndarray, ids: np.ndarray | None) -> str:
    """Which fold, in words, for an error raised in it (a diverged network, a failed fit)."""
    if scheme == "loo":
        return f"in the fold that holds out case {ids[te[0]] if ids is not None else f'#{te[0]}'}"
    if scheme == "external":
        return "in the fit on the training split"
    return f"in fold {fold + 1} of repeat {rep + 1}"


def _in_fold(where: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception leaves with the note ``where`` (the fold or the
    permutation it was raised in; notes travel from a worker with the exception)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        err.add_note(where)
        raise


def _fold_fast(est, tr: np.ndarray, te: np.ndarray, cols: np.ndarray, where: str, *, Xv: np.ndarray,
               y: np.ndarray):
    """A fold of the shared leave-one-out path: the selected columns of the fold's rows, then
    :func:`_fit_score` (the slicing runs where the fold runs: only indices travel)."""
    # the selectors' transform hands on C-contiguous float64 columns: these bytes
    return _in_fold(where, _fit_score, est, Xv[np.ix_(tr, cols)], y[tr], Xv[np.ix_(te, cols)])


def _fold_cold(est, tr: np.ndarray, te: np.ndarray, where: str, *, Xv: np.ndarray, names: np.ndarray,
               y: np.ndarray):
    return _in_fold(where, _cold_job, est, Xv, names, y, tr, te)


def error_text(err: BaseException) -> str:
    """An exception's message with its notes (e.g. the fold it was raised in), on one line."""
    return "; ".join([str(err), *getattr(err, "__notes__", ())])


def _run_folds(pipeline, data: dict, n_features: int, folds, *, scheme: str, fast: bool,
               n_jobs: int, show: bool, desc: str, backend: str = "local", address: str | None = None,
               ids: np.ndarray | None = None):
    """Every fold's scores; returns (rows, selection counts, number of fits).

    ``data``: ``Xv`` (cases x features, float64), ``names`` (the columns) and ``y``, as
    :func:`radiodeep.execution.shared_values` gives them (sent to the cluster once). Folds run
    in ``n_jobs`` threads here, or on the Dask cluster at ``address`` (``backend="dask"``), the
    shared leave-one-out selection too (one task): the same numbers either way.
    """
    counts = np.zeros(n_features, dtype=np.int64)
    n_fits = 0
    have_mask = True
    use_fast = fast and scheme == "loo" and _supports_fast_loo(pipeline)
    where = {"backend": backend, "address": address}

    metas: list = []
    if use_fast:
        rest = pipeline[1:]
        labels = [_fold_label(scheme, rep, fold, te, ids) for rep, fold, _, te in folds]
        [supports] = list(map_calls(_loo_supports, [(clone(pipeline.steps[0][1]), labels)], shared=data,
                                    **where))
        fn, shared = _fold_fast, {"Xv": data["Xv"], "y": data["y"]}

        def calls():
            for (rep, fold, tr, te), cols in zip(folds, supports):
                support = np.zeros(n_features, dtype=bool)
                support[cols] = True
                metas.append((rep, fold, te, support))
                yield clone(rest), tr, te, cols, _fold_label(scheme, rep, fold, te, ids)
    else:
        fn, shared = _fold_cold, data

        def calls():
            for rep, fold, tr, te in folds:
                metas.append((rep, fold, te, None))
                yield clone(pipeline), tr, te, _fold_label(scheme, rep, fold, te, ids)

    rows = []
    # threads locally: the trees, SVMs and distance kernels release the GIL, and threads need no
    # fresh interpreter (importing scipy/sklearn costs seconds) nor copies of the data
    out = map_calls(fn, calls(), shared=shared, n_jobs=n_jobs or 1, **where)
    results = ((metas[i], r) for i, r in enumerate(out))
    for (rep, fold, te, support), (score, pred, mask) in _progress(
            results, total=len(folds), desc=desc, enabled=show):
        if support is not None:
            mask = support
        if mask is None:
            have_mask = False
        else:
            counts += mask
        n_fits += 1
        for j, i in enumerate(te):
            rows.append((i, float(score[j]), int(pred[j]), fold, rep))
    return rows, (counts if have_mask else None), n_fits


# --------------------------------------------------------------------------- permutations
def _permuted_labels(y: np.ndarray, cfg, folds):
    """Each permutation's labels, in order, from one generator seeded with ``cfg.seed`` (external:
    the training cases' labels only), each with its index. Drawn one at a time: never all held at once."""
    rng = np.random.default_rng(cfg.seed)
    tr = folds[0][2] if cfg.scheme == "external" else None
    for k in range(cfg.permutations):
        if tr is None:
            yield k, rng.permutation(y)
        else:
            yp = y.copy()
            yp[tr] = rng.permutation(yp[tr])
            yield k, yp


def _permutation_auc(k: int, yp: np.ndarray, *, cfg, fast: bool, pipeline, Xv: np.ndarray, names: np.ndarray,
                     y: np.ndarray, folds, ids: np.ndarray | None = None) -> float:
    """Permutation ``k`` (from 0) of the label-permutation test: the whole evaluation with the
    labels ``yp``, its folds one after the other in this process (a Dask worker with
    ``backend="dask"``); its pooled AUC (for external, against the true test labels). An error
    leaves with notes naming the fold (case ``ids``) and the permutation (also from a worker).

    ``folds``: the external scheme's (fixed) split; otherwise None, the folds are drawn here from
    ``yp`` as the client would draw them (:func:`_folds` is deterministic).
    """
    external = cfg.scheme == "external"
    def run():
        pf = folds if external else _folds(cfg, yp, None, None)
        return _run_folds(pipeline, {"Xv": Xv, "names": names, "y": yp}, len(names), pf,
                          scheme=cfg.scheme, fast=fast, n_jobs=1, show=False, desc="", ids=ids)

    rows, _, _ = _in_fold(f"in permutation {k + 1} of {cfg.permutations} of the label-permutation test", run)
    return _pooled_auc(rows, y if external else yp)


def _null_aucs(pipeline, data: dict, y: np.ndarray, cfg, folds, fast: bool, n_jobs: int, show: bool,
               desc: str, backend: str = "local", address: str | None = None,
               ids: np.ndarray | None = None) -> np.ndarray:
    """The permutations' pooled AUCs, in order: each permutation one call (``n_jobs`` threads
    here, or on the Dask cluster, in tasks of a few permutations: a permutation is a whole
    evaluation, so finer than folds), the data and the pipeline sent to each worker once."""
    where = {"backend": backend, "address": address}
    fixed = folds if cfg.scheme == "external" else None
    with shared_values({"pipeline": pipeline, "folds": fixed, "ids": ids}, **where) as more:
        out = map_calls(partial(_permutation_auc, cfg=cfg, fast=fast), _permuted_labels(y, cfg, folds),
                        shared={**data, **more}, n_jobs=n_jobs or 1, n_calls=cfg.permutations,
                        chunks_per_slot=16, **where)
        null = np.fromiter(_progress(out, total=cfg.permutations, desc=f"{desc} permutations", enabled=show),
                           dtype=np.float64, count=cfg.permutations)
    return null


# --------------------------------------------------------------------------- evaluation
def _summarise(pred: pd.DataFrame, level: float) -> dict:
    """The metrics of one experiment's predictions: one definition for every scheme (see
    :func:`radiodeep.stats.binary_metrics`): all repeats pooled, each case once per repeat."""
    return binary_metrics(pred["y_true"].to_numpy(), pred["score"].to_numpy(),
                          pred["y_pred"].to_numpy(), level, groups=pred["case_id"].to_numpy())


def _pooled_auc(pred_rows, y: np.ndarray) -> float:
    df = pd.DataFrame(pred_rows, columns=["row", "score", "y_pred", "fold", "repeat"])
    return delong_variance(y[df["row"].to_numpy()], df["score"].to_numpy())[0]


def evaluate(pipeline, X: pd.DataFrame, y: pd.Series, cfg=None, *, experiment: str = "",
             split: pd.Series | None = None, progress: bool = False, n_jobs: int = 1,
             fast: bool = True, backend: str = "local", address: str | None = None,
             dask_address: str | None = None) -> EvaluationResult:
    """Evaluate ``pipeline`` on ``X`` (cases x features) and ``y`` (0/1, 1 = positive).

    ``cfg`` is an :class:`~radiodeep.config.EvaluationConfig` (None: its defaults, leave-one-out);
    ``split`` (case id -> split name) is needed by the external scheme. The pipeline is cloned and
    refitted in every fold, so no information from a test case reaches its model. ``n_jobs`` > 1
    fits folds in parallel threads (same results: e.g. ``config.execution.n_jobs``);
    ``backend="dask"`` runs the folds (the learned routes' training folds included), the shared
    leave-one-out selection and the permutations (a task each: its whole evaluation) on the Dask
    cluster at ``address``, the data sent to each worker once (same results; ``dask_address=A`` is
    short for ``backend="dask", address=A``);
    ``fast=False`` turns off the shared leave-one-out selection path (same results, slower).
    ``progress`` shows a per-fold progress bar. Raises ``ValueError`` when the experiment cannot
    run (too few cases of a class, k above the number of features, missing values, ...).

    Scores are P(class 1) for probabilistic models (predicted positive above 0.5, as
    ``predict``), the decision function for SVMs (positive above 0).
    """
    if dask_address is not None:
        backend, address = "dask", dask_address
    if cfg is None:
        from .config import EvaluationConfig

        cfg = EvaluationConfig()
    first = pipeline.steps[0][1] if isinstance(pipeline, Pipeline) and pipeline.steps else None
    X, ys = _check_xy(X, y, allow_nan=bool(getattr(first, "imputes_missing", False)))
    y_arr = ys.to_numpy(dtype=int)
    where = f"experiment {experiment}: " if experiment else ""
    if not hasattr(pipeline, "fit"):
        raise ValueError(f"{where}not an estimator: {type(pipeline).__name__}")
    final = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
    if not (hasattr(final, "predict_proba") or hasattr(final, "decision_function")):
        raise ValueError(f"{where}{type(final).__name__} has neither predict_proba nor decision_function")
    names = np.asarray([str(c) for c in X.columns], dtype=object)
    if isinstance(pipeline, Pipeline) and pipeline.steps:
        try:
            _check_selector(pipeline.steps[0][1], names, where)
        except ValueError as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith(where) else where + msg) from None
    folds = _folds(cfg, y_arr, X.index, split)
    desc = experiment or "folds"
    # one BLAS thread: fold-sized problems run several times faster without thread hand-offs
    # (and the folds themselves may run in parallel threads)
    with threadpool_limits(limits=1, user_api="blas"):
        return _evaluate(pipeline, X, y_arr, cfg, folds, split, experiment, desc, progress,
                         n_jobs, fast, {"backend": backend, "address": address})


def _evaluate(pipeline, X, y_arr, cfg, folds, split, experiment, desc, progress, n_jobs, fast, where):
    names = np.asarray([str(c) for c in X.columns], dtype=object)
    case_ids = X.index.to_numpy()
    # sent to the cluster once for the folds and every permutation (backend dask)
    with shared_values({"Xv": X.to_numpy(dtype=np.float64), "names": names, "y": y_arr}, **where) as data:
        rows, counts, n_fits = _run_folds(pipeline, data, len(names), folds, scheme=cfg.scheme, fast=fast,
                                          n_jobs=n_jobs, show=progress, desc=desc, ids=case_ids, **where)
        null = (_null_aucs(pipeline, data, y_arr, cfg, folds, fast, n_jobs, progress, desc, ids=case_ids,
                           **where)
                if cfg.permutations else None)

    pred = pd.DataFrame(rows, columns=["row", "score", "y_pred", "fold", "repeat"])
    pred = pred.sort_values(["repeat", "row"], kind="mergesort").reset_index(drop=True)
    predictions = pd.DataFrame({
        "case_id": case_ids[pred["row"].to_numpy()],
        "y_true": y_arr[pred["row"].to_numpy()],
        "score": pred["score"].to_numpy(),
        "y_pred": pred["y_pred"].to_numpy(),
        "fold": pred["fold"].to_numpy(),
        "repeat": pred["repeat"].to_numpy(),
        "experiment": experiment,
    }, columns=PREDICTION_COLUMNS)
    metrics = _summarise(predictions, cfg.ci_level)

    if null is not None:
        observed = metrics["auc"]
        metrics["perm_p"] = float((1 + np.sum(null >= observed)) / (1 + cfg.permutations))
        metrics["perm_n"] = int(cfg.permutations)
        metrics["perm_null_auc_mean"] = float(np.mean(null))

    if counts is None:
        freq = pd.Series(dtype=np.float64, name="selection_frequency")
    else:
        f = counts / max(n_fits, 1)
        order = np.argsort(-f, kind="mergesort")
        order = order[f[order] > 0]
        freq = pd.Series(f[order], index=pd.Index(names[order], name="feature"),
                         name="selection_frequency")
    return EvaluationResult(experiment=experiment, predictions=predictions, metrics=metrics,
                            selection_frequency=freq, null_aucs=null)


DELONG_COLUMNS = ["experiment_a", "experiment_b", "n", "auc_a", "auc_b", "diff", "z", "p"]


def pairwise_delong(predictions: pd.DataFrame) -> pd.DataFrame:
    """DeLong's test between every pair of experiments, on the cases (and repeats) both scored.

    Same AUC definition as the metrics: the pooled out-of-fold scores of all repeats, paired by
    (case, repeat), the variance clustered by case. On the same cases ``auc_a``/``auc_b`` equal
    the experiments' ``auc`` in the metrics; ``n`` is the number of shared cases.
    """
    if predictions.empty:
        return pd.DataFrame(columns=DELONG_COLUMNS)
    scores = predictions.pivot_table(index=["case_id", "repeat"], columns="experiment",
                                     values="score", aggfunc="first", sort=True)
    truth = predictions.groupby(["case_id", "repeat"])["y_true"].first()
    rows = []
    names = list(dict.fromkeys(predictions["experiment"]))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = scores[[a, b]].dropna()
            yt = truth.loc[both.index].to_numpy()
            cases = both.index.get_level_values("case_id").to_numpy()
            if len(pd.unique(cases)) < 3 or len(np.unique(yt)) < 2:
                continue
            r = delong_test(yt, both[a].to_numpy(), both[b].to_numpy(), groups=cases)
            rows.append({"experiment_a": a, "experiment_b": b, "n": int(len(pd.unique(cases))), **r})
    return pd.DataFrame(rows, columns=DELONG_COLUMNS)
