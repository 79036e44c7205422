"""In-fold feature selection: Weka's ReliefF and symmetric uncertainty as scikit-learn selectors.

Every selector here is a scikit-learn transformer (:class:`~sklearn.feature_selection.SelectorMixin`):
fitted on the training cases of a fold only, it exposes ``scores_`` (one merit per input column),
``ranking_`` (columns best first) and keeps the ``k`` best (``k="all"`` keeps every column).
Ranking is deterministic: equal inputs give equal merits, and ties go to the lowest column index
(``np.argsort(-scores, kind="mergesort")``).

* :class:`ReliefF` follows Weka's ``ReliefFAttributeEval``: k nearest hits and k nearest misses
  from each other class, all instances (default) or ``sample_size`` drawn with Weka's own random
  sequence, numeric differences divided by the feature's range on the training data, distance =
  sum of those differences (L1), misses weighted by class priors (more than two classes), no
  distance weighting (Weka's default).
* :class:`SymmetricUncertainty` follows Weka's ``SymmetricalUncertAttributeEval``: each feature is
  discretised by Fayyad & Irani's recursive MDL method (Weka's ``Discretize`` with the "better
  encoding": log2 of the number of candidate cut points), cut points learned from the training
  data; SU = 2 IG / (H(feature) + H(class)) from the (bin, class) table; no cut gives 0.
* :class:`RouteTopK` ranks every feature route (deep, handcrafted, ...) on its own and unites the
  top ``k_per_route`` of each (the published "best 5 deep + best 5 handcrafted").
* :class:`CorrelationFilter` (``filters``) drops a selected feature correlated above a threshold with a
  better-ranked selected one.

Leave-one-out: ``loo_fits(X, y)`` yields, for every case in turn, the selector fitted on all the
other cases. :class:`ReliefF` computes these by updating the pairwise distances and neighbour
sums of the full data (only the rows and the columns whose range changes when a case leaves are
recomputed); the result of every fold is *bit for bit* the cold refit's, because all distances and
difference sums are computed in exact integer arithmetic: each range-normalised value is
quantised to a multiple of 2**-bits, ``bits = min(40, 52 - bit_length(n_features))`` (39 for
5,096 features, 38 for 10,000), so that every row sum stays an exact float64 integer. That is a
resolution of a few 1e-12 of the feature's range, below the float rounding Weka's own sums incur;
the merits agree with a plain float computation to about 1e-12.

Modules: ``relieff``, ``symmetric_uncertainty``, ``route_topk``, ``filters`` (shared base and
leave-one-out helpers in ``_base``). The experiment config is turned into these selectors by
:mod:`radiodeep.experiment`.
"""

from ._base import loo_fits
from .filters import CorrelationFilter
from .relieff import ReliefF, _java_random_indices
from .route_topk import RouteTopK
from .symmetric_uncertainty import SymmetricUncertainty

__all__ = [
    "ReliefF",
    "SymmetricUncertainty",
    "RouteTopK",
    "CorrelationFilter",
    "loo_fits",
]
