"""Run a function over cases: serially, in local worker processes, or on a Dask cluster.

:func:`map_cases` yields ``(item, result)`` pairs *as they complete*, so the caller
can save every finished case at once: a crash or Ctrl-C loses only the cases
still running. A case that raises yields its exception as the result (never
raised), so one bad case never stops the others.

* ``backend="local"``, ``n_jobs=1``: in this process, one case after the other.
* ``backend="local"``, ``n_jobs>1``: a :class:`~concurrent.futures.ProcessPoolExecutor`.
  At most ``2 * n_jobs`` cases are handed out at a time, so memory stays bounded
  however large the cohort; the function reads its own inputs inside the worker.
  A worker that dies (segfault in a C extension, killed for memory) breaks the
  pool: the cases it may have taken down are rerun one at a time in a fresh
  process, so the culprit is named and the others still finish. Workers end
  when the parent does, however it ends (``kill -9`` included): the kernel
  signals them on Linux (``PR_SET_PDEATHSIG``), and a watchdog thread that
  polls the parent's PID covers other platforms.
* ``backend="dask"``: a Dask cluster at ``address`` (``tcp://host:8786``; see
  :mod:`radiodeep.cluster` for one started from ``execution.cluster``). The workers must see
  the same files and have radiodeep installed. They are set up like local workers
  (:func:`cap_threads`, heavy modules imported once, see :class:`radiodeep.cluster.WorkerSetup`);
  the function is sent to every worker once (not with every case); at most a window of cases
  is submitted at a time and each future is dropped as soon as its case is yielded, so the
  client's memory does not grow with the cohort. A worker that dies while computing a case
  gets the case retried once elsewhere, then the case fails with :class:`WorkerDied`.

Both backends cap the thread pools of every worker the same way (:func:`cap_threads`): ITK,
torch's intra-op pool and BLAS/OpenMP get the cores shared out between the worker processes.

Without a progress bar (stderr is not a terminal: a batch scheduler's log), a line
with the cases done, the rate and the time left is logged at a steady rate instead
(every ``RADIODEEP_PROGRESS_SECONDS``, default 30 s), so such a log never looks hung.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from functools import partial
from itertools import islice
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .progress import progress as progress_bar

__all__ = ["map_cases", "map_calls", "shared_values", "cap_threads", "WorkerDied", "BACKENDS"]

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKENDS = ("local", "dask")


class WorkerDied(RuntimeError):
    """The process computing a case ended without a result (crash, or killed for memory)."""


# --------------------------------------------------------------------------- transport
class _Raised:
    """An exception carried back from a worker.

    Exceptions whose ``__init__`` takes other arguments than ``args`` (such as
    :class:`~radiodeep.errors.CaseError`) do not survive pickling; this carries the
    class, ``args`` and attributes and rebuilds the exception without calling
    ``__init__``.
    """

    def __init__(self, exc: BaseException):
        self.cls = type(exc)
        self.args = exc.args
        self.state = dict(getattr(exc, "__dict__", {}))
        self.text = f"{type(exc).__name__}: {exc}"
        self.tb = "".join(traceback.format_exception(exc))

    def __reduce__(self):  # fall back to a plain RuntimeError when the class cannot travel
        import pickle

        try:
            pickle.dumps((self.cls, self.args, self.state))
            return (_Raised._restore, (self.cls, self.args, self.state, self.text, self.tb))
        except Exception:  # noqa: BLE001
            return (_Raised._restore, (RuntimeError, (self.text,), {}, self.text, self.tb))

    @staticmethod
    def _restore(cls, args, state, text, tb):
        obj = _Raised.__new__(_Raised)
        obj.cls, obj.args, obj.state, obj.text, obj.tb = cls, args, state, text, tb
        return obj

    def rebuild(self) -> BaseException:
        try:
            exc = self.cls.__new__(self.cls)
            exc.args = self.args
            exc.__dict__.update(self.state)
        except Exception:  # noqa: BLE001
            exc = RuntimeError(self.text)
        exc.__cause__ = _RemoteTraceback(self.tb)
        return exc


class _RemoteTraceback(Exception):
    def __init__(self, tb: str):
        self.tb = tb

    def __str__(self):
        return f'\n"""\n{self.tb}"""'


def _call(func: Callable, item):
    """Run ``func(item)`` in a worker; an exception comes back as a value."""
    try:
        return func(item)
    except Exception as err:  # noqa: BLE001 - returned to the caller, with the case
        return _Raised(err)


def _outcome(value):
    if isinstance(value, _Raised):
        return value.rebuild()
    return value


# --------------------------------------------------------------------------- public
def map_cases(func: Callable[[T], Any], items: Iterable[T], *, n_jobs: int = 1,
              backend: str = "local", address: str | None = None, progress: bool = True,
              desc: str = "", start_method: str | None = None) -> Iterator[tuple[T, Any]]:
    """Apply ``func`` to every item; yield ``(item, result_or_exception)`` as each completes.

    ``func`` and the items must pickle for ``n_jobs > 1`` and for Dask (a module-level
    function or a :func:`functools.partial` of one). Order of completion, not of
    ``items``. ``KeyboardInterrupt`` stops the workers and propagates.
    ``start_method`` picks the multiprocessing start method for local workers
    (default: ``fork`` where the platform has it, else the platform default).
    """
    items = list(items)
    if backend not in BACKENDS:
        raise ValueError(f"unknown execution backend {backend!r}; choose one of {list(BACKENDS)}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    if not items:
        return
    if backend == "dask":
        if not address:
            raise ValueError("the dask backend needs a scheduler address (e.g. tcp://scheduler:8786)")
        gen = _map_dask(func, items, address)
    elif n_jobs == 1 or len(items) == 1:
        gen = _map_serial(func, items)
    else:
        gen = _map_local(func, items, min(n_jobs, len(items)), start_method)
    if progress and sys.stderr.isatty():
        bar = progress_bar(gen, total=len(items), desc=desc, enabled=progress)
    else:
        bar = _logged_progress(gen, len(items), desc)
    try:
        yield from bar
    finally:
        close = getattr(bar, "close", None)
        if close is not None:
            close()
        gen.close()


def _progress_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RADIODEEP_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _logged_progress(gen, total: int, desc: str):
    """Yield from ``gen``; log cases done / total, rate and ETA at most every interval (and at the end)."""
    interval = _progress_interval()
    what = desc or "cases"
    t0 = last = time.monotonic()
    done = 0
    for pair in gen:
        yield pair
        done += 1
        now = time.monotonic()
        if now - last >= interval or done == total:
            last = now
            rate = done / max(now - t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d cases (%d%%), %.2f cases/s, %s", what, done, total, 100 * done // total,
                     rate, "done" if done == total else f"ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# --------------------------------------------------------------------------- serial
def _map_serial(func, items):
    for item in items:
        try:
            result = func(item)
        except Exception as err:  # noqa: BLE001 - returned with the case
            result = err
        yield item, result


# --------------------------------------------------------------------------- thread caps
#: read by OpenMP, the BLAS libraries, numexpr and ITK when they are loaded (later imports)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def cap_threads(threads: int) -> int:
    """Cap every thread pool of this (worker) process at ``threads``; the one function both
    backends call in each worker, so a case computes with the same threads on either.

    ITK (SimpleITK's global default), torch's intra-op pool, and BLAS/OpenMP through
    threadpoolctl for the libraries already loaded; the environment variables cover those
    loaded later. Nothing is imported here. Returns the cap.
    """
    threads = max(1, int(threads))
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        try:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        except Exception:  # noqa: BLE001 - an optimisation only
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(threads)
        except Exception:  # noqa: BLE001
            pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)  # process-wide, for the libraries loaded now
    except Exception:  # noqa: BLE001 - threadpoolctl comes with scikit-learn; an optimisation only
        pass
    return threads


def thread_caps() -> dict[str, int]:
    """The thread caps in force in this process (for tests and the benchmark)."""
    out = {}
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        out["itk"] = int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = int(torch.get_num_threads())
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            key = info.get("user_api", "?")
            out[key] = max(out.get(key, 0), int(info.get("num_threads", 0)))
    except Exception:  # noqa: BLE001
        pass
    return out


# --------------------------------------------------------------------------- local processes
def _worker_init(threads: int, parent: int | None = None) -> None:
    # Ctrl-C goes to the whole process group: the parent stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a forked worker inherits the parent's SIGTERM handler (stop like Ctrl-C): here it just ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None:
        _die_with_parent(parent)
    # share the cores between workers instead of oversubscribing them
    cap_threads(threads)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """End this worker when its parent process ends, however the parent ends."""
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent goes (kill -9 included)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except Exception:  # noqa: BLE001 - the watchdog below still covers it
            pass
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="radiodeep-parent-watch",
                     daemon=True).start()


def _watch_parent(parent: int, period: float = 0.5) -> None:  # the portable fallback
    while True:
        time.sleep(period)
        if os.getppid() != parent:
            os._exit(1)


def _context(start_method: str | None):
    if start_method is None:
        start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return multiprocessing.get_context(start_method)


def _new_pool(n_workers: int, start_method: str | None) -> ProcessPoolExecutor:
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=_context(start_method),
                               initializer=_worker_init, initargs=(threads, os.getpid()))


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: drop queued work and end running workers."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.terminate()
        except Exception:  # noqa: BLE001
            pass
    for p in procs:
        try:
            p.join(timeout=5)
        except Exception:  # noqa: BLE001
            pass


def _map_local(func, items, n_workers: int, start_method: str | None):
    pending = deque(items)
    limit = 2 * n_workers  # cases handed out at a time: workers never wait, memory stays bounded
    while pending:
        suspects = []
        pool = _new_pool(n_workers, start_method)
        finished = False
        try:
            inflight: dict = {}
            while pending or inflight:
                broken = False
                while pending and len(inflight) < limit:
                    try:
                        fut = pool.submit(_call, func, pending[0])
                    except BrokenProcessPool:  # broke since the last look: the inflight cases are suspects
                        broken = True
                        break
                    inflight[fut] = pending.popleft()
                if broken:
                    suspects.extend(inflight.values())
                    inflight.clear()
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = inflight.pop(fut)
                    err = fut.exception()
                    if isinstance(err, BrokenProcessPool):
                        suspects.append(item)
                        broken = True
                    elif err is not None:
                        if not isinstance(err, Exception):  # KeyboardInterrupt/SystemExit in a worker
                            raise err
                        yield item, err
                    else:
                        yield item, _outcome(fut.result())
                if broken:
                    suspects.extend(inflight.values())
                    inflight.clear()
                    break
            finished = True
        finally:
            if finished and not suspects:
                pool.shutdown(wait=True)
            else:
                _stop(pool)
        if suspects:
            log.warning("a worker process died; rerunning the %d case(s) it may have taken down "
                        "one at a time", len(suspects))
            for item in suspects:
                yield item, _run_isolated(func, item, start_method)


def _run_isolated(func, item, start_method):
    pool = _new_pool(1, start_method)
    try:
        fut = pool.submit(_call, func, item)
        err = fut.exception()
        if isinstance(err, BrokenProcessPool):
            return WorkerDied("the worker process died while computing this case "
                              "(a crash in native code, or killed for lack of memory)")
        if err is not None:
            if not isinstance(err, Exception):
                raise err
            return err
        return _outcome(fut.result())
    finally:
        _stop(pool)


# --------------------------------------------------------------------------- dask
def _module_of(func) -> str | None:
    while isinstance(func, partial):
        func = func.func
    return getattr(func, "__module__", None)


def _keys(kind: str, n: int) -> list[str]:
    # unique keys (the scheduler starts independent tasks in the order submitted: client.map
    # ranks them so, and the callers hand the largest cases out first)
    return [f"radiodeep-{kind}-{uuid.uuid4().hex}" for _ in range(n)]


def _value(x):
    return x


def _shared(client, value):
    """``value`` as a task: each worker fetches it once, however many cases need it.

    A task rather than scattered data: the scheduler keeps its recipe, so when every worker
    that held it has died it is made again (scattered data would be lost with them).
    """
    return client.submit(_value, value, pure=False, key=f"radiodeep-shared-{uuid.uuid4().hex}")


def _call_shared(item, fn):
    """On a Dask worker: ``fn`` arrives once per worker (a shared task), the item per task."""
    return _call(fn, item)


def _slots(client) -> int:
    """Task slots (worker threads) of the cluster now."""
    try:
        return sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    except Exception:  # noqa: BLE001
        return 0


class _LiveSlots:
    """The cluster's task slots now, re-read at most every ``every`` seconds (a scheduler round
    trip): a SLURM/PBS cluster fills up while a map runs (``start_cluster`` waits for one worker),
    and workers that join late get their share of the work."""

    def __init__(self, client, every: float = 1.0):
        self.client, self.every = client, every
        self.n = max(1, _slots(client))
        self.at = time.monotonic()

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.at >= self.every:
            self.at = now
            n = _slots(self.client)
            if n > 0:  # 0: the scheduler did not answer; keep the last count
                self.n = n
        return self.n


def _window(slots: int) -> int:
    """Cases submitted at a time: every task slot busy plus a queue, a bounded number of futures."""
    return max(64, 4 * slots)


def _dask_result(fut, value, shared=None):
    """What a finished future means for its case; ``value`` is its result, fetched already."""
    if shared is not None and shared.status in ("error", "cancelled"):  # the function never arrived
        try:
            why = f"{type(shared.exception()).__name__}: {shared.exception()}"
        except Exception as err:  # noqa: BLE001
            why = f"{type(err).__name__}: {err}"
        return RuntimeError(f"the function could not be sent to the Dask workers ({why}); "
                            "do they have the same radiodeep installed?")
    if fut.status == "error":
        err = fut.exception()
        if type(err).__name__ == "KilledWorker":
            return WorkerDied("the worker computing this case died, also when the case was retried "
                              "(a crash in native code, or killed for lack of memory)")
        return err if isinstance(err, Exception) else WorkerDied(str(err))
    if fut.status == "cancelled":
        return WorkerDied("the task was cancelled on the Dask cluster")
    return _outcome(value)


def _map_dask(func, items, address: str):
    from distributed import as_completed

    from .cluster import client_for

    client = client_for(address, [_module_of(func)])
    shared = _shared(client, func)
    pending = deque(enumerate(items))
    owner: dict = {}
    slots = _LiveSlots(client)  # the window follows the cluster as workers join
    # results fetched in the background as tasks finish, while the caller saves the last case
    ac = as_completed(loop=client.loop, with_results=True, raise_errors=False)

    def top_up():
        # in batches of half a window: one round trip to the scheduler per batch, not per case
        window = _window(slots())
        if len(owner) > window // 2 or not pending:
            return
        batch = [pending.popleft() for _ in range(min(len(pending), window - len(owner)))]
        futs = client.map(_call_shared, [item for _, item in batch], fn=shared, pure=False,
                          retries=1, key=_keys("case", len(batch)))
        for fut, (_, item) in zip(futs, batch):
            owner[fut.key] = (item, fut)
        ac.update(futs)

    try:
        top_up()
        while owner:
            fut, value = next(ac)
            item, _ = owner.pop(fut.key)
            result = _dask_result(fut, value, shared if fut.status != "finished" else None)
            fut.release()
            del fut, value
            top_up()
            yield item, result
    finally:
        if owner:
            with contextlib.suppress(Exception):
                client.cancel([f for _, f in owner.values()])
            owner.clear()
        ac.clear()
        with contextlib.suppress(Exception):
            shared.release()


# --------------------------------------------------------------------------- calls (folds)
@contextlib.contextmanager
def shared_values(values: dict, *, backend: str = "local", address: str | None = None):
    """``values`` (the feature matrix, the labels, ...) for several :func:`map_calls` rounds.

    Yields a dict to pass as ``map_calls(..., shared=...)`` (whole or a subset): the values
    themselves locally; on Dask, each value sent to the cluster once (a worker fetches it once,
    however many rounds and calls use it), released when the block ends.
    """
    if backend != "dask":
        yield dict(values)
        return
    if not address:
        raise ValueError("the dask backend needs a scheduler address (e.g. tcp://scheduler:8786)")
    from .cluster import client_for

    client = client_for(address)
    remote = {k: _shared(client, v) for k, v in values.items()}
    try:
        yield remote
    finally:
        for f in remote.values():
            with contextlib.suppress(Exception):
                f.release()


def map_calls(fn: Callable, calls: Iterable[tuple], *, shared: dict | None = None, n_jobs: int = 1,
              backend: str = "local", address: str | None = None,
              n_calls: int | None = None, chunks_per_slot: int = 4) -> Iterator[Any]:
    """``fn(*args, **shared)`` for every ``args`` of ``calls``, results *in order*.

    The evaluation's folds and permutations: ``shared`` (the feature matrix, the labels) is
    passed to every call as is in this process, and sent to every Dask worker once
    (``backend="dask"``; values from :func:`shared_values` are already there and are used as
    they are). ``n_jobs`` > 1 runs local calls in threads (the estimators release the GIL; no
    copies); local calls are drawn from ``calls`` as they run. Exceptions propagate, as from a
    plain call. On Dask the calls travel in chunks (a few per task slot: a fold may be
    milliseconds of work), each call with one BLAS thread, as the evaluation runs its local
    folds, so the numbers are the same; ``chunks_per_slot`` sets how finely (more: better balance
    for longer calls, such as whole permutations). ``n_calls`` (the number of calls, when ``calls``
    is a generator) lets the chunks be drawn from it one at a time, not all calls held at once.
    """
    shared = dict(shared or {})
    if backend == "dask":
        if not address:
            raise ValueError("the dask backend needs a scheduler address (e.g. tcp://scheduler:8786)")
        yield from _calls_dask(fn, calls, shared, address, n_calls, chunks_per_slot)
        return
    if n_jobs == 1:
        for args in calls:
            yield fn(*args, **shared)
        return
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator", pre_dispatch="2*n_jobs")
    yield from par(delayed(fn)(*args, **shared) for args in calls)


#: the most calls one Dask task runs (the client holds a window of 4 chunks per task slot)
MAX_CHUNK = 64


def _run_chunk(fn, chunk, **shared):
    """Calls in a row on one worker, each with one BLAS thread (as the local folds run)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return [fn(*args, **shared) for args in chunk]


def _calls_dask(fn, calls, shared, address, n_calls=None, chunks_per_slot=4):
    from distributed import Future

    from .cluster import client_for

    client = client_for(address, [_module_of(fn)])
    if n_calls is None:
        calls = list(calls)
        n_calls = len(calls)
    live = _LiveSlots(client)
    slots = live.n
    per = max(1, chunks_per_slot)

    def sized(n_slots: int) -> int:
        # a few chunks per task slot: a fold is often milliseconds of work, a task costs a round
        # trip; at most MAX_CHUNK calls a chunk, so the calls in flight (a window of chunks) stay bounded
        return min(MAX_CHUNK, max(1, -(-n_calls // (per * n_slots))))

    size = sized(slots)
    own = {k: _shared(client, v) for k, v in shared.items() if not isinstance(v, Future)}
    remote = {**shared, **own}
    futs: deque = deque()
    it = iter(calls)
    del calls

    def submit_next() -> bool:  # the next chunk, drawn from the calls only now
        chunk = list(islice(it, size))
        if chunk:
            futs.append(client.submit(_run_chunk, fn, chunk, pure=False, retries=1,
                                      key=_keys("call", 1)[0], **remote))
        return bool(chunk)

    def fill():
        # a window of chunks in flight (every slot busy and a queue): the calls drawn and the
        # results held stay bounded however many calls (e.g. 10,000 permutations). The window
        # follows the cluster's size (re-read at most once a second): workers that join later
        # (a SLURM/PBS cluster filling up) get work, the calls not drawn yet in finer chunks.
        # A shrunken cluster only submits less; nothing in flight is cancelled.
        nonlocal slots, size
        now = live()
        if now > slots:
            size = min(size, sized(now))
        slots = now
        while len(futs) < 4 * slots and submit_next():
            pass

    try:
        fill()
        while futs:
            fut = futs.popleft()
            try:
                results = fut.result()  # raises the call's exception, as a plain call would
            finally:
                fut.release()  # also when it raised: the error's traceback does not hold the task
            fill()
            yield from results
    finally:
        if futs:
            with contextlib.suppress(Exception):
                client.cancel(list(futs))
        for f in own.values():
            with contextlib.suppress(Exception):
                f.release()
