"""The Dask side of :mod:`radiodeep.execution`: clients, worker set-up, clusters started here.

* :func:`client_for` gives one :class:`distributed.Client` per scheduler address for the
  whole process (connecting costs a round trip and a handshake; the evaluation calls the
  cluster several times per experiment) and registers :class:`WorkerSetup` on its workers.
* :class:`WorkerSetup`, a worker plugin, makes a Dask worker look like a local worker: the
  same thread caps (:func:`radiodeep.execution.cap_threads`: ITK, torch intra-op,
  BLAS/OpenMP), radiodeep's heavy modules imported once when the worker starts (the mapped
  function's module and its ``warm_worker()``, not inside the first case: a forked local
  worker inherits them), and Dask's statistical profiler stopped (it samples the running
  task's stack every 10 ms, holding the GIL that PyRadiomics' Python code needs).
* :func:`start_cluster` starts the cluster ``execution.cluster`` describes: a
  ``dask-jobqueue`` SLURM or PBS cluster (jobs submitted by the scheduler's host, the
  scheduler running in this process) or a :class:`~distributed.LocalCluster`.

A worker that dies while computing a case (killed for memory, a crash in native code) gets
the case again on another worker up to the scheduler's ``allowed-failures`` times, then the
case fails with :class:`~radiodeep.execution.WorkerDied`. Clusters started here allow one
retry and send a worker only the cases it runs (``worker-saturation: 1.0``: a case merely
queued on a dying worker would be counted as a suspect too); on a scheduler started elsewhere
set ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1`` and
``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0`` (Dask's defaults: 3 and 1.1).
distributed's per-task ``retries`` (also set) covers errors a task raises outside the case's
own error handling, never a lost worker.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import threading
from typing import Iterable

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

__all__ = ["client_for", "WorkerSetup", "start_cluster", "make_cluster", "close_clients",
           "CLUSTER_KINDS"]

CLUSTER_KINDS = ("local", "slurm", "pbs")
PLUGIN_NAME = "radiodeep-worker-setup"
#: a case whose worker died is retried once; a worker is sent only the cases it runs now (no
#: queue on the worker), so a worker's death counts against those cases alone, never against
#: innocent cases that were merely waiting there
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 1,
                    "distributed.scheduler.worker-saturation": 1.0}
#: the modules every mapped function needs; the function's own module is added to them
BASE_MODULES = ("numpy", "pandas", "SimpleITK", "radiodeep.execution")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a batch job's cpuset, not the node's cores
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class WorkerSetup(WorkerPlugin):
    """Set a Dask worker up as :func:`radiodeep.execution._worker_init` sets a local worker up.

    Threads per task: an explicit ``threads``, else the worker's cores shared between the
    task slots of all radiodeep workers on its host: ``processes_per_host`` when the cluster's
    shape is known (one radiodeep started), else the worker processes on the worker's host as
    the scheduler lists them when the worker is set up.
    ``skip_pid``/``skip_host``: the client's own process (an in-process worker, as in
    ``LocalCluster(processes=False)``), whose thread pools are left alone.
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, modules: Iterable[str] = (), threads: int | None = None,
                 processes_per_host: int | None = None, profiler: bool = False,
                 skip_pid: int | None = None, skip_host: str | None = None):
        self.modules = tuple(sorted(set(modules)))
        self.threads = threads
        self.processes_per_host = processes_per_host
        self.profiler = profiler
        self.skip_pid = skip_pid
        self.skip_host = skip_host

    async def _processes_on_host(self, worker) -> int:
        if self.processes_per_host:
            return self.processes_per_host
        from distributed.comm.addressing import get_address_host

        host = get_address_host(worker.address)
        try:
            info = await worker.scheduler.identity()
            return max(1, sum(1 for w in info["workers"].values() if w.get("host") == host))
        except Exception:  # noqa: BLE001 - on its own
            return 1

    async def threads_for(self, worker) -> int:
        if self.threads:
            return max(1, int(self.threads))
        env = os.environ.get("RADIODEEP_THREADS_PER_TASK")
        if env and env.isdigit() and int(env) > 0:
            return int(env)
        slots = await self._processes_on_host(worker) * max(1, worker.state.nthreads)
        return max(1, _cores() // slots)

    async def setup(self, worker):
        from .execution import cap_threads

        for name in self.modules:  # first: the caps then reach the libraries these load
            try:  # a module's warm_worker() imports what it loads lazily (PyRadiomics' classes)
                mod = importlib.import_module(name)
                warm = getattr(mod, "warm_worker", None)
                if callable(warm):
                    warm()
            except Exception as err:  # noqa: BLE001 - the task will raise it with its case
                log.warning("radiodeep worker %s: cannot import %s: %s", worker.address, name, err)
        if self.skip_pid == os.getpid() and self.skip_host == socket.gethostname():
            return  # a worker inside the client's process: its thread pools are the client's
        cap_threads(await self.threads_for(worker))
        if not self.profiler:
            for name in ("profile", "profile-cycle"):
                pc = worker.periodic_callbacks.get(name)
                if pc is not None:
                    pc.stop()


# --------------------------------------------------------------------------- clients
_LOCK = threading.Lock()
_CLIENTS: dict[str, Client] = {}
_MODULES: dict[str, frozenset] = {}
_SHAPE: dict[str, int] = {}


def client_for(address: str, modules: Iterable[str] = (), threads: int | None = None,
               processes_per_host: int | None = None) -> Client:
    """The process's client of the scheduler at ``address``, its workers set up for ``modules``.

    ``processes_per_host``: worker processes per machine when the caller knows (a cluster it
    started); it is remembered for the address.
    """
    want = frozenset(BASE_MODULES) | frozenset(m for m in modules if m)
    with _LOCK:
        if processes_per_host:
            _SHAPE[address] = processes_per_host
        client = _CLIENTS.get(address)
        if client is not None and client.status not in ("running", "connecting"):
            _drop(address)
            client = None
        if client is None:
            try:
                client = Client(address, set_as_default=False, timeout="30s")
            except Exception as err:  # noqa: BLE001 - say which address could not be reached
                raise RuntimeError(f"cannot connect to the Dask scheduler at {address}: {err}") from None
            _CLIENTS[address] = client
            _MODULES[address] = frozenset()
        if not want <= _MODULES[address]:
            want |= _MODULES[address]
            client.register_plugin(WorkerSetup(want, threads, _SHAPE.get(address), skip_pid=os.getpid(),
                                               skip_host=socket.gethostname()), name=PLUGIN_NAME)
            _MODULES[address] = want
        return client


def _drop(address: str) -> None:
    client = _CLIENTS.pop(address, None)
    _MODULES.pop(address, None)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


def close_clients() -> None:
    """Close every client :func:`client_for` opened (also done when the process exits)."""
    with _LOCK:
        for address in list(_CLIENTS):
            _drop(address)


atexit.register(close_clients)


# --------------------------------------------------------------------------- clusters
def make_cluster(spec):
    """A (not yet scaled) cluster for ``spec`` (an ``execution.cluster`` section).

    ``kind: slurm|pbs`` needs ``dask-jobqueue``; jobs are only submitted by :func:`start_cluster`
    (``cluster.scale``), so ``make_cluster(spec).job_script()`` shows the job script safely.
    """
    kind = spec.kind
    with dask.config.set(SCHEDULER_CONFIG):
        if kind == "local":
            return LocalCluster(n_workers=spec.jobs * spec.processes,
                                threads_per_worker=max(1, spec.cores // max(1, spec.processes)),
                                processes=True, dashboard_address=None)
        try:
            import dask_jobqueue
        except ImportError:  # pragma: no cover - a dependency; an optional one elsewhere
            raise RuntimeError(f"execution.cluster kind {kind!r} needs the dask-jobqueue package "
                               "(pip install dask-jobqueue)") from None
        cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]
        kwargs = dict(cores=spec.cores, memory=spec.memory, processes=spec.processes,
                      walltime=spec.walltime, job_script_prologue=list(spec.prologue),
                      job_extra_directives=list(spec.job_extra),
                      worker_extra_args=["--no-dashboard"], log_directory=spec.log_directory)
        if spec.queue:
            kwargs["queue"] = spec.queue
        if spec.account:
            kwargs["account"] = spec.account
        if spec.interface:
            kwargs["interface"] = spec.interface
        if spec.python:
            kwargs["python"] = spec.python
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return cls(**kwargs)


@contextlib.contextmanager
def start_cluster(spec, *, wait_workers: int = 1, timeout: float = 600):
    """Start the cluster ``spec`` describes, submit its jobs, yield its scheduler address; stop it after."""
    cluster = make_cluster(spec)
    try:
        if spec.kind != "local":
            cluster.scale(jobs=spec.jobs)
            log.info("submitted %d %s job(s) for Dask workers; waiting for the first to start "
                     "(scheduler %s)", spec.jobs, spec.kind, cluster.scheduler_address)
        per_host = spec.processes * (spec.jobs if spec.kind == "local" else 1)  # local: one host
        # a job's cores shared between its task slots (a node may hold more cores than the job)
        slots = spec.processes * max(1, spec.cores // spec.processes)
        client = client_for(cluster.scheduler_address, threads=max(1, spec.cores // slots),
                            processes_per_host=per_host)
        client.wait_for_workers(min(wait_workers, spec.jobs * spec.processes), timeout=timeout)
        yield cluster.scheduler_address
    finally:
        with _LOCK:
            _drop(cluster.scheduler_address)
        with contextlib.suppress(Exception):
            cluster.close()
