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
