"""Scaling out (issue 17): the Dask backend set up like local workers, byte-identical features
and predictions, every heavy stage on the cluster, lost workers retried once then reported,
a SLURM/PBS job script from ``execution.cluster``.

One small LocalCluster (2 worker processes, 1 thread each) serves the module; the test that kills
workers has its own.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

distributed = pytest.importorskip("distributed")

from radiodeep.cluster import close_clients, make_cluster  # noqa: E402
from radiodeep.config import ClusterConfig, EvaluationConfig, parse_config  # noqa: E402
from radiodeep.evaluation import evaluate  # noqa: E402
from radiodeep.execution import WorkerDied, map_cases, thread_caps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST_PARAMS = {"featureClass": {"firstorder": [], "glcm": ["Contrast", "JointEntropy"], "shape": []},
               "setting": {"binWidth": 25}}


@pytest.fixture(scope="module")
def cluster():
    c = make_cluster(ClusterConfig(kind="local", processes=2, cores=2))
    try:
        yield c
    finally:
        close_clients()
        c.close()


# module level: the workers unpickle them
def caps_of(_):
    import SimpleITK  # noqa: F401 - what the routes import
    import torch  # noqa: F401

    return thread_caps()


def test_thread_caps_are_the_same_on_both_backends(cluster):
    local = dict(map_cases(caps_of, range(4), n_jobs=2, progress=False))
    dask = dict(map_cases(caps_of, range(4), backend="dask", address=cluster.scheduler_address,
                          progress=False))
    expected = max(1, (os.cpu_count() or 1) // 2)
    for caps in list(local.values()) + list(dask.values()):
        assert caps["itk"] == expected and caps["torch"] == expected
        assert all(v == expected for k, v in caps.items() if k in ("blas", "openmp"))
    same = functools.partial(json.dumps, sort_keys=True)
    assert set(map(same, local.values())) == set(map(same, dask.values()))


def _cohort_config(tmp_path: Path, n: int, **execution):
    from radiodeep.synth import make_cohort

    manifest = tmp_path / "cohort" / "manifest.csv"
    if not manifest.exists():
        make_cohort(manifest.parent, n_cases=n, seed=3)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(FAST_PARAMS), encoding="utf-8")
    data = {"cohort": {"manifest": str(manifest), "positive_label": "short"},
            "features": {"handcrafted": {"params": str(params)}},
            "experiments": [{"name": "hc-relieff3-rf", "features": ["handcrafted"],
                             "select": {"method": "relieff", "k": 3},
                             "classifier": {"name": "random_forest", "n_estimators": 10}}],
            "evaluation": {"scheme": "loo", "permutations": 2},
            "output": str(tmp_path / "out"), "execution": {"progress": False, **execution}}
    return data


def test_extraction_is_byte_identical_on_both_backends(tmp_path, cluster):
    from radiodeep.cohort import read_manifest
    from radiodeep.features.handcrafted import extract_handcrafted

    data = _cohort_config(tmp_path, 6)
    local_cfg = parse_config({**data, "execution": {"progress": False, "n_jobs": 2,
                                                     "cache_dir": str(tmp_path / "c1")}}, tmp_path)
    dask_cfg = parse_config({**data, "execution": {"progress": False, "backend": "dask",
                                                    "address": cluster.scheduler_address,
                                                    "cache_dir": str(tmp_path / "c2")}}, tmp_path)
    cohort, problems = read_manifest(tmp_path / "cohort" / "manifest.csv", positive_label="short")
    assert not problems
    a = extract_handcrafted(cohort, local_cfg, progress=False)
    b = extract_handcrafted(cohort, dask_cfg, progress=False)
    assert b.provenance["execution"]["backend"] == "dask" and b.provenance["n_computed"] == 6
    assert list(a.features.columns) == list(b.features.columns)
    assert list(a.features.index) == list(b.features.index)
    assert a.features.to_numpy().tobytes() == b.features.to_numpy().tobytes()
    # the cache each backend wrote holds the same entries, case by case
    assert sorted(p.name for p in (tmp_path / "c1").rglob("*.npz")) == \
        sorted(p.name for p in (tmp_path / "c2").rglob("*.npz"))


def test_deep_features_run_through_the_network_on_the_workers(tmp_path, cluster):
    """backend dask: each worker reads, crops and runs its cases through its own network (its GPU
    when it has one); with the same torch threads the features are the local run's bits, the
    previews the same crops, and a second run finds every case in the cache."""
    from radiodeep.cohort import read_manifest
    from radiodeep.features.deep import extract_deep

    data = _cohort_config(tmp_path, 4)
    data["roi"] = {"size": 64, "window_px": 16, "slice": "all"}
    data["features"] = {"deep": {"backbone": "resnet18", "layer": "penultimate", "weights": None,
                                 "device": "auto", "batch_size": 4, "threads": 1}}
    data["experiments"] = [{**data["experiments"][0], "features": ["deep"]}]
    cohort, _ = read_manifest(tmp_path / "cohort" / "manifest.csv", positive_label="short")
    results = {}
    for name, execution in {"local": {"n_jobs": 2},
                            "dask": {"backend": "dask", "address": cluster.scheduler_address}}.items():
        cfg = parse_config({**data, "execution": {"progress": False, "cache_dir": str(tmp_path / name),
                                                  **execution}}, tmp_path)
        results[name] = extract_deep(cohort, cfg, progress=False, previews=True)
    local, remote = results["local"], results["dask"]
    assert not local.failures and not remote.failures
    assert remote.provenance["network_ran"] == {"where": "dask workers", "cases_per_device": {"cpu": 4}}
    assert local.provenance["network_ran"]["where"] == "this process"
    assert remote.provenance["weights"]["kind"] == "random" and remote.provenance["threads"] == 1
    assert list(local.features.columns) == list(remote.features.columns)
    assert local.features.to_numpy().tobytes() == remote.features.to_numpy().tobytes()
    pd.testing.assert_frame_equal(local.diagnostics, remote.diagnostics)
    assert [label for label, _ in local.previews] == [label for label, _ in remote.previews]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(local.previews, remote.previews))
    again = extract_deep(cohort, parse_config({**data, "execution": {
        "progress": False, "cache_dir": str(tmp_path / "dask"), "backend": "dask",
        "address": cluster.scheduler_address}}, tmp_path), progress=False)
    assert again.provenance["cache"]["cached"] == 4 and again.provenance["cache"]["computed"] == 0
    assert again.features.to_numpy().tobytes() == remote.features.to_numpy().tobytes()


def _xy(n=24, p=12, seed=0):
    rng = np.random.default_rng(seed)
    y = pd.Series(np.arange(n) % 2, index=[f"c{i:02d}" for i in range(n)])
    X = pd.DataFrame(rng.normal(size=(n, p)), index=y.index, columns=[f"f{j}" for j in range(p)])
    X["f0"] += 1.5 * y  # one informative feature
    return X, y


def _ran(stream, prefix="radiodeep-call"):
    return [t for t in stream.buffer if str(t["key"]).startswith(prefix)]


def _task_stream(cluster):
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    stream = TaskStreamPlugin(cluster.scheduler)  # the scheduler runs in this process
    cluster.scheduler.add_plugin(stream)
    return stream


@pytest.mark.parametrize("scheme,method", [("loo", "relieff"), ("loo", "su"), ("repeated_kfold", "relieff"),
                                           ("external", "su")])
def test_evaluation_folds_and_permutations_run_on_the_cluster_with_the_same_results(cluster, scheme, method):
    """The folds, the shared LOO selection and every permutation on the workers: the same
    predictions, null AUCs (bit for bit) and permutation p-value as local threads."""
    from radiodeep.config import ExperimentConfig
    from radiodeep.experiment import build_pipeline

    X, y = _xy()
    split = pd.Series(np.where(np.arange(len(y)) < 16, "train", "test"), index=y.index)
    exp = ExperimentConfig.model_validate({"name": "e", "features": ["handcrafted"],
                                           "select": {"method": method, "k": 3},
                                           "classifier": {"name": "random_forest", "n_estimators": 10}})
    pipe = build_pipeline(exp, {"handcrafted": list(X.columns)}, 0)
    n_perm = 5
    cfg = EvaluationConfig(scheme=scheme, folds=3, repeats=2, permutations=n_perm, seed=5)
    local = evaluate(pipe, X, y, cfg, experiment="e", split=split, n_jobs=2)
    stream = _task_stream(cluster)
    try:
        remote = evaluate(pipe, X, y, cfg, experiment="e", split=split, backend="dask",
                          address=cluster.scheduler_address)
    finally:
        cluster.scheduler.remove_plugin(name=stream.name)
    n_folds = {"loo": len(y), "repeated_kfold": 3 * 2, "external": 1}[scheme]
    ran = _ran(stream)
    # the folds in chunks of a few (2 slots: at most 8 chunks), the shared LOO selection as one
    # task, then the permutations as tasks of their own (not a round of fold tasks each)
    assert len(ran) == min(n_folds, 8) + (scheme == "loo") + n_perm
    assert len({t["worker"] for t in ran}) == 2  # on both workers
    # the data went to the cluster once: the matrix, the names, the labels; pipeline, folds, ids
    assert len(_ran(stream, "radiodeep-shared")) == 6  # + the case ids (for an error's note)
    pd.testing.assert_frame_equal(local.predictions, remote.predictions, check_exact=True)
    assert local.metrics == remote.metrics
    assert remote.metrics["perm_n"] == n_perm and remote.metrics["perm_p"] == local.metrics["perm_p"]
    assert local.null_aucs.tobytes() == remote.null_aucs.tobytes()
    assert len(set(local.null_aucs.tolist())) > 1  # a real distribution, not one value repeated
    pd.testing.assert_series_equal(local.selection_frequency, remote.selection_frequency)


def test_the_shared_loo_selection_runs_on_a_worker_not_in_the_client(cluster):
    """``loo_fits`` (ReliefF over all folds: O(n^2 p)) runs in a worker process with backend
    dask, for the folds and for each permutation; the client only gets the supports back."""
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline

    import scale_helpers
    from radiodeep.cluster import client_for

    X, y = _xy()
    pipe = Pipeline([("select", scale_helpers.CountingReliefF(k=3)), ("clf", GaussianNB())])
    client = client_for(cluster.scheduler_address)

    def on_workers():
        return sum(client.run(scale_helpers.loo_calls).values())

    cfg = EvaluationConfig(scheme="loo", permutations=3)
    before_client, before_workers = scale_helpers.loo_calls(), on_workers()
    local = evaluate(pipe, X, y, cfg, experiment="e")
    assert scale_helpers.loo_calls() == before_client + 4  # locally: in this process, 1 + 3 permutations
    remote = evaluate(pipe, X, y, cfg, experiment="e", backend="dask", address=cluster.scheduler_address)
    assert scale_helpers.loo_calls() == before_client + 4  # nothing more in the client
    assert on_workers() == before_workers + 4
    pd.testing.assert_frame_equal(local.predictions, remote.predictions, check_exact=True)
    assert local.null_aucs.tobytes() == remote.null_aucs.tobytes()


@pytest.mark.parametrize("n,per_slot,chunk", [(400, 16, 13), (3000, 1, 64)])
def test_many_calls_are_drawn_a_window_at_a_time_on_dask(cluster, n, per_slot, chunk):
    """The client draws the calls (e.g. permuted label vectors) as chunks are submitted, never all
    at once, in chunks of at most 64 calls (so a window of chunks stays small however many calls),
    and the results still come back in order."""
    import scale_helpers
    from radiodeep.execution import MAX_CHUNK, map_calls

    drawn = []

    def calls():
        for i in range(n):
            drawn.append(i)
            yield (i,)

    out = map_calls(scale_helpers.offset, calls(), shared={"b": 1000}, backend="dask",
                    address=cluster.scheduler_address, n_calls=n, chunks_per_slot=per_slot)
    first = next(out)
    # 2 slots: 4 chunks a slot in flight (+1 drawn as the first is taken)
    assert chunk <= MAX_CHUNK and len(drawn) <= 9 * chunk < n
    assert [first, *out] == [i + 1000 for i in range(n)]
    assert len(drawn) == n


def test_the_window_of_calls_in_flight_follows_workers_that_join_later():
    """A cluster still filling up (SLURM/PBS: ``start_cluster`` waits for one worker): a worker
    that joins while map_calls runs gets work, and more calls run at once than the window sized
    for the first worker (4 chunks) allowed; the results stay in order."""
    import time

    import scale_helpers
    from distributed import Client, LocalCluster

    from radiodeep.execution import map_calls

    n = 2000  # more than a window of the largest chunks (4 x 64 calls)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        stream = _task_stream(lc)
        out = map_calls(scale_helpers.stamped, ((i,) for i in range(n)), shared={"pause": 0.001},
                        backend="dask", address=lc.scheduler_address, n_calls=n, chunks_per_slot=4)
        got = [next(out)]  # the first worker alone: 1 slot, a window of 4 chunks
        lc.new_spec["options"]["nthreads"] = 8  # the next worker: 8 slots
        lc.scale(2)
        client.wait_for_workers(2, timeout=30)
        late = next(a for a, w in lc.scheduler.workers.items() if w.nthreads == 8)
        time.sleep(1.1)  # the slots are re-read at most once a second
        got += list(out)
        close_clients()
    assert [g[0] for g in got] == list(range(n))
    assert any(t["worker"] == late for t in _ran(stream))
    # the most calls running at the same time (each chunk runs its calls one after another)
    edges = sorted([(t0, 1) for _, t0, _ in got] + [(t1, -1) for _, _, t1 in got], key=lambda e: (e[0], e[1]))
    running = np.cumsum([d for _, d in edges])
    assert running.max() > 4


def test_an_error_in_one_fold_names_that_fold_on_both_backends(cluster):
    """A fit that fails in one fold (a diverged network, say) says which case that fold held out,
    also when the fold ran on a worker."""
    from radiodeep.evaluation import error_text
    from scale_helpers import NeedsMarkedCase

    X, y = _xy()
    X.iloc[5, 0] = 999.0  # only the fold holding out c05 trains without it
    for kw in ({"n_jobs": 2}, {"backend": "dask", "address": cluster.scheduler_address}):
        with pytest.raises(ValueError) as err:
            evaluate(NeedsMarkedCase(), X, y, EvaluationConfig(scheme="loo"), experiment="e", **kw)
        assert error_text(err.value) == ("the marked case is missing from the training cases; "
                                         "in the fold that holds out case c05"), kw


def test_an_error_only_on_permuted_labels_names_the_permutation_and_the_case(cluster):
    """A fit that fails only on permuted labels says it failed in the label-permutation test, in
    which permutation and which fold (by case id, not row number), also from a worker."""
    from radiodeep.evaluation import error_text
    from scale_helpers import NeedsTrueLabels

    X, y = _xy()
    X["f0"] = y.astype(float)  # the true labels, which the classifier checks
    cfg = EvaluationConfig(scheme="loo", permutations=3, seed=1)
    for kw in ({"n_jobs": 1}, {"backend": "dask", "address": cluster.scheduler_address}):
        with pytest.raises(ValueError) as err:
            evaluate(NeedsTrueLabels(), X, y, cfg, experiment="e", **kw)
        assert error_text(err.value) == ("the training labels are not the true ones; "
                                         "in the fold that holds out case c00; "
                                         "in permutation 1 of 3 of the label-permutation test"), kw
        # the evaluation itself fits in every fold
        assert evaluate(NeedsTrueLabels(), X, y, EvaluationConfig(scheme="loo"), **kw).metrics["n"] == len(y)


def test_a_shared_loo_selection_that_keeps_nothing_names_the_fold(cluster):
    """The shared LOO selection (one call over all folds) keeping no feature in one fold says which
    case that fold held out, on both backends."""
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline

    from radiodeep.evaluation import error_text
    from scale_helpers import EmptyInOneFold

    X, y = _xy()
    pipe = Pipeline([("select", EmptyInOneFold(k=3)), ("clf", GaussianNB())])
    for kw in ({"n_jobs": 2}, {"backend": "dask", "address": cluster.scheduler_address}):
        with pytest.raises(ValueError) as err:
            evaluate(pipe, X, y, EvaluationConfig(scheme="loo"), experiment="e", **kw)
        assert error_text(err.value) == "the selector kept no feature; in the fold that holds out case c05", kw


def test_a_study_with_backend_dask_and_a_started_cluster_matches_a_local_run(tmp_path):
    """`execution.cluster` starts a cluster for the run: extraction and evaluation on it, the same
    bytes in every table as a local run; the written config keeps `cluster`, not an address."""
    from radiodeep.config import load_config
    from radiodeep.pipeline import run

    base = _cohort_config(tmp_path, 8)
    outs = {}
    for name, execution in {"local": {"n_jobs": 2},
                            "dask": {"backend": "dask",
                                     "cluster": {"kind": "local", "processes": 2, "cores": 2}}}.items():
        data = {**base, "output": f"out_{name}", "execution": {"progress": False, **execution}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        run(load_config(path))
        outs[name] = tmp_path / f"out_{name}"
    for table in ("predictions.csv", "metrics.csv", "selected_features.csv"):
        assert (outs["local"] / table).read_bytes() == (outs["dask"] / table).read_bytes(), table
    a = pd.read_csv(outs["local"] / "features_handcrafted.csv", index_col=0)
    b = pd.read_csv(outs["dask"] / "features_handcrafted.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    written = yaml.safe_load((outs["dask"] / "config.resolved.yaml").read_text(encoding="utf-8"))
    assert written["execution"]["cluster"]["kind"] == "local" and written["execution"]["address"] is None


# --------------------------------------------------------------------------- lost workers
def die_once(item):
    """Kill the worker the first time this case runs (a marker file remembers), then succeed."""
    name, folder = item
    marker = Path(folder) / f"{name}.started"
    if name.startswith("always") or not marker.exists():
        marker.write_text("x", encoding="utf-8")
        os._exit(7)
    return name


def test_a_worker_that_dies_mid_case_is_retried_once_then_reported(tmp_path, cluster):
    # the module's cluster (its nannies restart the killed workers); the last test to use it
    items = [("fine", str(tmp_path)), ("once", str(tmp_path)), ("always", str(tmp_path))]
    (tmp_path / "fine.started").write_text("x", encoding="utf-8")  # "fine" never dies
    out = {item[0]: res for item, res in map_cases(die_once, items, backend="dask",
                                                     address=cluster.scheduler_address, progress=False)}
    assert out["fine"] == "fine"
    assert out["once"] == "once"  # its worker died, the retry succeeded
    assert isinstance(out["always"], WorkerDied)
    assert "died" in str(out["always"])


# --------------------------------------------------------------------------- SLURM / PBS
def test_slurm_job_script_from_the_config_is_generated_without_submitting():
    pytest.importorskip("dask_jobqueue")
    spec = ClusterConfig(kind="slurm", cores=8, memory="16GB", processes=2, jobs=4, walltime="02:00:00",
                         queue="cpu", account="radiology", prologue=["source /opt/radiodeep/.venv/bin/activate"],
                         job_extra=["--gres=gpu:1"])
    cluster = make_cluster(spec)
    try:
        script = cluster.job_script()
        assert cluster.status.name != "closed" and len(cluster.workers) == 0  # nothing submitted
    finally:
        cluster.close()
    assert script.startswith("#!/")
    for line in ("#SBATCH -p cpu", "#SBATCH -A radiology", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --cpus-per-task=8", "source /opt/radiodeep/.venv/bin/activate"):
        assert line in script, line
    assert "--nworkers 2" in script and "--nthreads 4" in script
    assert script.index("source /opt/radiodeep") < script.index("distributed.cli.dask_worker")


def test_pbs_job_script_and_cluster_config_validation():
    pytest.importorskip("dask_jobqueue")
    cluster = make_cluster(ClusterConfig(kind="pbs", cores=4, memory="8GB", queue="workq",
                                         python="/shared/radiodeep/.venv/bin/python"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS -q workq" in script and "ncpus=4" in script
    # the workers' Python is the one named (a shared virtual environment), not this process's
    assert "/shared/radiodeep/.venv/bin/python -m distributed.cli.dask_worker" in script
    with pytest.raises(ValueError, match="either 'address'"):
        parse_config({"cohort": {"manifest": "m.csv"}, "features": {"handcrafted": {}},
                      "execution": {"backend": "dask", "address": "tcp://x:8786",
                                    "cluster": {"kind": "slurm"}}})
    with pytest.raises(ValueError, match="needs 'address'"):
        parse_config({"cohort": {"manifest": "m.csv"}, "features": {"handcrafted": {}},
                      "execution": {"backend": "dask"}})
    with pytest.raises(ValueError):
        ClusterConfig(kind="sge")

