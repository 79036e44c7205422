"""Benchmark of the handcrafted route: radiodeep against PyRadiomics itself.

    uv run python bench/bench_handcrafted.py            # about 5 minutes on 2 idle cores
    uv run python bench/bench_handcrafted.py --quick    # about 1.5 minutes

Prints seconds per case, on the same inputs and settings, for
  * PyRadiomics called directly (a loop over ``RadiomicsFeatureExtractor.execute``),
  * radiodeep serial (``n_jobs=1``) and with ``n_jobs=2`` local processes (fresh cache),
  * radiodeep again on its warm cache (what a rerun costs),
  * the PyRadiomics command line, ``pyradiomics cases.csv --param ... --jobs 1`` and ``--jobs 2``,
on the five real cases (../shared/data/pyradiomics_testcases, where present; the baseline's
settings, all 7 classes, original image) and on 100 phantom CT cases
(``radiodeep.synth``; sample_configs/pyradiomics_ct.yaml: 1 mm resampling, LoG 1 and 3 mm).
Then peak memory per worker for 100 and for 1,000 cases (``n_jobs=2``), to show that it
does not grow with the cohort.

Every measurement runs in a fresh Python process, so memory figures are clean: a worker's
peak RSS is the largest finished child's (``getrusage(RUSAGE_CHILDREN)``). Timings on a
shared machine vary with other load; the load average and the machine's own parallel
capacity (pure-Python work, 2 processes vs 1) are printed beside them.
Not a timed test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "pyradiomics_testcases"
REAL = ("brain1", "brain2", "breast1", "lung1", "lung2")
# the settings of PyRadiomics' baseline files (their general_info rows), all 7 classes
BASELINE_PARAMS = {
    "setting": {"binWidth": 25, "voxelArrayShift": 2000, "interpolator": None, "label": 1,
                "minimumROIDimensions": 1, "gldm_a": 0, "resampledPixelSpacing": None,
                "padDistance": 5, "normalize": False, "preCrop": False, "distances": [1],
                "force2D": False},
    "imageType": {"Original": {}},
    "featureClass": {c: None for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")},
}
# light settings for the memory-versus-cohort-size check
LIGHT_PARAMS = {"setting": {"binWidth": 25}, "imageType": {"Original": {}},
                "featureClass": {"firstorder": None, "glcm": None}}


def _mb(kb: int) -> float:
    return kb / 1024.0


# --------------------------------------------------------------------------- one measurement (child)
def _burn(n: int) -> float:
    t = time.perf_counter()
    s = 0
    for i in range(n):
        s += i * i
    return time.perf_counter() - t


def run_one(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "capacity":
        from concurrent.futures import ProcessPoolExecutor

        n = 6_000_000
        t = time.perf_counter()
        _burn(n)
        _burn(n)
        serial = time.perf_counter() - t
        t = time.perf_counter()
        with ProcessPoolExecutor(2) as ex:
            list(ex.map(_burn, [n, n]))
        return {"ratio": serial / (time.perf_counter() - t)}

    if kind == "cli":
        exe = shutil.which("pyradiomics") or str(Path(sys.executable).parent / "pyradiomics")
        out = Path(spec["work"]) / f"cli_{spec['jobs']}.csv"
        out.unlink(missing_ok=True)
        cmd = [exe, spec["batch_csv"], "--param", spec["params"], "--jobs", str(spec["jobs"]),
               "-o", str(out), "-f", "csv", "--logging-level", "ERROR"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        rows = max(0, len(out.read_text(encoding="utf-8").splitlines()) - 1) if out.exists() else 0
        return {"wall": wall, "rows": rows,
                "worker_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}

    import logging

    import radiomics
    from radiomics import featureextractor

    if kind == "direct":
        radiomics.setVerbosity(logging.CRITICAL)
        logging.getLogger("radiomics").setLevel(logging.WARNING)
        import csv

        with open(spec["batch_csv"], encoding="utf-8") as fh:
            cases = [(r["Image"], r["Mask"]) for r in csv.DictReader(fh)]
        ex = featureextractor.RadiomicsFeatureExtractor(spec["params"])
        start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        n_feat = 0
        for image, mask in cases:
            r = ex.execute(image, mask)
            n_feat = sum(1 for k in r if not k.startswith("diagnostics_"))
        wall = time.perf_counter() - t
        return {"wall": wall, "n_features": n_feat, "start_kb": start_kb,
                "worker_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}

    # radiodeep (PyRadiomics imported before the clock starts, as for the direct calls)
    from radiodeep.cohort import read_manifest
    from radiodeep.config import parse_config
    from radiodeep.features.handcrafted import _radiomics, extract_handcrafted

    _radiomics()

    cfg = parse_config({
        "cohort": {"manifest": spec["manifest"], "positive_label": "short"},
        "features": {"handcrafted": {"params": spec["params"], "mode": "3d"}},
        "output": spec["work"],
        "execution": {"n_jobs": spec["jobs"], "cache_dir": spec["cache"], "progress": False},
    }, base_dir=spec["work"])
    cohort, _ = read_manifest(cfg.resolve(cfg.cohort.manifest), positive_label="short")
    start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    res = extract_handcrafted(cohort, cfg, progress=False)
    wall = time.perf_counter() - t
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall": wall, "n_features": int(res.features.shape[1]), "n_cases": int(res.features.shape[0]),
            "failures": [f"{f.case_id}: {f.reason}" for f in res.failures][:3],
            "n_computed": res.provenance["n_computed"], "start_kb": start_kb, "main_peak_kb": self_kb,
            "worker_peak_kb": child_kb if spec["jobs"] > 1 else self_kb}


def measure(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; return its figures."""
    proc = subprocess.run([sys.executable, __file__, "--_run", json.dumps(spec)],
                          capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- inputs
def write_inputs(work: Path, name: str, cases: list[tuple[str, str, str]], params: dict | Path):
    """A radiodeep manifest, a PyRadiomics batch CSV and a params file for the same cases."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["case_id,image,mask,label"] + [
        f"{cid},{img},{msk},{'short' if i % 2 == 0 else 'long'}" for i, (cid, img, msk) in enumerate(cases)]
    (d / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "batch.csv").write_text("Image,Mask\n" + "".join(f"{img},{msk}\n" for _, img, msk in cases), encoding="utf-8")
    if isinstance(params, Path):
        p = params
    else:
        import yaml

        p = d / "params.yaml"
        p.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return {"manifest": str(d / "manifest.csv"), "batch_csv": str(d / "batch.csv"), "params": str(p),
            "work": str(d), "n": len(cases)}


def phantom_cases(work: Path, n: int) -> list[tuple[str, str, str]]:
    d = work / f"phantoms_{n}"
    manifest = d / "manifest.csv"
    if not manifest.exists():
        try:
            from radiodeep.synth import make_cohort
        except ImportError:  # pragma: no cover - synth is part of the package
            sys.exit("radiodeep.synth is missing: cannot make phantom cases")
        make_cohort(d, n_cases=n, seed=0, modality="ct")
    import csv

    with manifest.open(encoding="utf-8") as fh:
        return [(r["case_id"], str(d / r["image"]), str(d / r["mask"])) for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------- the benchmark
def bench_cohort(title: str, inp: dict, repeats: int, rows: list, jobs: int = 2):
    n = inp["n"]
    fresh = lambda tag: str(Path(inp["work"]) / f"cache_{tag}")  # noqa: E731

    def rd(j: int, tag: str, keep: bool = False) -> dict:
        cache = fresh(tag)
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
        return measure({**inp, "kind": "radiodeep", "jobs": j, "cache": cache})

    cap = measure({"kind": "capacity"}).get("ratio", float("nan"))
    print(f"\n[{title}: {n} cases]  machine parallel capacity now: {cap:.2f}x", flush=True)
    direct, serial = [], []
    for _ in range(repeats):  # interleaved, to share the machine's ups and downs
        direct.append(measure({**inp, "kind": "direct"}))
        serial.append(rd(1, "serial"))
    best = lambda rs: min(rs, key=lambda r: r.get("wall", float("inf")))  # noqa: E731
    results = {
        "PyRadiomics, direct calls (serial)": best(direct),
        "radiodeep n_jobs=1": best(serial),
        f"radiodeep n_jobs={jobs}": rd(jobs, "parallel"),
        "radiodeep rerun (cached)": rd(1, "serial", keep=True),
        "pyradiomics CLI --jobs 1": measure({**inp, "kind": "cli", "jobs": 1}),
        f"pyradiomics CLI --jobs {jobs}": measure({**inp, "kind": "cli", "jobs": jobs}),
    }
    ref = results["PyRadiomics, direct calls (serial)"].get("wall")
    ser = results["radiodeep n_jobs=1"].get("wall")
    print(f"  {'method':36s} {'s/case':>8s} {'vs direct':>10s} {'throughput':>11s} {'peak RSS/worker':>16s}")
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:36s} ERROR: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}")
            continue
        w = r["wall"]
        thr = f"{ser / w:.2f}x" if ser else ""
        extra = ""
        if r.get("failures"):
            extra += f"  failures: {r['failures']}"
        if "n_features" in r:
            extra += f"  ({r['n_features']} features)"
        print(f"  {name:36s} {w / n:8.3f} {w / ref if ref else float('nan'):10.2f} {thr:>11s} "
              f"{_mb(r['worker_peak_kb']):13.0f} MB{extra}", flush=True)
    rows.append((title, results, cap))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 phantoms, 200 for the memory check")
    ap.add_argument("--phantoms", type=int, default=None, help="phantom cases (default 100; quick 20)")
    ap.add_argument("--big", type=int, default=None, help="cases for the memory check (default 1000)")
    ap.add_argument("--repeats", type=int, default=1, help="serial runs per method, best kept")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "handcrafted")
    ap.add_argument("--_run", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._run:
        print(json.dumps(run_one(json.loads(args._run))))
        return
    n_ph = args.phantoms or (20 if args.quick else 100)
    n_big = args.big or (200 if args.quick else 1000)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import radiomics

    print(f"radiodeep handcrafted benchmark: PyRadiomics {radiomics.__version__}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cap = measure({"kind": "capacity"})
    print(f"machine parallel capacity (pure Python, 2 processes vs 1): {cap.get('ratio', float('nan')):.2f}x")

    rows: list = []
    if (SHARED / "lung1_image.nrrd").exists():
        cases = [(c, str(SHARED / f"{c}_image.nrrd"), str(SHARED / f"{c}_label.nrrd")) for c in REAL]
        bench_cohort("real cases, baseline settings", write_inputs(work, "real", cases, BASELINE_PARAMS),
                     args.repeats, rows, args.jobs)
    else:
        print(f"\n(real cases skipped: {SHARED} not found)")

    ph = phantom_cases(work, n_ph)
    bench_cohort("phantom CT, sample_configs/pyradiomics_ct.yaml",
                 write_inputs(work, f"phantom{n_ph}", ph, ROOT / "sample_configs" / "pyradiomics_ct.yaml"),
                 args.repeats, rows, args.jobs)

    # memory against cohort size: the same phantoms listed again under new ids
    print(f"\n[peak memory per worker against cohort size: light settings, n_jobs={args.jobs}]")
    mem = {}
    for n in (n_ph, n_big):
        cases = [(f"m{i:05d}", ph[i % len(ph)][1], ph[i % len(ph)][2]) for i in range(n)]
        inp = write_inputs(work, f"mem{n}", cases, LIGHT_PARAMS)
        shutil.rmtree(Path(inp["work"]) / "cache", ignore_errors=True)
        r = measure({**inp, "kind": "radiodeep", "jobs": args.jobs, "cache": str(Path(inp["work"]) / "cache")})
        mem[n] = r
        if "error" in r:
            print(f"  {n:5d} cases: ERROR {r['error'][-500:]}")
            continue
        print(f"  {n:5d} cases: {r['wall'] / n:.3f} s/case, peak RSS per worker {_mb(r['worker_peak_kb']):.0f} MB, "
              f"main process {_mb(r['main_peak_kb']):.0f} MB (after imports {_mb(r['start_kb']):.0f} MB)",
              flush=True)

    print("\n[targets]")
    for title, res, cap_now in rows:
        d = res["PyRadiomics, direct calls (serial)"].get("wall")
        s = res["radiodeep n_jobs=1"].get("wall")
        p = res[f"radiodeep n_jobs={args.jobs}"].get("wall")
        if d and s:
            print(f"  {title}: radiodeep serial / PyRadiomics direct = {s / d:.3f} (target <= 1.10)")
        if s and p:
            print(f"  {title}: n_jobs={args.jobs} throughput = {s / p:.2f}x serial (target >= 1.8; "
                  f"the machine's capacity then: {cap_now:.2f}x)")
    if all("error" not in mem[n] for n in mem):
        a, b = (mem[n]["worker_peak_kb"] for n in (n_ph, n_big))
        print(f"  peak RSS per worker: {n_ph} cases {_mb(a):.0f} MB, {n_big} cases {_mb(b):.0f} MB "
              f"(ratio {b / a:.3f}; target: the same)")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"benchmark took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
