"""Benchmark of scaling out: local worker processes against a Dask cluster of as many processes.

    uv run python bench/bench_scale.py            # 40 and 200 phantom cases, 1,000 and 10,000 tasks
    uv run python bench/bench_scale.py --quick    # 40 cases, 1,000 and 10,000 tasks, smaller LOO

Prints, in one run:
  * extraction (``radiodeep run --only extract``; ``radiodeep synth`` phantoms, the sample CT
    parameter file ``sample_configs/pyradiomics_ct.yaml``, a fresh cache each time): seconds for
    ``n_jobs: P`` local workers and for ``backend: dask`` on a ``LocalCluster`` of P processes of
    one thread each (started beforehand, as a real cluster would be), the throughput ratio
    Dask/local, and whether the feature CSVs are byte-identical;
  * deep extraction (EfficientNet-Lite0's ImageNet penultimate layer, every ROI slice, 40
    phantom cases): local workers cropping for this process's network against Dask workers
    that each run the network; with the default threads and with ``threads: 1`` (the same
    threads on both: byte-identical features);
  * with ``--ablate``, the same Dask run without radiodeep's worker set-up (ITK/BLAS not capped,
    Dask's profiler on): the gap the issue measured;
  * trivial tasks (1,000 and 10,000): per-task overhead on each backend and the client's peak
    memory above its baseline (the cluster's scheduler runs in another process, so this is the
    client alone);
  * the leave-one-out folds of one experiment (SU top-5 + naive Bayes on a synthetic table, so the
    folds themselves are cheap): seconds and per-fold overhead, client peak memory, identical
    predictions;
  * one experiment's permutation test (ReliefF top-5 + naive Bayes, LOO, 200 permutations; 100
    under ``--quick``): local threads vs Dask, where each permutation is one task running its
    shared LOO selection and folds on a worker: seconds, client peak memory, identical null AUCs;
    and 10,000 cheap permutations (2,000 under ``--quick``; external split, one fit each): the
    client's peak memory stays flat, the permuted labels drawn a window of tasks at a time.

The machine's load average is printed with the figures: on a shared machine they are pessimistic
and noisy. Not a timed test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- helpers
def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakRSS:
    """The process's peak resident memory above its value at entry (sampled every 20 ms)."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())
        self.growth = self.peak - self.base


def serve(processes: int, setup: bool) -> None:
    """Child process: a LocalCluster of ``processes`` one-thread workers; prints its address."""
    from radiodeep.cluster import make_cluster
    from radiodeep.config import ClusterConfig

    cluster = make_cluster(ClusterConfig(kind="local", processes=processes, cores=processes))
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    cluster.close()


class Cluster:
    def __init__(self, processes: int):
        t = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(processes)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)
        self.address = self.proc.stdout.readline().strip()
        from radiodeep.cluster import client_for

        client_for(self.address, processes_per_host=processes).wait_for_workers(processes)
        self.start_s = time.perf_counter() - t

    def close(self):
        from radiodeep.cluster import close_clients

        close_clients()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def noop(x):
    return x


def backends(processes: int, cluster: "Cluster"):
    """The two backends compared, as keyword arguments of the mapping and evaluation calls."""
    return (("local", {"n_jobs": processes}), ("dask", {"backend": "dask", "address": cluster.address}))


def on_both(processes: int, cluster: "Cluster", run) -> dict:
    """``run(**backend)`` on local workers, then on the cluster: name -> (result, seconds, client
    peak memory above its start in MB)."""
    out = {}
    for name, kw in backends(processes, cluster):
        with PeakRSS() as mem:
            t = time.perf_counter()
            result = run(**kw)
            seconds = time.perf_counter() - t
        out[name] = (result, seconds, mem.growth)
    return out


def noise_table(n: int, p: int, seed: int):
    """A balanced two-class table of ``n`` cases x ``p`` normal features (f0, f1, ...) and its labels."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = pd.Series(np.arange(n) % 2, index=[f"c{i:05d}" for i in range(n)])
    X = pd.DataFrame(rng.normal(size=(n, p)), index=y.index, columns=[f"f{j}" for j in range(p)])
    return X, y


def timed_case(case, params):
    """One case's PyRadiomics extraction, timed inside the worker: (wall s, CPU s)."""
    from radiodeep.features.handcrafted import extract_case

    t, c = time.perf_counter(), time.process_time()
    extract_case(case, params=params, mode="3d", roi_cfg=None, geometry=None)
    return time.perf_counter() - t, time.process_time() - c


# --------------------------------------------------------------------------- extraction
def study_config(work: Path, manifest: Path, out: str, execution: dict):
    from radiodeep.config import parse_config

    data = {"name": "bench-scale",
            "cohort": {"manifest": str(manifest), "positive_label": "short"},
            "features": {"handcrafted": {"params": str(ROOT / "sample_configs" / "pyradiomics_ct.yaml")}},
            "output": str(work / out),
            "execution": {"progress": False, "cache_dir": str(work / out / "cache"), **execution}}
    return parse_config(data, base_dir=work)


def extract_once(work: Path, manifest: Path, out: str, execution: dict) -> tuple[float, bytes]:
    from radiodeep.pipeline import run

    shutil.rmtree(work / out, ignore_errors=True)
    cfg = study_config(work, manifest, out, execution)
    t = time.perf_counter()
    run(cfg, only="extract")
    seconds = time.perf_counter() - t
    return seconds, (work / out / "features_handcrafted.csv").read_bytes()


def bench_extraction(work: Path, sizes, processes: int, reps: int, cluster: "Cluster", ablate: bool):
    from radiodeep.synth import make_cohort

    print(f"\n== extraction: {processes} local worker processes vs a {processes}-process Dask LocalCluster "
          f"(sample CT parameter file, --only extract, fresh cache) [{load()}]")
    from radiodeep.cluster import client_for

    t = time.perf_counter()
    client_for(cluster.address, ["radiodeep.features.handcrafted"])  # what the first run would do
    print(f"   Dask cluster started in {cluster.start_s:.1f} s, its workers set up for the handcrafted "
          f"route in {time.perf_counter() - t:.1f} s (once per cluster; not counted below)")
    for n in sizes:
        manifest = make_cohort(work / f"cohort{n}", n_cases=n, seed=1)
        loc, dsk, same = [], [], True
        for _ in range(reps):
            s, a = extract_once(work, manifest, f"local{n}", {"n_jobs": processes})
            loc.append(s)
            s, b = extract_once(work, manifest, f"dask{n}", {"backend": "dask", "address": cluster.address})
            dsk.append(s)
            same &= a == b
        lt, dt = min(loc), min(dsk)
        print(f"   {n:4d} cases: local {lt:6.1f} s ({n / lt:5.2f} cases/s)   dask {dt:6.1f} s "
              f"({n / dt:5.2f} cases/s)   Dask/local throughput {lt / dt:4.2f}   "
              f"features byte-identical: {same}   runs: local {fmt(loc)}, dask {fmt(dsk)}  [{load()}]")
    if ablate:
        n = sizes[0]
        manifest = work / f"cohort{n}" / "manifest.csv"
        plain = Cluster(processes)
        try:
            from radiodeep import cluster as rc

            client = rc.client_for(plain.address)
            # undo radiodeep's set-up: the library defaults (a thread per core each), profiler on,
            # nothing preloaded (the first cases import PyRadiomics)
            client.register_plugin(rc.WorkerSetup(threads=os.cpu_count(), profiler=True), name=rc.PLUGIN_NAME)
            client.run(_profiler_on)
            rc._MODULES[plain.address] = frozenset(rc.BASE_MODULES) | {"radiodeep.features.handcrafted"}
            s, _ = extract_once(work, manifest, f"plain{n}", {"backend": "dask", "address": plain.address})
        finally:
            plain.close()
        lt = min(loc) if sizes[-1] == n else None
        print(f"   ablation, {n} cases: Dask without radiodeep's worker set-up (ITK/BLAS at "
              f"{os.cpu_count()} threads per worker, profiler on): {s:6.1f} s" +
              (f" (Dask/local {lt / s:4.2f})" if lt else ""))


def _profiler_on(dask_worker):
    for name in ("profile", "profile-cycle"):
        pc = dask_worker.periodic_callbacks.get(name)
        if pc is not None:
            pc.start()


def fmt(xs) -> str:
    return "/".join(f"{x:.1f}" for x in xs)


# --------------------------------------------------------------------------- deep extraction
def deep_once(work: Path, manifest: Path, out: str, execution: dict, threads) -> tuple[float, object]:
    from radiodeep.config import parse_config
    from radiodeep.pipeline import run

    shutil.rmtree(work / out, ignore_errors=True)
    data = {"name": "bench-scale-deep",
            "cohort": {"manifest": str(manifest), "positive_label": "short"},
            "roi": {"slice": "all"},
            "features": {"deep": {"backbone": "efficientnet_lite0", "layer": "penultimate",
                                  "device": "cpu", "threads": threads}},
            "output": str(work / out),
            "execution": {"progress": False, "cache_dir": str(work / out / "cache"), **execution}}
    t = time.perf_counter()
    run(parse_config(data, base_dir=work), only="extract")
    seconds = time.perf_counter() - t
    import pandas as pd

    return seconds, pd.read_csv(work / out / "features_deep.csv", index_col=0)


def bench_deep(work: Path, n: int, processes: int, cluster: "Cluster"):
    """The deep route: locally, P workers crop while this process runs the network; on Dask each
    worker crops and runs its cases through its own network."""
    import numpy as np

    from radiodeep.cluster import client_for
    from radiodeep.synth import make_cohort

    print(f"\n== deep extraction: EfficientNet-Lite0 ImageNet penultimate, every ROI slice, CPU, {n} cases "
          f"[{load()}]")
    t = time.perf_counter()
    client_for(cluster.address, ["radiodeep.features.deep"])
    print(f"   Dask workers set up for the deep route in {time.perf_counter() - t:.1f} s (once per cluster)")
    manifest = make_cohort(work / f"deep{n}", n_cases=n, seed=1)
    res = {}
    for threads in (None, 1):
        for name, kw in backends(processes, cluster):
            res[name, threads] = deep_once(work, manifest, f"deep-{name}-{threads}", kw, threads)
    for threads in (None, 1):
        (lt, a), (dt, b) = res["local", threads], res["dask", threads]
        same = a.to_numpy().tobytes() == b.to_numpy().tobytes() and list(a.columns) == list(b.columns)
        diff = float(np.max(np.abs(a.to_numpy() - b.to_numpy())) / np.max(np.abs(a.to_numpy())))
        what = ("threads: null (local: this process's default threads; Dask: the worker's cap)"
                if threads is None else "threads: 1 (the network on one thread everywhere)")
        print(f"   {what}\n      local {lt:6.1f} s ({n / lt:5.2f} cases/s)   dask {dt:6.1f} s ({n / dt:5.2f} "
              f"cases/s)   Dask/local throughput {lt / dt:4.2f}   features byte-identical: {same}"
              f"   largest difference {diff:.1e} of the largest value")


# --------------------------------------------------------------------------- trivial tasks
def bench_tasks(counts, processes: int, cluster: "Cluster"):
    from radiodeep.execution import map_cases

    print(f"\n== trivial tasks (return the argument): per-task overhead and client peak memory [{load()}]")
    for n in counts:
        row = []
        runs = on_both(processes, cluster, lambda **kw: sum(1 for _ in map_cases(noop, range(n), progress=False, **kw)))
        for name, (done, s, mb) in runs.items():
            assert done == n
            row.append(f"{name} {s:6.2f} s = {1000 * s / n:5.2f} ms/task, client +{mb:5.1f} MB")
        print(f"   {n:6d} tasks: " + "   ".join(row))


# --------------------------------------------------------------------------- LOO folds
def naive_bayes_after(select: dict, X):
    """The pipeline of one experiment: ``select`` (method, k) on the columns of ``X``, then naive Bayes."""
    from radiodeep.config import ExperimentConfig
    from radiodeep.experiment import build_pipeline

    exp = ExperimentConfig.model_validate({"name": "e", "features": ["handcrafted"], "select": select,
                                           "classifier": "naive_bayes"})
    return build_pipeline(exp, {"handcrafted": list(X.columns)}, 0)


def bench_loo(sizes, processes: int, cluster: "Cluster"):
    from radiodeep.config import EvaluationConfig
    from radiodeep.evaluation import evaluate

    print(f"\n== leave-one-out folds of one experiment (SU top-5 + naive Bayes, 50 features) [{load()}]")
    for n in sizes:
        X, y = noise_table(n, 50, seed=0)
        X["f0"] += y
        pipe = naive_bayes_after({"method": "su", "k": 5}, X)
        runs = on_both(processes, cluster, lambda **kw: evaluate(pipe, X, y, EvaluationConfig(scheme="loo"),
                                                                 experiment="e", **kw))
        row = [f"{name} {s:6.2f} s = {1000 * s / n:5.2f} ms/fold, client +{mb:5.1f} MB"
               for name, (_, s, mb) in runs.items()]
        same = runs["local"][0].predictions.equals(runs["dask"][0].predictions)
        print(f"   {n:6d} folds: " + "   ".join(row) + f"   identical predictions: {same}")


# --------------------------------------------------------------------------- permutations
def bench_permutations(n: int, n_perm: int, processes: int, cluster: "Cluster"):
    """One experiment's label-permutation test: local threads vs the Dask cluster, where the
    permutations run in tasks of a few (each one's shared LOO selection and folds on the worker)."""
    from radiodeep.cluster import client_for
    from radiodeep.config import EvaluationConfig
    from radiodeep.evaluation import evaluate

    print(f"\n== permutation test of one experiment (ReliefF top-5 + naive Bayes, LOO, {n} cases x 50 "
          f"features, {n_perm} permutations) [{load()}]")
    X, y = noise_table(n, 50, seed=0)
    X["f0"] += 1.5 * y  # two informative features
    X["f1"] -= 1.5 * y
    pipe = naive_bayes_after({"method": "relieff", "k": 5}, X)
    cfg = EvaluationConfig(scheme="loo", permutations=n_perm)
    t = time.perf_counter()
    client_for(cluster.address, ["radiodeep.evaluation"])  # what the first evaluation would do
    print(f"   workers set up for the evaluation in {time.perf_counter() - t:.1f} s (once per cluster; "
          "not counted below)")
    runs = on_both(processes, cluster, lambda **kw: evaluate(pipe, X, y, cfg, experiment="e", **kw))
    row = [f"{name} {s:6.1f} s = {1000 * s / n_perm:5.0f} ms/permutation, client +{mb:5.1f} MB"
           for name, (_, s, mb) in runs.items()]
    (a, local_s, _), (b, dask_s, _) = runs["local"], runs["dask"]
    same = a.null_aucs.tobytes() == b.null_aucs.tobytes() and a.metrics == b.metrics
    print("   " + "   ".join(row) + f"   Dask/local throughput {local_s / dask_s:4.2f}")
    print(f"   identical null AUCs and p-value: {same} (perm_p {b.metrics['perm_p']:.4f}, null mean "
          f"{b.metrics['perm_null_auc_mean']:.3f}, observed AUC {b.metrics['auc']:.3f})  [{load()}]")


def bench_many_permutations(n_perm: int, processes: int, cluster: "Cluster", n: int = 2000):
    """Many cheap permutations (external split, one fit each): client memory stays flat, as the
    permuted labels are drawn a window of tasks (of at most 64 permutations) at a time."""
    import numpy as np
    import pandas as pd

    from radiodeep.config import EvaluationConfig
    from radiodeep.evaluation import evaluate

    print(f"\n== {n_perm} cheap permutations (external split {n // 2}/{n // 2} cases, SU top-2 + naive Bayes, "
          f"one fit each): client memory [{load()}]")
    X, y = noise_table(n, 5, seed=1)
    X["f0"] += y
    split = pd.Series(np.where(np.arange(n) < n // 2, "train", "test"), index=y.index)
    pipe = naive_bayes_after({"method": "su", "k": 2}, X)
    cfg = EvaluationConfig(scheme="external", permutations=n_perm)
    runs = on_both(processes, cluster, lambda **kw: evaluate(pipe, X, y, cfg, experiment="e", split=split, **kw))
    row = [f"{name} {s:6.1f} s = {1000 * s / n_perm:5.2f} ms/permutation, client +{mb:5.1f} MB"
           for name, (_, s, mb) in runs.items()]
    same = runs["local"][0].null_aucs.tobytes() == runs["dask"][0].null_aucs.tobytes()
    print("   " + "   ".join(row) + f"   identical null AUCs: {same}  (all {n_perm} label vectors: "
          f"{n_perm * n * 8 / 2**20:.0f} MB)")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 cases only, smaller LOO")
    ap.add_argument("--processes", type=int, default=2, help="worker processes on each backend")
    ap.add_argument("--reps", type=int, default=1, help="runs of each extraction (the best is shown)")
    ap.add_argument("--ablate", action="store_true", help="also Dask without radiodeep's worker set-up")
    ap.add_argument("--only", choices=["extract", "deep", "tasks", "loo", "perm"], help="one part only")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, True)
        return
    import logging

    sys.stdout.reconfigure(line_buffering=True)  # figures appear as measured, also in a log file
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # shutdown chatter
    P = args.processes
    print(f"bench_scale: {P} processes per backend on {os.cpu_count()} cores [{load()}]"
          + ("  (--quick)" if args.quick else ""))
    cluster = Cluster(P)
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        if args.only in (None, "extract"):
            bench_extraction(work, [40] if args.quick else [40, 200], P, args.reps, cluster, args.ablate)
        if args.only in (None, "deep"):
            bench_deep(work, 40, P, cluster)
        if args.only in (None, "tasks"):
            bench_tasks([1000, 10000], P, cluster)
        if args.only in (None, "loo"):
            bench_loo([100, 400] if args.quick else [200, 1000], P, cluster)
        if args.only in (None, "perm"):
            bench_permutations(60 if args.quick else 100, 100 if args.quick else 200, P, cluster)
            bench_many_permutations(2000 if args.quick else 10000, P, cluster)
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
