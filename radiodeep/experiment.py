"""One experiment of the config -> one scikit-learn ``Pipeline``: selector, scaling, classifier.

This is the only place that turns the ``experiments:`` section into estimators, and
:data:`CLASSIFIERS` is the only list of classifier names (the config validates names against it):

===================== ==========================================================================
name                  estimator (extra keys of the config are its keyword arguments)
===================== ==========================================================================
random_forest         :class:`~radiodeep.sklearn_compat.RandomForest` (``RandomForestClassifier``'s
                      results, faster), 200 trees
svm_rbf               ``StandardScaler`` + ``SVC(kernel="rbf")``: decision scores (AUC), 0 cut
svm_linear            ``StandardScaler`` + ``SVC(kernel="linear")``
naive_bayes           ``GaussianNB``
logistic_regression   ``StandardScaler`` + ``LogisticRegression(max_iter=5000)``
decision_tree         ``DecisionTreeClassifier``
===================== ==========================================================================

The seed goes to ``random_state`` (unless the config sets one); ``class_weight`` (e.g.
``balanced``) is passed through to the models that take it.

A new kind of classifier registers itself with :func:`register_classifier` (an entry of
:data:`CLASSIFIERS`): its name, the estimator class as ``"module:Class"`` (imported only when an
experiment uses it, so that the config can validate names without importing torch), its default
keyword arguments, whether it is standardised inside the pipeline, and what it takes as input
(``"features"``: the selected feature columns; ``"image"``: a model that reads the ROI itself).
Entries are added here, in :data:`CLASSIFIERS`' literal, so that the one list stays one list.

Selectors (``select:``): ``relieff`` / ``su`` with ``k`` (all routes ranked together) or
``k_per_route`` (:class:`~radiodeep.selection.RouteTopK`: each route ranked on its own, the
published "best 5 deep + best 5 handcrafted"), optionally wrapped in a
:class:`~radiodeep.selection.CorrelationFilter`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["CLASSIFIERS", "ClassifierSpec", "register_classifier", "build_classifier",
           "build_selector", "build_pipeline"]


@dataclass(frozen=True)
class ClassifierSpec:
    """How a classifier name of the config becomes an estimator."""

    name: str
    estimator: str  # "module:Class", imported when first built
    defaults: dict = field(default_factory=dict)  # keyword arguments before the config's own
    scaled: bool = False  # StandardScaler fitted in the fold before it
    inputs: str = "features"  # "features" (selected columns) or "image" (reads the ROI itself)

    def load(self):
        module, _, name = self.estimator.partition(":")
        return getattr(importlib.import_module(module), name)


#: every classifier name an experiment may use, in the order the documentation lists them
CLASSIFIERS: dict[str, ClassifierSpec] = {}


def register_classifier(spec: ClassifierSpec) -> ClassifierSpec:
    """Add a classifier kind (a name already taken by another estimator is refused)."""
    old = CLASSIFIERS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"classifier name {spec.name!r} is already registered ({old.estimator})")
    if spec.inputs not in ("features", "image"):
        raise ValueError(f"classifier {spec.name!r}: inputs must be 'features' or 'image'")
    CLASSIFIERS[spec.name] = spec
    return spec


for _spec in (
    ClassifierSpec("random_forest", "radiodeep.sklearn_compat:RandomForest", {"n_estimators": 200}),
    ClassifierSpec("svm_rbf", "sklearn.svm:SVC", {"kernel": "rbf", "C": 1.0, "gamma": "scale"},
                   scaled=True),
    ClassifierSpec("svm_linear", "sklearn.svm:SVC", {"kernel": "linear", "C": 1.0}, scaled=True),
    ClassifierSpec("naive_bayes", "sklearn.naive_bayes:GaussianNB"),
    ClassifierSpec("logistic_regression", "sklearn.linear_model:LogisticRegression",
                   {"C": 1.0, "max_iter": 5000}, scaled=True),
    ClassifierSpec("decision_tree", "sklearn.tree:DecisionTreeClassifier"),
):
    register_classifier(_spec)
del _spec


def build_classifier(cfg, seed: int):
    """The estimator a :class:`~radiodeep.config.ClassifierConfig` describes, seeded with ``seed``.

    Scaled models come as a ``Pipeline`` (``scale`` -> ``clf``) so that their inputs are
    standardised with the training fold's statistics; the others are bare estimators. Raises
    ``ValueError`` naming the bad key for an argument the estimator does not take.
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    name = cfg.name
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(CLASSIFIERS)}")
    spec = CLASSIFIERS[name]
    factory = spec.load()
    kwargs = dict(spec.defaults)
    user = dict(cfg.params)
    if "kernel" in spec.defaults and "kernel" in user and user["kernel"] != kwargs["kernel"]:
        raise ValueError(f"classifier {name}: kernel is fixed by the name (use svm_rbf or svm_linear)")
    kwargs.update(user)
    accepted = set(inspect.signature(factory.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        hint = " (naive Bayes takes priors, not class weights)" if "class_weight" in unknown else ""
        raise ValueError(f"classifier {name}: unknown argument(s) {unknown}{hint}; "
                         f"accepted: {sorted(accepted)}")
    if "random_state" in accepted and "random_state" not in user:
        kwargs["random_state"] = int(seed)
    try:
        est = factory(**kwargs)
        if hasattr(est, "_validate_params"):
            est._validate_params()
    except (TypeError, ValueError) as err:
        raise ValueError(f"classifier {name}: {err}") from None
    if spec.scaled:
        return Pipeline([("scale", StandardScaler()), ("clf", est)])
    return est


def build_selector(select_cfg, routes: Mapping[str, Sequence[str]], seed: int):
    """The selector an experiment's ``select`` section describes (None for ``method: none``).

    ``routes`` maps each of the experiment's routes to its column names in the ``X`` the
    selector will see. ``k_per_route`` gives a :class:`RouteTopK`; ``k`` ranks all those columns
    together; ``correlation_threshold`` wraps the result in a :class:`CorrelationFilter`.
    """
    from .selection import CorrelationFilter, ReliefF, RouteTopK, SymmetricUncertainty

    method = select_cfg.method
    if method == "none":
        return None
    if method == "relieff":
        base = ReliefF(k=10, n_neighbors=select_cfg.neighbours, sample_size=select_cfg.sample,
                       random_state=int(seed))
    elif method == "su":
        base = SymmetricUncertainty(k=10)
    else:
        raise ValueError(f"unknown selection method {method!r}")
    if select_cfg.k_per_route is not None:
        sel = RouteTopK(base, routes={str(r): list(c) for r, c in routes.items()},
                        k_per_route=int(select_cfg.k_per_route))
    else:
        k = select_cfg.k if select_cfg.k is not None else "all"
        sel = base.set_params(k=k)
    if select_cfg.correlation_threshold is not None:
        sel = CorrelationFilter(sel, threshold=float(select_cfg.correlation_threshold))
    return sel


def build_pipeline(experiment, routes: Mapping[str, Sequence[str]], seed: int):
    """The ``Pipeline`` of one :class:`~radiodeep.config.ExperimentConfig`.

    ``routes`` maps route name -> its column names in the ``X`` the pipeline will see (which
    holds only the experiment's routes' columns). Raises ``ValueError`` when the experiment cannot
    run on them (a route missing or empty, ``k`` or ``k_per_route`` above the number of features).
    """
    from sklearn.pipeline import Pipeline

    name = experiment.name
    missing = [r for r in experiment.features if r not in routes]
    if missing:
        raise ValueError(f"experiment {name}: no features for route(s) {missing}")
    own = {r: list(routes[r]) for r in experiment.features}
    for r, cols in own.items():
        if not cols:
            raise ValueError(f"experiment {name}: route {r!r} has no features")
    n_features = sum(len(c) for c in own.values())
    sel = experiment.select
    spec = CLASSIFIERS.get(experiment.classifier.name)
    if spec is not None and spec.inputs == "image":  # a model that reads the ROI itself
        if sel.method != "none":
            raise ValueError(f"experiment {name}: classifier {spec.name} learns from the images; "
                             f"feature selection does not apply (select: {{method: none}})")
        return Pipeline([("clf", build_classifier(experiment.classifier, seed))])
    if sel.method != "none":
        if sel.k_per_route is not None:
            for r, cols in own.items():
                if sel.k_per_route > len(cols):
                    raise ValueError(f"experiment {name}: k_per_route={sel.k_per_route} but route "
                                     f"{r!r} has only {len(cols)} features")
        elif isinstance(sel.k, int) and sel.k > n_features:
            raise ValueError(f"experiment {name}: k={sel.k} but the experiment has only "
                             f"{n_features} features")
    selector = build_selector(sel, own, seed)
    clf = build_classifier(experiment.classifier, seed)
    steps = [("select", selector)] if selector is not None else []
    steps += clf.steps if isinstance(clf, Pipeline) else [("clf", clf)]
    return Pipeline(steps)
