"""Faults a hostile but fair tester tries: exit codes, killed parents, two runs on one folder,
full disks, read-only folders, files in the way, long case ids, shared reports, umask.

Each scenario runs the real command (``main(argv)`` in this process, or a subprocess where a
process must be killed); faults that cannot be made for real here (a full disk) are injected
at the lowest write call, so the code under test runs unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from radiodeep import pipeline
from radiodeep.cli import main
from radiodeep.config import load_config
from radiodeep.execution import map_cases
from radiodeep.features.store import FeatureStore, export_csv
from radiodeep.outdir import LOCK_NAME, OutputLock, check_writable
from radiodeep.synth import make_cohort

from helpers import tiny_case, write_manifest

PARAMS = "setting: {binWidth: 25}\nfeatureClass: {firstorder: [], glcm: []}\n"


def study(tmp: Path, n_cases: int = 6, *, experiments=None, deep: bool = False, n_jobs: int = 1,
          **over) -> Path:
    """A small handcrafted study on a phantom cohort (6 cases: a few seconds)."""
    manifest = tmp / "c" / "manifest.csv"
    if not manifest.exists():
        make_cohort(manifest.parent, n_cases=n_cases, seed=3)
    (tmp / "params.yaml").write_text(PARAMS, encoding="utf-8")
    features = {"handcrafted": {"mode": "3d", "params": "params.yaml"}}
    if deep:
        features["deep"] = {"backbone": "alexnet", "weights": None, "layer": "fc7", "batch_size": 4}
    cfg = {
        "name": "faults",
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "roi": {"size": 64, "window_px": 48},
        "features": features,
        "experiments": experiments if experiments is not None else [
            {"name": "su3-nb", "features": ["handcrafted"], "select": {"method": "su", "k": 3},
             "classifier": "naive_bayes"}],
        "evaluation": {"scheme": "loo", "seed": 0},
        "output": "results",
        "execution": {"n_jobs": n_jobs, "progress": False},
        **over,
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def one_line_no_traceback(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


def npz(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.npz")}


# --------------------------------------------------------------------------- item 4: exit codes
def test_exit_code_0_only_when_every_case_and_experiment_succeeded(tmp_path, capsys):
    path = study(tmp_path)
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    # one experiment cannot run (k above the handcrafted count, known only after extraction)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["experiments"] = [{"name": "too-many", "features": ["handcrafted"],
                            "select": {"method": "su", "k": 100000}, "classifier": "naive_bayes"}]
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(path)]) == 4
    out = capsys.readouterr()
    assert "experiment too-many could not run" in out.out
    metrics = (tmp_path / "results" / "metrics.csv").read_text(encoding="utf-8")
    header = metrics.splitlines()[0].split(",")  # the header is kept: a 1-byte file before
    assert {"experiment", "auc", "accuracy", "sensitivity", "specificity"} <= set(header)
    assert len(metrics.splitlines()) == 1


def test_cases_failed_during_extraction_give_exit_3_unless_skip(tmp_path, monkeypatch, capsys):
    """A case whose image is damaged after validation (a file on a network share) fails in
    extraction: the run finishes, lists it, and does not exit 0."""
    path = study(tmp_path)
    real_prepare = pipeline.prepare

    def prepare_then_damage(*args, **kwargs):
        cohort = real_prepare(*args, **kwargs)
        victim = cohort.cases[0].image
        victim.write_bytes(victim.read_bytes()[:300])  # truncated after the checks
        return cohort

    monkeypatch.setattr(pipeline, "prepare", prepare_then_damage)
    assert main(["run", str(path)]) == 3
    failures = pd.read_csv(tmp_path / "results" / "failures.csv")
    assert failures.case_id.tolist() == ["ct000"]
    assert "exit code 3" in capsys.readouterr().err
    # cohort.on_invalid: skip asks for bad cases to be left out: the same failure gives 0
    make_cohort(tmp_path / "c", n_cases=6, seed=3)  # the image is whole again until checked
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"]["on_invalid"] = "skip"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    failures = pd.read_csv(tmp_path / "results" / "failures.csv")
    assert failures.case_id.tolist() == ["ct000"]


def test_k_above_a_known_feature_count_is_refused_before_extraction(tmp_path, capsys):
    path = study(tmp_path, deep=True, experiments=[
        {"name": "deep-too-many", "features": ["deep"], "select": {"method": "su", "k": 5000},
         "classifier": "naive_bayes"}])
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "experiment deep-too-many: k=5000 but its route(s) deep give 4096 features" in err
    assert not list((tmp_path / "results").rglob("*.npz"))  # nothing was computed


def test_exit_codes_are_in_the_help():
    out = subprocess.run([sys.executable, "-m", "radiodeep.cli", "run", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for code in ("0 every case", "3 finished, but cases failed", "4 finished, but an experiment",
                 "143 terminated"):
        assert code in " ".join(out.split()), code


# --------------------------------------------------------------------------- item 5: signals, orphans
def _start_run(path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "radiodeep.cli", "run", str(path), "--only", "extract"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    workers: list[psutil.Process] = []
    while time.time() < deadline and proc.poll() is None:
        try:
            workers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        if len(workers) >= 2 and list((path.parent / "results").rglob("*.npz")):
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2, "the run should be extracting with 2 workers"
    return proc, workers


def _gone_within(workers: list[psutil.Process], path: Path, seconds: float) -> list[psutil.Process]:
    """Workers still alive after ``seconds``: those seen, and any process running this study."""
    _, alive = psutil.wait_procs(workers, timeout=seconds)
    for p in psutil.process_iter(["cmdline"]):
        if str(path) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid() and p not in alive:
            alive.append(p)
    for p in alive:  # leave nothing behind, even when the test fails
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_workers_do_not_outlive_their_parent(tmp_path, how):
    path = study(tmp_path, n_cases=24, n_jobs=2)
    proc, workers = _start_run(path)
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    alive = _gone_within(workers, path, 5)
    assert not alive, f"{len(alive)} worker(s) survived their parent ({how})"
    kept = list((tmp_path / "results").rglob("*.npz"))
    assert kept  # finished cases stay cached
    if how != "SIGKILL":  # SIGTERM is handled like Ctrl-C: one line, a non-zero exit, no traceback
        said = {"SIGTERM": "terminated (SIGTERM)", "SIGINT": "interrupted"}[how]
        assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[how]
        last = one_line_no_traceback(err)
        assert f"{said}: finished cases are cached" in last
        log = (tmp_path / "results" / "radiodeep.log").read_text(encoding="utf-8")
        assert said in log
        assert not (tmp_path / "results" / LOCK_NAME).exists()  # the folder is free again


# --------------------------------------------------------------------------- item 6: one run per folder
_HOLDER = """
import sys, time
from radiodeep.outdir import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_locked_folder_is_refused_with_the_first_ones_pid(tmp_path, capsys):
    path = study(tmp_path)
    out = tmp_path / "results"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = json.loads((out / LOCK_NAME).read_text(encoding="utf-8"))["started"]
        assert main(["run", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"PID {holder.pid} on {socket.gethostname()}, started {started}" in err
        assert "--output" in err
        assert not (out / "radiodeep.log").exists() and not list(out.rglob("*.npz"))
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed -9: its lock is stale and the next run takes it over
    assert (out / LOCK_NAME).exists()
    assert main(["run", str(path)]) == 0
    assert "taking over the lock of a run that is gone" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "results"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "2026-01-01T00:00:00+00:00"}), encoding="utf-8")
    with OutputLock(out):
        info = json.loads((out / LOCK_NAME).read_text(encoding="utf-8"))
        assert info["pid"] == os.getpid()
        with OutputLock(out):  # the same process again (the CLI, then run()): re-entrant
            pass
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()


def test_without_kernel_locks_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    """A file system without flock (some network mounts): a live PID still refuses, a dead one
    is taken over."""
    import radiodeep.outdir as outdir

    monkeypatch.setattr(outdir, "fcntl", None)
    out = tmp_path / "results"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(),
                                                 "started": "2026-01-01T00:00:00+00:00"}), encoding="utf-8")
        with pytest.raises(outdir.OutputLocked, match=f"PID {alive.pid} on .*, started 2026-01-01"):
            OutputLock(out).acquire()
    finally:
        alive.kill()
        alive.wait()
    with OutputLock(out):
        assert json.loads((out / LOCK_NAME).read_text(encoding="utf-8"))["pid"] == os.getpid()


_PROBER = """
import sys
from radiodeep.outdir import check_writable
bad = sum(check_writable(sys.argv[1]) is not None for _ in range(int(sys.argv[2])))
print(bad)
"""


def test_concurrent_writability_probes_never_give_false_answers(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _PROBER, str(tmp_path), "1500"], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    assert [int(p.communicate(timeout=120)[0]) for p in procs] == [0, 0]
    assert not list(tmp_path.iterdir())  # no probe left behind


# --------------------------------------------------------------------------- item 7: foreseeable faults
def test_output_path_that_is_a_file(tmp_path, capsys):
    path = study(tmp_path)
    (tmp_path / "results").write_text("in the way", encoding="utf-8")
    assert main(["run", str(path)]) == 1
    last = one_line_no_traceback(capsys.readouterr().err)
    assert str(tmp_path / "results") in last and "is a file" in last and "is not writable" in last and "--output" in last


def test_synth_into_a_path_blocked_by_a_file(tmp_path, capsys):
    (tmp_path / "phantoms").write_text("in the way", encoding="utf-8")
    assert main(["synth", str(tmp_path / "phantoms" / "ct"), "--cases", "2"]) == 1
    last = one_line_no_traceback(capsys.readouterr().err)
    assert str(tmp_path / "phantoms") in last and "a file is in the way" in last


def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    path = study(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse writes as a read-only mount does
        real_open = os.open

        def read_only(p, flags, *args, **kwargs):
            if str(p).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
            return real_open(p, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    try:
        assert main(["run", str(path)]) == 1
    finally:
        out.chmod(0o755)
    last = one_line_no_traceback(capsys.readouterr().err)
    assert f"output folder {out} is not writable" in last and "--output" in last


def test_disk_full_while_caching_keeps_finished_cases_and_resumes(tmp_path, monkeypatch, capsys):
    path = study(tmp_path)
    real_savez = np.savez
    calls = {"n": 0}

    def savez_until_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", savez_until_full)
    assert main(["run", str(path)]) == 1
    last = one_line_no_traceback(capsys.readouterr().err)
    cache = tmp_path / "results" / "cache"
    assert "No space left on device" in last and str(cache) in last and "free disk space" in last
    log = (tmp_path / "results" / "radiodeep.log").read_text(encoding="utf-8")
    assert "No space left on device" in log
    kept = npz(cache)
    assert len(kept) == 2
    assert not list(cache.rglob("*.tmp"))  # no half-written entry
    monkeypatch.setattr(np, "savez", real_savez)
    assert main(["run", str(path)]) == 0  # resumes: the two finished cases are not recomputed
    assert len(npz(cache)) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_disk_full_while_writing_the_report_loses_nothing_finished(tmp_path, monkeypatch, capsys):
    path = study(tmp_path)
    real_replace = os.replace

    def full_at_report(src, dst, *args, **kwargs):
        if Path(dst).name == "report.html":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_at_report)
    assert main(["run", str(path)]) == 1
    last = one_line_no_traceback(capsys.readouterr().err)
    out = tmp_path / "results"
    assert f"No space left on device: {out / 'report.html'}" in last and "free disk space" in last
    for name in ("features_handcrafted.csv", "metrics.csv", "predictions.csv", "failures.csv"):
        assert (out / name).stat().st_size > 10, name
    assert len(npz(out / "cache")) == 6


def test_a_case_id_longer_than_a_file_name_may_be(tmp_path, capsys):
    rows = []
    for i in range(6):
        cid = f"patient-{i}-" + "x" * 300  # 300+ characters: above every file system's 255
        ip, mp = tiny_case(tmp_path / "c", f"p{i}", seed=i, shape=(10, 32, 32))
        rows.append({"case_id": cid, "image": ip.name, "mask": mp.name, "label": ["a", "b"][i % 2]})
    write_manifest(tmp_path / "c" / "manifest.csv", rows)
    path = study(tmp_path, cohort={"manifest": "c/manifest.csv", "positive_label": "b"})
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path)]) == 0  # validate said OK: the run keeps that promise
    names = [p.name for p in (tmp_path / "results" / "cache").rglob("*.npz")]
    assert len(names) == 6 and all(len(n.encode()) <= 255 for n in names)
    assert len(set(names)) == 6
    feats = pd.read_csv(tmp_path / "results" / "features_handcrafted.csv", dtype={"case_id": str})
    assert sorted(feats.case_id) == sorted(r["case_id"] for r in rows)


# --------------------------------------------------------------------------- item 8 + 9: shareable, no torch
_SHAREABLE = """
import sys
from radiodeep.cli import main
rc = main(["run", sys.argv[1], "--output", sys.argv[2]])
print(rc, "torch" in sys.modules)
"""


def test_outputs_hold_no_absolute_path_and_a_handcrafted_run_does_not_import_torch(tmp_path):
    path = study(tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["features"]["handcrafted"]["params"] = str(tmp_path / "params.yaml")  # absolute in the config
    data["cohort"]["on_invalid"] = "skip"
    data["execution"]["cache_dir"] = str(tmp_path / "feature-cache")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    manifest = tmp_path / "c" / "manifest.csv"
    df = pd.read_csv(manifest)
    df.loc[0, "mask"] = str(tmp_path / "c" / "masks" / "gone.nrrd")  # a failure reason with a path
    df.to_csv(manifest, index=False)
    out = tmp_path / "shared-results"
    proc = subprocess.run([sys.executable, "-c", _SHAREABLE, str(path), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.split()[-2:] == ["0", "False"], proc.stderr  # ran, and torch was never imported
    failures = pd.read_csv(out / "failures.csv")
    assert failures.reason[0].startswith("mask file not found") and "c/masks/gone.nrrd" in failures.reason[0]
    checked = []
    for p in out.rglob("*"):
        if p.is_file() and p.name != "radiodeep.log" and p.suffix != ".png":
            text = p.read_bytes().decode("utf-8", "replace")
            assert str(tmp_path) not in text, f"{p.name} holds {tmp_path}"
            checked.append(p.name)
    assert {"report.html", "features_handcrafted.provenance.json", "failures.csv", "metrics.json",
            "environment.json", "run_record.json", "config.resolved.yaml"} <= set(checked)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "feature-cache" in html and "params.yaml" in html  # shown, relative to the study folder


# --------------------------------------------------------------------------- item 10: a log never looks hung
def test_without_a_terminal_progress_is_logged_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv("RADIODEEP_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO", logger="radiodeep.execution")
    got = list(map_cases(abs, [-1, -2, -3], progress=True, desc="toy"))  # pytest's stderr is no terminal
    assert len(got) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "radiodeep.execution"]
    assert lines[0].startswith("toy: 1/3 cases (33%),") and "cases/s, ETA" in lines[0]
    assert lines[-1].startswith("toy: 3/3 cases (100%)") and lines[-1].endswith("done")


def test_only_evaluate_says_what_it_is_doing(tmp_path, caplog):
    path = study(tmp_path)
    cfg = load_config(path)
    pipeline.run(cfg)
    caplog.clear()
    caplog.set_level("INFO", logger="radiodeep")
    pipeline.run(cfg, only="evaluate")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "--only evaluate: reading the run record and the exported features (features_handcrafted.csv)" in text
    assert "experiment 1/1: su3-nb (handcrafted, scheme loo)" in text


# --------------------------------------------------------------------------- issue 10 item 7
def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = FeatureStore(tmp_path / "cache", "handcrafted", {"a": 1})
        entry = store.save("case1", {"f": 1.0}, "print")
        table = export_csv(pd.DataFrame({"f": [1.0]}, index=pd.Index(["c"], name="case_id")),
                           tmp_path / "features_x.csv", {})
        for p in (entry, store.dir / "settings.json", table, table.with_suffix(".provenance.json")):
            assert p.stat().st_mode & 0o777 == 0o644, p.name
    finally:
        os.umask(old)


def test_only_extract_removes_the_previous_evaluation(tmp_path):
    path = study(tmp_path)
    cfg = load_config(path)
    old = os.umask(0o022)
    try:
        pipeline.run(cfg)
    finally:
        os.umask(old)
    out = cfg.output_dir
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), modes  # colleagues can read every output
    assert (out / "report.html").exists() and (out / "metrics.csv").exists()
    pipeline.run(cfg, only="extract")
    for name in ("report.html", "metrics.csv", "metrics.json", "predictions.csv", "selected_features.csv",
                 "delong.csv"):
        assert not (out / name).exists(), name
    assert (out / "features_handcrafted.csv").exists()



def test_a_file_shipped_by_a_package_is_shown_without_the_machine_s_paths(tmp_path):
    import sysconfig

    from radiodeep.provenance import shareable_path

    shipped = os.path.join(os.path.realpath(sysconfig.get_paths()["purelib"]), "some_pkg", "models", "w.pth")
    assert shareable_path(shipped, tmp_path) == "<site-packages>/some_pkg/models/w.pth"
    assert shareable_path(tmp_path / "study" / "a.nrrd", tmp_path) == "study/a.nrrd"
