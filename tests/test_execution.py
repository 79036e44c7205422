"""radiodeep.execution.map_cases: serial, local processes, a Dask cluster started here."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from radiodeep.errors import CaseError
from radiodeep.execution import WorkerDied, map_cases


# module-level, so worker processes can unpickle them
def square(x):
    if x == 3:
        raise CaseError(f"c{x}", "three is not allowed", stage="test")
    if x == 4:
        raise ValueError("four is bad")
    return x * x


def slow_first(x):
    time.sleep(1.5 if x == 0 else 0.05)
    return x


def die_on_two(x):
    if x == 2:
        os._exit(3)  # a worker dying in native code looks like this to the pool
    return x


def pid_of(x):
    time.sleep(0.2)
    return os.getpid()


def _check_outcomes(out: dict):
    assert out[0] == 0 and out[1] == 1 and out[2] == 4 and out[5] == 25
    err = out[3]
    assert isinstance(err, CaseError)  # returned, not raised; survives the trip back
    assert (err.case_id, err.reason, err.stage) == ("c3", "three is not allowed", "test")
    assert str(err) == "case c3: three is not allowed"
    assert isinstance(out[4], ValueError) and "four is bad" in str(out[4])


def test_serial_returns_exceptions_in_order():
    pairs = list(map_cases(square, range(6), progress=False))
    assert [i for i, _ in pairs] == list(range(6))
    _check_outcomes(dict(pairs))


def test_processes_return_results_and_exceptions():
    out = dict(map_cases(square, range(6), n_jobs=2, progress=False))
    assert sorted(out) == list(range(6))
    _check_outcomes(out)
    assert not multiprocessing.active_children()  # the pool is gone


def test_processes_yield_as_completed():
    order = [i for i, _ in map_cases(slow_first, range(6), n_jobs=2, progress=False)]
    assert sorted(order) == list(range(6))
    assert order[-1] == 0  # the slow first item did not hold the others back


def test_processes_really_run_in_parallel():
    pids = {r for _, r in map_cases(pid_of, range(4), n_jobs=2, progress=False)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_dying_worker_fails_its_case_only():
    out = dict(map_cases(die_on_two, range(6), n_jobs=2, progress=False))
    assert sorted(out) == list(range(6))
    assert isinstance(out[2], WorkerDied) and "died" in str(out[2])
    assert all(out[i] == i for i in (0, 1, 3, 4, 5))


def test_stopping_early_ends_the_workers():
    gen = map_cases(slow_first, range(8), n_jobs=2, progress=False)
    next(gen)
    gen.close()  # what a Ctrl-C (KeyboardInterrupt) in the consumer does
    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown execution backend 'spark'"):
        list(map_cases(square, [1], backend="spark"))
    with pytest.raises(ValueError, match="needs a scheduler address"):
        list(map_cases(square, [1], backend="dask"))
    with pytest.raises(ValueError, match="n_jobs"):
        list(map_cases(square, [1], n_jobs=0))
    assert list(map_cases(square, [], n_jobs=2)) == []


def test_dask_cluster_started_by_the_test():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        out = dict(map_cases(square, range(6), backend="dask", address=cluster.scheduler_address,
                             progress=False))
    assert sorted(out) == list(range(6))
    _check_outcomes(out)
