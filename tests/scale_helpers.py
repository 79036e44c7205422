"""Picklable helpers for tests/test_scale.py: Dask workers import them by this module's name."""

from __future__ import annotations

from radiodeep.selection import ReliefF

#: calls of CountingReliefF.loo_fits in this process (the client's, or a worker's)
LOO_CALLS = {"n": 0}


class CountingReliefF(ReliefF):
    """ReliefF that counts, in the process running it, how often its shared LOO path starts."""

    def loo_fits(self, X, y):
        LOO_CALLS["n"] += 1
        return super().loo_fits(X, y)


def loo_calls() -> int:
    """This process's count (``client.run(loo_calls)`` asks every worker)."""
    return LOO_CALLS["n"]


def offset(a, *, b):
    """A trivial call for map_calls: ``a + b`` (``b`` shared)."""
    return a + b


class NeedsMarkedCase:
    """A classifier whose fit fails when the case marked by ``marker`` in column 0 is not among
    its training cases: an error raised in exactly one leave-one-out fold."""

    def __init__(self, marker: float = 999.0):
        self.marker = marker

    def get_params(self, deep=True):
        return {"marker": self.marker}

    def set_params(self, **params):
        self.marker = params.get("marker", self.marker)
        return self

    def fit(self, X, y):
        import numpy as np

        if not np.any(np.asarray(X)[:, 0] == self.marker):
            raise ValueError("the marked case is missing from the training cases")
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        import numpy as np

        n = len(X)
        return np.column_stack([np.full(n, 0.5), np.full(n, 0.5)])


def stamped(i, *, pause):
    """A call that takes ``pause`` seconds: ``(i, start, end)`` (wall clock) for concurrency."""
    import time

    t0 = time.time()
    time.sleep(pause)
    return i, t0, time.time()


class NeedsTrueLabels(NeedsMarkedCase):
    """A classifier whose fit fails when its training labels are not the true ones (held in
    column 0): it fits in every fold of the evaluation, and fails only on permuted labels."""

    def fit(self, X, y):
        import numpy as np

        if not np.array_equal(np.asarray(X)[:, 0], np.asarray(y)):
            raise ValueError("the training labels are not the true ones")
        self.classes_ = np.unique(y)
        return self


class _NoSupport:
    def __init__(self, n):
        self.n = n

    def get_support(self):
        import numpy as np

        return np.zeros(self.n, dtype=bool)


class EmptyInOneFold(ReliefF):
    """ReliefF whose shared LOO selection keeps no feature in the fold holding out row 5."""

    def loo_fits(self, X, y):
        for i, sel in enumerate(super().loo_fits(X, y)):
            yield _NoSupport(X.shape[1]) if i == 5 else sel
