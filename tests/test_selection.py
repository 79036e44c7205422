"""Selectors: scikit-learn conformance, Weka's semantics on hand-computed examples, exact LOO."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from radiodeep.config import SelectConfig
from radiodeep.experiment import build_selector
from radiodeep.selection import (
    CorrelationFilter,
    ReliefF,
    RouteTopK,
    SymmetricUncertainty,
    _java_random_indices,
    loo_fits,
)


# --------------------------------------------------------------------------- sklearn conformance
@parametrize_with_checks([
    # every selector as constructed by default, then with typical settings
    ReliefF(),
    SymmetricUncertainty(),
    RouteTopK(),
    CorrelationFilter(),
    ReliefF(k=2),
    ReliefF(k=1, n_neighbors=3, sample_size=5, random_state=3),
    SymmetricUncertainty(k=2),
    RouteTopK(SymmetricUncertainty(), routes=[[0], [1]], k_per_route=1),
    CorrelationFilter(ReliefF(k=2), threshold=0.8),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- ReliefF by hand
def test_relieff_hand_example_one_neighbour():
    # x normalised by the range 4 of both features: A=(0,0) B=(.25,.5) C=(.5,.25) D=(1,1)
    # classes A,B = 0 and C,D = 1; L1 distances: AB .75, AC .75, AD 2, BC .5, BD 1.25, CD 1.25
    X = np.array([[0, 0], [1, 2], [2, 1], [4, 4]], dtype=float)
    y = np.array([0, 0, 1, 1])
    # A: hit B, miss C -> f0 -.25+.5,  f1 -.5+.25
    # B: hit A, miss C -> f0 -.25+.25, f1 -.5+.25
    # C: hit D, miss B -> f0 -.5+.25,  f1 -.75+.25
    # D: hit C, miss B -> f0 -.5+.75,  f1 -.75+.5
    f0 = (0.25 + 0.0 - 0.25 + 0.25) / 4
    f1 = (-0.25 - 0.25 - 0.5 - 0.25) / 4
    sel = ReliefF(k=1, n_neighbors=1).fit(X, y)
    np.testing.assert_allclose(sel.scores_, [f0, f1], rtol=0, atol=1e-12)
    assert sel.get_support().tolist() == [True, False]


def test_relieff_hand_example_fewer_neighbours_than_k():
    # same data, 10 neighbours: one hit (stored 1) and two misses (stored 2) for everyone
    X = np.array([[0, 0], [1, 2], [2, 1], [4, 4]], dtype=float)
    y = np.array([0, 0, 1, 1])
    # A: -.25 + (.5+1)/2,   -.5 + (.25+1)/2
    # B: -.25 + (.25+.75)/2, -.5 + (.25+.5)/2
    # C: -.5 + (.5+.25)/2,  -.75 + (.25+.25)/2
    # D: -.5 + (1+.75)/2,   -.75 + (1+.5)/2
    f0 = (0.5 + 0.25 - 0.125 + 0.375) / 4
    f1 = (0.125 - 0.125 - 0.5 + 0.0) / 4
    sel = ReliefF(k="all").fit(X, y)
    np.testing.assert_allclose(sel.scores_, [f0, f1], rtol=0, atol=1e-12)


def test_relieff_hand_example_three_classes_prior_weights():
    # one feature, values 0,1 (class 0), 2 (class 1), 4 (class 2): normalised 0,.25,.5,1
    # priors .5,.25,.25; a miss of class c for an instance of class i weighs p_c / (1 - p_i)
    X = np.array([[0.0], [1.0], [2.0], [4.0]])
    y = np.array([0, 0, 1, 2])
    a = -0.25 + 0.5 * (0.25 / 0.5) + 1.0 * (0.25 / 0.5)
    b = -0.25 + 0.25 * (0.25 / 0.5) + 0.75 * (0.25 / 0.5)
    c = 0.25 * (0.5 / 0.75) + 0.5 * (0.25 / 0.75)  # no hit: alone in its class
    d = 0.75 * (0.5 / 0.75) + 0.5 * (0.25 / 0.75)
    sel = ReliefF(k="all", n_neighbors=1).fit(X, y)
    assert sel.scores_[0] == pytest.approx((a + b + c + d) / 4, abs=1e-12)


def _weka_relieff(X, y, k, sample=None):
    """A literal transcription of Weka's ReliefF loops (nominal class, no distance weighting)."""
    X = np.asarray(X, float)
    n, p = X.shape
    C = int(y.max()) + 1
    lo, hi = X.min(0), X.max(0)

    def norm(v, f):
        return 0.0 if hi[f] - lo[f] < 1e-6 else (v - lo[f]) / (hi[f] - lo[f])

    def diff(f, a, b):
        return abs(norm(a, f) - norm(b, f))

    prior = np.bincount(y, minlength=C) / n
    W = np.zeros(p)
    rows = list(range(n)) if sample is None else list(sample)
    for z in rows:
        dist = sorted((sum(diff(f, X[i, f], X[z, f]) for f in range(p)), i) for i in range(n) if i != z)
        near = {c: [i for _, i in dist if y[i] == c][:k] for c in range(C)}
        for h in near[y[z]]:
            for f in range(p):
                W[f] -= diff(f, X[z, f], X[h, f]) / len(near[y[z]])
        for c in range(C):
            if c == y[z]:
                continue
            for m in near[c]:
                for f in range(p):
                    t = diff(f, X[z, f], X[m, f]) / len(near[c])
                    W[f] += t if C == 2 else prior[c] / (1 - prior[y[z]]) * t
    return W / len(rows)


@pytest.mark.parametrize("seed", range(4))
def test_relieff_matches_a_literal_weka_transcription(seed):
    rng = np.random.default_rng(seed)
    n, p, C = 23, 6, 2 + seed % 2
    X = rng.normal(size=(n, p))
    X[:, 1] = np.round(X[:, 1])  # ties in distances and values
    X[:, 2] = 3.0  # constant
    y = rng.integers(0, C, n)
    y[:C] = np.arange(C)
    k = 1 + seed
    got = ReliefF(k="all", n_neighbors=k).fit(X, y).scores_
    np.testing.assert_allclose(got, _weka_relieff(X, y, k), rtol=0, atol=1e-10)
    sample = _java_random_indices(seed, 9, n)
    got = ReliefF(k="all", n_neighbors=k, sample_size=9, random_state=seed).fit(X, y).scores_
    np.testing.assert_allclose(got, _weka_relieff(X, y, k, sample), rtol=0, atol=1e-10)


def test_java_random_sequence_is_weka_s():
    # new java.util.Random(0).nextInt() = -1155484576, then -723955400 (Random(42): -1170105035)
    assert _java_random_indices(0, 2, 2**31).tolist() == [1155484576, 723955400]
    assert _java_random_indices(42, 1, 2**31).tolist() == [1170105035]
    assert _java_random_indices(1, 3, 10).tolist() == [5, 6, 5]  # |nextInt() % 10|


def test_relieff_default_seed_and_determinism():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 8)), np.arange(30) % 2
    a = ReliefF(k=3, sample_size=10).fit(X, y).scores_
    b = ReliefF(k=3, sample_size=10, random_state=1).fit(X, y).scores_  # Weka's default seed
    assert np.array_equal(a, b)
    c = ReliefF(k=3, sample_size=10, random_state=7).fit(X, y).scores_
    assert not np.array_equal(a, c)


def test_relieff_agrees_with_skrebate():
    skrebate = pytest.importorskip("skrebate")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 25))
    y = np.arange(60) % 2
    X[:, 3] += y
    ours = ReliefF(k=5, n_neighbors=10).fit(X, y).scores_
    theirs = skrebate.ReliefF(n_neighbors=10, n_features_to_select=5).fit(X, y).feature_importances_
    rho = np.corrcoef(pd.Series(ours).rank(), pd.Series(theirs).rank())[0, 1]
    assert rho > 0.99
    assert np.argmax(ours) == np.argmax(theirs) == 3


# --------------------------------------------------------------------------- SU by hand
def _h(counts):
    counts = np.asarray(counts, float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_su_perfect_split():
    # one cut between 4 and 5: E = 0, gain 1 bit; MDL: 7 candidate cuts,
    # delta = log2(3^2 - 2) - 2 = 0.807, (log2 7 + 0.807) / 8 = 0.452 < 1: accepted
    x = np.arange(1.0, 9.0)[:, None]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    su = SymmetricUncertainty(k=1).fit(x, y)
    assert su.bin_edges_[0].tolist() == [4.5]
    assert su.scores_[0] == pytest.approx(1.0, abs=1e-12)


def test_su_rejected_cut_scores_zero():
    # y = 0 0 0 1 0 1 1 1: best cut after 3 values, E = 5/8 H(1/5) = 0.451, gain 0.549;
    # delta = log2 7 - (2 * 1 - 2 * H(1/5) - 0) = 2.251; (log2 7 + 2.251) / 8 = 0.632 > 0.549
    x = np.arange(1.0, 9.0)[:, None]
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    gain = 1 - 5 / 8 * _h([1, 4])
    delta = math.log2(7) - (2 * 1 - 2 * _h([1, 4]) - 0)
    assert gain < (math.log2(7) + delta) / 8
    su = SymmetricUncertainty(k=1).fit(x, y)
    assert su.bin_edges_[0].size == 0
    assert su.scores_[0] == 0.0


def test_su_two_cuts_by_hand():
    # x = 1..30, y = 0 x12, 1 x10, 0 x8
    # level 1: best cut after 12 (E = 18/30 H(8,10)), gain = H(20,10) - E;
    #          MDL threshold (log2 29 + log2 7 - (2 H(20,10) - 2 H(8,10))) / 30
    # level 2 (right part, 18 values): cut after 10 more, E = 0, gain H(10,8);
    #          threshold (log2 17 + log2 7 - 2 H(10,8)) / 18
    x = np.arange(1.0, 31.0)[:, None]
    y = np.array([0] * 12 + [1] * 10 + [0] * 8)
    g1 = _h([20, 10]) - 18 / 30 * _h([8, 10])
    t1 = (math.log2(29) + math.log2(7) - (2 * _h([20, 10]) - 2 * _h([8, 10]))) / 30
    g2 = _h([10, 8])
    t2 = (math.log2(17) + math.log2(7) - 2 * _h([10, 8])) / 18
    assert g1 > t1 and g2 > t2
    # bins (-inf, 12.5], (12.5, 22.5], (22.5, inf): table [[12, 0], [0, 10], [8, 0]]
    h_class, h_bins, h_cond = _h([20, 10]), _h([12, 10, 8]), 0.0
    expected = 2 * (h_class - h_cond) / (h_class + h_bins)
    su = SymmetricUncertainty(k=1).fit(x, y)
    assert su.bin_edges_[0].tolist() == [12.5, 22.5]
    assert su.scores_[0] == pytest.approx(expected, abs=1e-12)


def test_su_constant_and_no_signal_columns_score_zero():
    rng = np.random.default_rng(1)
    X = np.c_[np.full(20, 2.5), rng.normal(size=20)]
    y = np.arange(20) % 2
    su = SymmetricUncertainty(k="all").fit(X, y)
    assert su.scores_[0] == 0.0 and su.bin_edges_[0].size == 0


def _weka_mdl(vals, ys, C, first, last):
    """A literal transcription of Weka's cutPointsForSubset (Fayyad & Irani, better encoding)."""
    def ent(a):
        s = sum(a)
        return 0.0 if s == 0 else -sum(v / s * math.log2(v / s) for v in a if v > 0)

    if last - first < 2:
        return []
    left, right = [0] * C, [0] * C
    for i in range(first, last):
        right[ys[i]] += 1
    prior = list(right)
    n = last - first
    best_e, best_i, n_cuts, best = ent(prior), -1, 0, None
    for i in range(first, last - 1):
        left[ys[i]] += 1
        right[ys[i]] -= 1
        if vals[i] < vals[i + 1]:
            e = (sum(left) * ent(left) + sum(right) * ent(right)) / n
            if e < best_e - 1e-12:
                best_e, best_i, best = e, i, (list(left), list(right))
            n_cuts += 1
    gain = ent(prior) - best_e
    if best is None or gain <= 0:
        return []
    k = sum(v > 0 for v in prior)
    k1, k2 = sum(v > 0 for v in best[0]), sum(v > 0 for v in best[1])
    delta = math.log2(3 ** k - 2) - (k * ent(prior) - k2 * ent(best[1]) - k1 * ent(best[0]))
    if not gain > (math.log2(n_cuts) + delta) / n:
        return []
    cut = (vals[best_i] + vals[best_i + 1]) / 2
    return (_weka_mdl(vals, ys, C, first, best_i + 1) + [cut]
            + _weka_mdl(vals, ys, C, best_i + 1, last))


@pytest.mark.parametrize("seed", range(6))
def test_mdl_matches_a_literal_weka_transcription(seed):
    rng = np.random.default_rng(seed)
    n, C = 120, 2 + seed % 3
    y = rng.integers(0, C, n)
    X = np.c_[y + rng.normal(scale=0.6, size=n), np.round(rng.normal(size=n) + y, 1),
              rng.normal(size=n), (y == 0) * 1.0 + rng.normal(scale=0.3, size=n)]
    cuts = SymmetricUncertainty(k="all").fit(X, y).bin_edges_
    for f in range(X.shape[1]):
        o = np.argsort(X[:, f], kind="stable")
        expected = _weka_mdl(list(X[o, f]), list(y[o]), C, 0, n)
        np.testing.assert_allclose(cuts[f], expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- ranking, k
def test_ties_go_to_the_lowest_column_and_equal_columns_score_equal():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(30, 1))
    X = np.hstack([rng.normal(size=(30, 2)), base, base, base])
    y = (base[:, 0] > 0).astype(int)
    for sel in (ReliefF(k=2), SymmetricUncertainty(k=2)):
        sel.fit(X, y)
        assert sel.scores_[2] == sel.scores_[3] == sel.scores_[4]
        assert sel.get_support().tolist() == [False, False, True, True, False]
        assert sel.ranking_[:3].tolist() == [2, 3, 4]


def test_k_all_and_k_too_large():
    X, y = np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 2
    assert ReliefF(k="all").fit(X, y).get_support().all()
    with pytest.warns(UserWarning, match="greater than the number of features"):
        assert SymmetricUncertainty(k=9).fit(X, y).get_support().all()
    for bad in (0, -1, "some", 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            ReliefF(k=bad).fit(X, y)


# --------------------------------------------------------------------------- routes, correlation
def _routed_frame(seed=0, n=30):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    deep = pd.DataFrame(rng.normal(size=(n, 12)), columns=[f"alexnet_fc7_r_{i:04d}" for i in range(12)])
    hand = pd.DataFrame(rng.normal(size=(n, 6)) * 1000, columns=[f"original_f{i}" for i in range(6)])
    deep.iloc[:, 7] += 2 * y
    hand.iloc[:, 2] += 2000 * y
    return pd.concat([deep, hand], axis=1), y


def test_route_topk_unites_each_route_s_best():
    X, y = _routed_frame()
    routes = {"deep": [c for c in X.columns if c.startswith("alexnet")],
              "handcrafted": [c for c in X.columns if c.startswith("original")]}
    sel = RouteTopK(ReliefF(), routes=routes, k_per_route=2).fit(X, y)
    chosen = list(sel.get_feature_names_out())
    assert len(chosen) == 4
    assert sum(c.startswith("alexnet") for c in chosen) == 2
    assert "alexnet_fc7_r_0007" in chosen and "original_f2" in chosen
    # each route ranked on its own: equal to fitting the route alone
    alone = ReliefF(k=2).fit(X[routes["handcrafted"]], y)
    np.testing.assert_array_equal(sel.selectors_["handcrafted"].scores_, alone.scores_)
    # ranking interleaves the routes by within-route rank
    first_two = [X.columns[i] for i in sel.ranking_[:2]]
    assert first_two == ["alexnet_fc7_r_0007", "original_f2"]
    # per-route k as a mapping, routes as index lists; no routes: one route of every column
    sel2 = RouteTopK(SymmetricUncertainty(), routes=[list(range(12)), list(range(12, 18))],
                     k_per_route={"route0": 1, "route1": 3}).fit(X.to_numpy(), y)
    assert sel2.get_support()[:12].sum() == 1 and sel2.get_support()[12:].sum() == 3
    sel3 = RouteTopK(ReliefF(), k_per_route=3).fit(X, y)
    assert np.array_equal(sel3.get_support(), ReliefF(k=3).fit(X, y).get_support())
    assert list(sel3.routes_) == ["all"]


def test_route_topk_errors():
    X, y = _routed_frame()
    with pytest.raises(ValueError, match="not in X"):
        RouteTopK(ReliefF(), routes={"deep": ["nope"]}, k_per_route=1).fit(X, y)
    with pytest.raises(ValueError, match="belongs to routes"):
        RouteTopK(ReliefF(), routes={"a": [0, 1], "b": [1, 2]}, k_per_route=1).fit(X.to_numpy(), y)
    with pytest.raises(ValueError, match="feature names"):
        RouteTopK(ReliefF(), routes={"deep": ["alexnet_fc7_r_0007"]}, k_per_route=1).fit(X.to_numpy(), y)


def test_correlation_filter_drops_the_worse_of_a_correlated_pair():
    rng = np.random.default_rng(3)
    y = np.arange(40) % 2
    a = y + rng.normal(scale=0.5, size=40)
    X = np.c_[a, a * 2 + rng.normal(scale=0.01, size=40), rng.normal(size=40), y + rng.normal(size=40)]
    inner = SymmetricUncertainty(k=3)
    filt = CorrelationFilter(inner, threshold=0.9).fit(X, y)
    ranked = [i for i in filt.selector_.ranking_ if filt.selector_.get_support()[i]]
    assert {0, 1} <= set(ranked)
    better, worse = sorted([0, 1], key=ranked.index)
    assert filt.get_support()[better] and not filt.get_support()[worse]
    assert filt.dropped_ == {worse: better}
    # a loose threshold keeps everything the selector chose
    keep_all = CorrelationFilter(inner, threshold=1.0).fit(X, y)
    assert np.array_equal(keep_all.get_support(), keep_all.selector_.get_support())


# --------------------------------------------------------------------------- exact leave-one-out
def _loo_data(seed, n=26, p=40, C=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, :8] = np.maximum(X[:, :8], 0)  # tied minima (ReLU zeros)
    X[:, 8:12] = np.round(X[:, 8:12])  # ties everywhere
    X[:, 12] = 1.0  # constant
    X[0, 13] = 50.0  # a sole maximum: the column's range changes when case 0 leaves
    X[:, 14] = np.r_[1.0, rng.uniform(0, 1e-8, n - 1)]  # without case 0 its range is below 1e-6
    y = rng.integers(0, C, n)
    y[:C] = np.arange(C)
    return X, y


@pytest.mark.parametrize("sel", [
    ReliefF(k=5, n_neighbors=3),
    ReliefF(k=5),
    ReliefF(k=4, n_neighbors=2, sample_size=10, random_state=4),
    SymmetricUncertainty(k=5),
    RouteTopK(ReliefF(n_neighbors=4), routes=[list(range(20)), list(range(20, 40))], k_per_route=3),
    CorrelationFilter(RouteTopK(SymmetricUncertainty(), routes=[list(range(20)), list(range(20, 40))],
                                k_per_route=4), threshold=0.3),
], ids=["relieff-k3", "relieff-k10", "relieff-sampled", "su", "route-relieff", "corr-route-su"])
@pytest.mark.parametrize("C", [2, 3])
def test_loo_fits_equal_cold_refits_bit_for_bit(sel, C):
    X, y = _loo_data(C, C=C)
    n = len(y)
    fits = list(loo_fits(sel, X, y))
    assert len(fits) == n
    for q, fast in enumerate(fits):
        keep = np.delete(np.arange(n), q)
        cold = clone(sel).fit(X[keep], y[keep])
        assert np.array_equal(fast.scores_, cold.scores_, equal_nan=True), q
        assert np.array_equal(fast.get_support(), cold.get_support()), q
        assert np.array_equal(fast.transform(X[:2]), cold.transform(X[:2]))


def test_loo_fits_with_a_class_that_vanishes_in_one_fold():
    X, y = _loo_data(9, C=2)
    y3 = y.copy()
    y3[11] = 2  # class 2: a single case, gone from its own fold (that fold is refitted cold)
    for sel in (ReliefF(k=3, n_neighbors=2), SymmetricUncertainty(k=3)):
        for q, fast in enumerate(sel.loo_fits(X, y3)):
            keep = np.delete(np.arange(len(y3)), q)
            cold = clone(sel).fit(X[keep], y3[keep])
            assert np.array_equal(fast.scores_, cold.scores_)


# --------------------------------------------------------------------------- from the config
def test_build_selector_from_config():
    routes = {"deep": ["d0", "d1", "d2"], "handcrafted": ["h0", "h1"]}
    assert build_selector(SelectConfig(method="none"), routes, 0) is None
    s = build_selector(SelectConfig(method="relieff", k=4, neighbours=7, sample=20), routes, 3)
    assert isinstance(s, ReliefF) and (s.k, s.n_neighbors, s.sample_size, s.random_state) == (4, 7, 20, 3)
    s = build_selector(SelectConfig(method="su", k_per_route=2), routes, 0)
    assert isinstance(s, RouteTopK) and isinstance(s.selector, SymmetricUncertainty)
    assert s.routes == routes and s.k_per_route == 2
    s = build_selector(SelectConfig(method="su", k="all", correlation_threshold=0.8), routes, 0)
    assert isinstance(s, CorrelationFilter) and s.threshold == 0.8 and s.selector.k == "all"
