"""CNNs trained from scratch inside each fold (``cnn_scratch``) and their ensembles (``cnn_ensemble``).

Both are built on :class:`~radiodeep.learned.estimator.CNNClassifier` (skorch): fresh weights at
every ``fit``, seeded, augmentation inside ``fit``, the per-fold audit.

**The network's input.** An architecture (:mod:`.architectures`) takes ``input_size`` ×
``input_size`` images (published: 100). The ROI stage may cut a larger crop (``roi.size``);
:class:`ScratchNet` then feeds the network the centred ``input_size`` square, so a rotated crop
(augmentation) has no padded corners when ``roi.size >= ceil(input_size·√2)`` (142 for 100;
:func:`~radiodeep.learned.rotations.rotation_crop_side`). A ROI smaller than the network's input
is refused before any training, naming both sizes (:func:`check_scratch_input`).

**One sigmoid output.** The published networks end in one sigmoid unit. :class:`ScratchNet`
returns the two logits ``[0, z]`` for the estimator's softmax/cross-entropy: softmax gives
``[1 - σ(z), σ(z)]`` and the cross-entropy equals binary cross-entropy on ``σ(z)``, exactly; the
parameter count stays the published one.

**L2 0.01** (Keras' ``kernel_regularizer`` on the 8-unit layer) is a gradient hook that adds
``0.02·w`` to that weight's gradient (the derivative of ``0.01·Σw²``), whatever the optimiser:
Keras' coupled L2, on that layer only.

**Ensembles.** ``architectures`` × ``seeds`` members, all trained on the same training fold;
their P(positive) are combined by ``average``, ``median`` or ``vote``:

* ``vote``: each member votes positive when its P > 0.5; the score is the fraction of positive
  votes. **Ties** (an even number of members, half of them positive) score 0.5 and predict the
  **negative** class: a case is called positive only by a strict majority.
* a member whose training diverges (a non-finite loss: ``TrainingDiverged``) or whose
  probabilities are not finite fails alone; the ensemble combines the members left, records
  which it used (``members_used_``, ``members_failed_`` with the reason) and fails only when
  none is left.

With ``record_dir`` set, every scoring call writes each member's and each combination's scores
of the held-out cases (``record_dir/<record_name>/fold_<...>.csv`` and ``.json``), from which
the pipeline reports every member and combination beside the ensemble (:func:`member_predictions`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..atomic import write_atomic
from .architectures import ArchitectureError, build_architecture, check_input_size, expected_input_size
from .audit import tensor_hashes
from .estimator import CNNClassifier, TrainingDiverged

__all__ = ["ScratchNet", "check_scratch_input", "scratch_classifier", "CNNEnsemble", "combine_scores",
           "COMBINES", "member_predictions"]

log = logging.getLogger(__name__)

COMBINES = ("average", "median", "vote")

#: defaults of a member's training (CNNClassifier parameters); the config overrides any of them
MEMBER_DEFAULTS = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "lr_schedule": None, "batch_size": 64}


class _L2Grad:
    """Gradient hook: ``g + 2·l2·w`` (the gradient of ``l2·Σw²``, Keras' L2 regulariser)."""

    def __init__(self, param: nn.Parameter, decay: float):
        self.param, self.decay = param, float(decay)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad + self.decay * self.param.detach()


def _cut(x: torch.Tensor, size: int) -> torch.Tensor:
    L = x.shape[-1]
    if L == size:
        return x
    o = (L - size) // 2
    return x[..., o:o + size, o:o + size]


class ScratchNet(nn.Module):
    """An architecture of the registry for :class:`CNNClassifier` (see the module docstring)."""

    def __init__(self, architecture: str = "usf1", in_channels: int = 2, input_size: int = 100,
                 n_classes: int = 2, channels: list[int] | None = None):
        super().__init__()
        if n_classes != 2:
            raise ArchitectureError(f"cnn_scratch and cnn_ensemble classify two classes, got {n_classes}")
        self.architecture, self.input_size = architecture, int(input_size)
        self.channels = None if channels is None else [int(c) for c in channels]
        if self.channels is not None:
            in_channels = len(self.channels)
        self.net = build_architecture(architecture, in_channels=in_channels, size=self.input_size, n_outputs=1)
        for name, decay in dict(getattr(self.net, "weight_decay", {}) or {}).items():
            p = self.net.get_parameter(name)
            p.register_hook(_L2Grad(p, decay))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None:
            x = x[:, self.channels]
        z = self.net(_cut(x, self.input_size))
        if z.shape[1] == 1:  # one sigmoid output -> the two logits [0, z]
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return z


def check_scratch_input(architecture: str, channels: int, roi_size: int, input_size: int | None) -> int:
    """The network's input side; raises, before any training, when the ROI cannot feed it."""
    size = int(input_size or roi_size)
    if roi_size < size:
        raise ArchitectureError(
            f"architecture {architecture} expects {size}×{size} inputs but the ROI stage gives "
            f"{roi_size}×{roi_size} (roi.size: {roi_size}); set roi.size to at least {size} "
            f"(a larger crop is cut to its centre), or input_size: {roi_size}")
    net = build_architecture(architecture, in_channels=channels, size=size, n_outputs=1)
    declared = expected_input_size(net)
    if declared is not None and declared != size:
        raise ArchitectureError(
            f"architecture {architecture} expects {declared}×{declared} inputs but is asked for "
            f"{size}×{size} (roi.size: {roi_size}, input_size: {input_size}); set input_size: {declared}")
    check_input_size(net, architecture, channels, size, where="input_size" if input_size else "roi.size")
    return size


def scratch_classifier(architecture: str, in_channels: int, input_size: int, seed: int = 0,
                       channels: list[int] | None = None, **params) -> CNNClassifier:
    """One network trained from scratch: a :class:`CNNClassifier` around :class:`ScratchNet`
    (``channels``: the input tensor's channels it takes, None: all ``in_channels``)."""
    kw = {**MEMBER_DEFAULTS, **params}
    mp = {"architecture": architecture, "in_channels": int(in_channels), "input_size": int(input_size)}
    if channels is not None:
        mp["channels"] = [int(c) for c in channels]
    return CNNClassifier(module=ScratchNet, module_params=mp, seed=int(seed), **kw)


def combine_scores(P: np.ndarray, how: str) -> np.ndarray:
    """Combine members' P(positive) ``(n_members, n_cases)`` into one score per case."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] == 0:
        raise ValueError("no member scores to combine")
    if how == "average":
        return P.mean(axis=0)
    if how == "median":
        return np.median(P, axis=0)
    if how == "vote":
        return (P > 0.5).mean(axis=0)  # a tie scores 0.5: not > 0.5, so negative
    raise ValueError(f"combine must be one of {list(COMBINES)}, got {how!r}")


def _as_list(v) -> list:
    if v is None:
        return []
    return [v] if isinstance(v, (str, dict)) else list(v)


class CNNEnsemble(ClassifierMixin, BaseEstimator):
    """``architectures`` × ``seeds`` CNNs trained from scratch in the same fold, combined.

    ``architectures``: names (``usf1``, ``package.module:Class``) or mappings ``{name: ...,
    <CNNClassifier parameter>: ...}`` overriding member settings for that architecture;
    ``seeds``: a count N (member seeds ``seed``, ``seed+1``, ...) or a list of seeds;
    ``combine``: ``average`` | ``median`` | ``vote`` or a list (the first scores the ensemble;
    all are recorded); ``input_size``: the network input side (default: the image side);
    ``member_params``: :class:`CNNClassifier` parameters of every member (epochs, lr,
    batch_size, augment, train_split, early_stopping, threads, device, ...).
    """

    def __init__(self, architectures=("usf1", "usf2", "usf3"), seeds=1, combine="average", input_size=None,
                 input_shape=None, member_params=None, seed: int = 0, record_dir=None, record_name=None,
                 audit_ids=None):
        self.architectures = architectures
        self.seeds = seeds
        self.combine = combine
        self.input_size = input_size
        self.input_shape = input_shape
        self.member_params = member_params
        self.seed = seed
        self.record_dir = record_dir
        self.record_name = record_name
        self.audit_ids = audit_ids

    # ------------------------------------------------------------------ members
    def _combines(self) -> list[str]:
        out = list(COMBINES) if self.combine == "all" else _as_list(self.combine)
        bad = [c for c in out if c not in COMBINES]
        if not out or bad:
            raise ValueError(f"combine must be one of {list(COMBINES)} (or a list of them, or 'all'), got {self.combine!r}")
        return list(dict.fromkeys(out))

    def _seed_list(self) -> list[int]:
        if isinstance(self.seeds, (int, np.integer)):
            if self.seeds < 1:
                raise ValueError(f"seeds must be at least 1, got {self.seeds}")
            return [int(self.seed) + i for i in range(int(self.seeds))]
        seeds = [int(s) for s in self.seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be a count or a list of distinct seeds, got {self.seeds!r}")
        return seeds

    def member_specs(self) -> list[tuple[str, str, int, dict]]:
        """``(member name, architecture, seed, overrides)`` for every member, in order."""
        archs = _as_list(self.architectures)
        if not archs:
            raise ValueError("cnn_ensemble needs at least one architecture")
        specs = []
        for a in archs:
            over = dict(a) if isinstance(a, dict) else {"name": a}
            name = str(over.pop("name", ""))
            if not name:
                raise ValueError(f"an architecture entry needs a name: {a!r}")
            label = over.pop("label", name.rpartition(":")[2] if ":" in name else name)
            for s in self._seed_list():
                specs.append((f"{label}-s{s}", name, s, over))
        names = [m for m, *_ in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble members named twice: {names}; give each a distinct 'label'")
        return specs

    def _shape(self, X) -> tuple[int, ...]:
        if self.input_shape is not None:
            return tuple(int(s) for s in self.input_shape)
        x = np.asarray(X)
        if x.ndim != 4:
            raise ValueError("flat rows need input_shape=(C, H, W)")
        return tuple(x.shape[1:])

    def fit(self, X, y):
        combines = self._combines()
        specs = self.member_specs()
        C, H, W = self._shape(X)
        if H != W:
            raise ValueError(f"images must be square, got {H}×{W}")
        self.members_, self.members_failed_, self.member_names_ = {}, {}, []
        for name, arch, s, over in specs:
            params = {**dict(self.member_params or {}), **over}
            sel = params.pop("channels", None)
            size = check_scratch_input(arch, len(sel) if sel else C, H, self.input_size)
            if self.input_shape is not None:
                params["input_shape"] = tuple(int(v) for v in self.input_shape)
            params.setdefault("audit_ids", self.audit_ids)
            est = scratch_classifier(arch, C, size, seed=s, channels=sel, **params)
            try:
                est.fit(X, y)
            except TrainingDiverged as err:
                log.warning("ensemble member %s failed: %s", name, err)
                self.members_failed_[name] = str(err)
                continue
            self.members_[name] = est
            self.member_names_.append(name)
        if not self.members_:
            raise TrainingDiverged(f"every ensemble member failed: {self.members_failed_}")
        self.classes_ = next(iter(self.members_.values())).classes_
        self.combines_ = combines
        return self

    def member_scores(self, X) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """P(positive) of every member still usable on ``X``, and the members that fail on it."""
        check_is_fitted(self, "members_")
        scores, failed = {}, {}
        for name in self.member_names_:
            p = self.members_[name].predict_proba(X)[:, 1]
            if not np.all(np.isfinite(p)):
                failed[name] = "its probabilities are not finite"
                continue
            scores[name] = p
        if not scores:
            raise TrainingDiverged(f"no ensemble member gives finite scores: {failed}")
        return scores, failed

    def scores(self, X) -> tuple[pd.DataFrame, dict]:
        """A frame (one row per case) of every member's and every combination's score."""
        member, failed = self.member_scores(X)
        P = np.vstack(list(member.values()))
        frame = pd.DataFrame(member)
        for how in self.combines_:
            frame[f"[{how}]"] = combine_scores(P, how)
        info = {"members_used": list(member), "members_failed": {**self.members_failed_, **failed},
                "combine": self.combines_}
        return frame, info

    def predict_proba(self, X) -> np.ndarray:
        frame, info = self.scores(X)
        self.last_info_ = info
        s = frame[f"[{self.combines_[0]}]"].to_numpy()
        if self.record_dir is not None:
            self._record(X, frame, info)
        return np.column_stack([1.0 - s, s])

    def predict(self, X) -> np.ndarray:
        s = self.predict_proba(X)[:, 1]
        return self.classes_[(s > 0.5).astype(int)]

    # ------------------------------------------------------------------ the record
    def _ids(self, X) -> list[str]:
        if isinstance(X, pd.DataFrame) and not isinstance(X.index, pd.RangeIndex):
            return [str(i) for i in X.index]
        x = np.asarray(X, dtype=np.float32)
        if x.ndim == 2 and self.input_shape is not None:
            x = x.reshape((len(x),) + tuple(int(s) for s in self.input_shape))
        lookup = self.audit_ids or {}
        return [lookup.get(h, h) for h in tensor_hashes(np.ascontiguousarray(x))]

    def _record(self, X, frame: pd.DataFrame, info: dict) -> None:
        ids = self._ids(X)
        key = hashlib.sha1("|".join(sorted(ids)).encode()).hexdigest()[:12]
        d = Path(self.record_dir) / str(self.record_name or "ensemble")
        d.mkdir(parents=True, exist_ok=True)
        out = frame.copy()
        out.insert(0, "case_id", ids)
        for path, text in ((d / f"fold_{key}.csv", out.to_csv(index=False)),
                           (d / f"fold_{key}.json", json.dumps(info, indent=1))):
            write_atomic(path, text)


def member_predictions(record_dir: Path | str, name: str, predictions: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Predictions of every member and combination of ensemble experiment ``name``.

    ``predictions`` are the experiment's own (case_id, y_true, fold, repeat, ...); the scores come
    from the fold records. Returns the rows (``experiment`` = ``name/member`` or ``name[combine]``)
    and ``{"members_used": {member: folds used}, "members_failed": {member: [reasons]}}``.
    """
    d = Path(record_dir) / name
    records = {}
    for p in sorted(d.glob("fold_*.csv")):
        df = pd.read_csv(p, dtype={"case_id": str})
        info = json.loads(p.with_suffix(".json").read_text(encoding="utf-8"))
        records[p.stem.removeprefix("fold_")] = (df.set_index("case_id"), info)
    rows, used, failed = [], {}, {}
    for (rep, fold), part in predictions.groupby(["repeat", "fold"], sort=True):
        ids = [str(c) for c in part["case_id"]]
        key = hashlib.sha1("|".join(sorted(ids)).encode()).hexdigest()[:12]
        if key not in records:
            raise ValueError(f"ensemble {name}: no member record for fold {fold} (repeat {rep}) in {d}")
        frame, info = records[key]
        for m in info["members_used"]:
            used[m] = used.get(m, 0) + 1
        for m, why in info["members_failed"].items():
            failed.setdefault(m, []).append(why)
        for col in frame.columns:
            label = f"{name}{col}" if col.startswith("[") else f"{name}/{col}"
            s = frame.loc[ids, col].to_numpy(dtype=np.float64)
            rows.append(pd.DataFrame({"case_id": part["case_id"].to_numpy(), "y_true": part["y_true"].to_numpy(),
                                      "score": s, "y_pred": (s > 0.5).astype(int), "fold": fold, "repeat": rep,
                                      "experiment": label}))
    out = pd.concat(rows, ignore_index=True) if rows else predictions.iloc[:0].copy()
    return out, {"members_used": used, "members_failed": {k: sorted(set(v)) for k, v in failed.items()}}


# --------------------------------------------------------------------------- from the config
def _member_params(c, config, X) -> tuple[dict, tuple[int, int, int]]:
    from .audit import tensor_hash
    from .route import input_shape

    shape = input_shape(config)
    ids = None
    if X is not None:  # hash -> case id: the audit and the member records name the cases
        vals = X.to_numpy(dtype=np.float32)
        ids = {tensor_hash(v.reshape(shape)): str(cid) for v, cid in zip(vals, X.index)}
    params = {"epochs": c.epochs, "lr": c.lr, "optimizer": c.optimizer, "momentum": c.momentum,
              "lr_schedule": None if c.lr_schedule is None else (c.lr_schedule.step, c.lr_schedule.gamma),
              "batch_size": c.batch_size, "augment": None if c.augment is None else c.augment.model_dump(mode="json"),
              "device": c.device, "threads": c.threads, "train_split": c.train_split,
              "early_stopping": c.early_stopping, "input_shape": shape, "audit_ids": ids,
              "progress": bool(config.execution.progress)}
    if c.channels is not None:
        params["channels"] = list(c.channels)
    return params, shape


def build_scratch(exp, config, X=None):
    """The ``Pipeline`` of a ``cnn_scratch`` or ``cnn_ensemble`` experiment."""
    from sklearn.pipeline import Pipeline

    c = exp.classifier
    seed = int(config.evaluation.seed if c.seed is None else c.seed)
    params, shape = _member_params(c, config, X)
    audit = {"audit_dir": str(config.output_dir / "audit"), "audit_name": exp.name}
    if c.name == "cnn_scratch":
        sel = params.pop("channels", None)
        size = check_scratch_input(c.architecture, len(sel) if sel else shape[0], shape[1], c.input_size)
        return Pipeline([("clf", scratch_classifier(c.architecture, shape[0], size, seed=seed, channels=sel,
                                                    **params, **audit))])
    ids = params.pop("audit_ids")
    params.pop("input_shape")
    return Pipeline([("clf", CNNEnsemble(
        architectures=list(c.architectures), seeds=c.seeds, combine=c.combine, input_size=c.input_size,
        input_shape=shape, member_params={**params, **audit}, seed=seed,
        record_dir=str(config.output_dir / "ensembles"), record_name=exp.name, audit_ids=ids))])


def scratch_problems(exp, config, where: str) -> list[str]:
    """Settings problems of a scratch/ensemble experiment, before any case is read."""
    c = exp.classifier
    archs = [c.architecture] if c.name == "cnn_scratch" else [
        a.get("name", "") if isinstance(a, dict) else a for a in c.architectures]
    n_in = len(c.channels) if c.channels else 3
    problems = []
    for a in dict.fromkeys(archs):
        try:
            check_scratch_input(a, n_in, config.roi.size, c.input_size)
        except ArchitectureError as err:
            problems.append(f"{where}: {err}")
    if c.name == "cnn_ensemble":
        try:
            CNNEnsemble(architectures=list(c.architectures), seeds=c.seeds, combine=c.combine,
                        seed=0)._combines()
            CNNEnsemble(architectures=list(c.architectures), seeds=c.seeds).member_specs()
        except ValueError as err:
            problems.append(f"{where}: {err}")
    size = c.input_size or config.roi.size
    aug = c.augment
    if aug is not None and aug.rotate_deg and config.roi.size < int(np.ceil(size * np.sqrt(2))) \
            and aug.mode in ("circle", "circle_random"):
        log.info("%s: roi.size %d is smaller than ceil(%d·√2): rotated crops have padded corners inside the "
                 "network's view; set roi.size: %d (and input_size: %d) to avoid it", where, config.roi.size,
                 size, int(np.ceil(size * np.sqrt(2))), size)
    return problems


# --------------------------------------------------------------------------- the report's rows
def record_folder(config, name: str) -> Path:
    return Path(config.output_dir) / "ensembles" / name


def clear_record(config, name: str) -> None:
    """Remove a previous run's member records of experiment ``name`` (before it is evaluated)."""
    import shutil

    shutil.rmtree(record_folder(config, name), ignore_errors=True)


def ensemble_rows(config, exp, predictions: pd.DataFrame, describe: dict) -> tuple[list[dict], pd.DataFrame, dict]:
    """Metrics rows and predictions of every member and extra combination of an ensemble
    experiment, with a summary (members used/failed, DeLong ensemble vs each member, seed spread)
    written to ``ensembles/<name>/summary.json``."""
    from ..evaluation import _summarise
    from ..stats import delong_test

    name = exp.name
    c = exp.classifier
    combines = list(COMBINES) if c.combine == "all" else _as_list(c.combine)
    extra, info = member_predictions(Path(config.output_dir) / "ensembles", name, predictions)
    extra = extra[extra.experiment != f"{name}[{combines[0]}]"]  # that one is the experiment itself
    ev = config.evaluation
    rows = []
    for label, part in extra.groupby("experiment", sort=False):
        kind = "combine " + label[len(name):].strip("[]") if label.startswith(name + "[") else "member"
        rows.append({"experiment": label, **describe, "classifier": f"cnn_ensemble {kind}",
                     **_summarise(part.reset_index(drop=True), ev.ci_level)})
    ens = predictions.groupby("case_id")["score"].mean()
    truth = predictions.groupby("case_id")["y_true"].first()
    tests, aucs = [], {}
    for label, part in extra.groupby("experiment", sort=False):
        s = part.groupby("case_id")["score"].mean().reindex(ens.index)
        if label.startswith(name + "/"):
            aucs[label[len(name) + 1:]] = None
        if s.isna().any() or truth.nunique() < 2 or len(ens) < 3:
            continue
        r = delong_test(truth.to_numpy(), ens.to_numpy(), s.to_numpy())
        if label.startswith(name + "/"):
            aucs[label[len(name) + 1:]] = r["auc_b"]
        tests.append({"ensemble": f"{name} ({combines[0]})", "versus": label, **{k: float(v) for k, v in r.items()}})
    spread = {}
    for member, auc in aucs.items():
        arch = member.rsplit("-s", 1)[0]
        if auc is not None:
            spread.setdefault(arch, []).append(auc)
    notes = []
    for arch, vals in spread.items():
        if len(vals) > 1:
            notes.append(f"{arch}: AUC {min(vals):.3f} to {max(vals):.3f} over {len(vals)} seeds "
                         f"(SD {np.std(vals, ddof=1):.3f})")
    if not notes:
        notes.append("one seed per architecture: the seed spread is not measured (seeds: 2 or more measures it); "
                     "differences between single networks may be within it")
    else:
        notes.append("differences between members smaller than their seed spread are not differences "
                     "between architectures")
    failed = info["members_failed"]
    summary = {
        "combine": combines[0], "combinations_reported": combines,
        "members_used": info["members_used"],
        "members_failed": failed,
        "delong_ensemble_vs": tests,
        "seed_spread": "; ".join(notes),
    }
    if failed:
        log.warning("ensemble %s: member(s) %s failed in some folds and were left out there: %s", name,
                    sorted(failed), failed)
    folder = record_folder(config, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return rows, extra.reset_index(drop=True), summary
