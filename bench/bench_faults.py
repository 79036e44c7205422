"""How fast worker processes end after their parent is killed, and what the output lock costs.

    python bench/bench_faults.py [--cases 30] [--repeats 3]

Starts ``radiodeep run --only extract`` with two workers on a phantom cohort, waits until the
workers are extracting, kills the parent (SIGKILL, then SIGTERM), and prints how long the last
worker outlived it. Then times taking and releasing the output-folder lock.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from radiodeep.outdir import OutputLock
from radiodeep.synth import make_cohort

PARAMS = "setting: {binWidth: 25}\nfeatureClass: {firstorder: [], glcm: [], glrlm: []}\n"


def study(tmp: Path, n_cases: int) -> Path:
    make_cohort(tmp / "c", n_cases=n_cases, seed=1)
    (tmp / "params.yaml").write_text(PARAMS, encoding="utf-8")
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump({
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "features": {"handcrafted": {"mode": "3d", "params": "params.yaml"}},
        "execution": {"n_jobs": 2, "progress": False}}), encoding="utf-8")
    return path


def survival(path: Path, sig: int) -> tuple[float, int]:
    proc = subprocess.Popen([sys.executable, "-m", "radiodeep.cli", "run", str(path), "--only", "extract"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    while proc.poll() is None and len(workers) < 2:
        time.sleep(0.02)
        workers = psutil.Process(proc.pid).children(recursive=True)
    time.sleep(0.5)  # let them work
    t0 = time.perf_counter()
    os.kill(proc.pid, sig)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    dt = time.perf_counter() - t0
    for p in alive:
        p.kill()
    return dt, len(alive)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = study(Path(tmp), args.cases)
        for name in ("SIGKILL", "SIGTERM"):
            runs = [survival(path, getattr(signal, name)) for _ in range(args.repeats)]
            worst = max(dt for dt, _ in runs)
            left = sum(n for _, n in runs)
            print(f"{name} to the parent: workers gone {worst:.2f} s later at worst "
                  f"({args.repeats} runs, {left} survived 30 s)")
        out = Path(tmp) / "lock"
        t0 = time.perf_counter()
        n = 200
        for _ in range(n):
            with OutputLock(out):
                pass
        print(f"output lock: {1e3 * (time.perf_counter() - t0) / n:.2f} ms to take and release")


if __name__ == "__main__":
    main()
