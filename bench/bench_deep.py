"""Benchmark of the deep route: network throughput against this machine's matmul roofline,
the pipeline's cost around the network, and memory as the cohort grows.

    uv run python bench/bench_deep.py            # full run
    uv run python bench/bench_deep.py --quick    # fewer repeats, smaller cohorts

Prints figures; asserts nothing (not a timed test). Targets from issue 5:
* at batch 64 the network's FLOP/s reach >= 60% of the measured fp32 matmul FLOP/s;
* the pipeline around the network (reading, cropping, normalisation, batching,
  writing) adds <= 10% to the network's own time;
* peak memory stays flat as the cohort grows.
alexnet and vgg16 have random weights (their ImageNet files cannot be fetched here; speed
does not depend on them); efficientnet_lite0 runs on its packaged ImageNet weights, up to
its pooled penultimate layer. FLOPs are counted with forward hooks (2 x multiply-accumulates
of every convolution and linear layer up to the tapped layer). EfficientNet-Lite0 is made
of depthwise and 1 x 1 convolutions, which move more bytes per FLOP than a GEMM: its share
of the matmul roofline is expected to be far lower than alexnet's or vgg16's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import forward_flops, parse_torch_args, print_header  # noqa: E402 - bench/ is on sys.path when a script runs
from radiodeep import roi  # noqa: E402
from radiodeep.cohort import read_manifest  # noqa: E402
from radiodeep.config import parse_config  # noqa: E402
from radiodeep.features import deep  # noqa: E402
from radiodeep.features.backbones import feature_extractor, load_backbone  # noqa: E402
from radiodeep.features.store import FeatureStore  # noqa: E402
from radiodeep.synth import make_cohort  # noqa: E402


NETWORKS = (("alexnet", "fc7"), ("vgg16", "fc7"), ("efficientnet_lite0", "penultimate"))


# --------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_best(fn, matmul, device, min_time: float, min_reps: int) -> tuple[float, float]:
    """Best seconds per call of ``fn`` and of ``matmul``, measured alternately in one time window.

    Best, not median: other processes on a shared machine only ever slow a call down; and
    the roofline is taken next to the network, so both see the same machine.
    """
    fn()
    matmul()
    sync(device)
    best_fn = best_mm = float("inf")
    reps = 0
    start = time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        matmul()
        sync(device)
        best_mm = min(best_mm, time.perf_counter() - t)
        t = time.perf_counter()
        fn()
        sync(device)
        best_fn = min(best_fn, time.perf_counter() - t)
        reps += 1
    return best_fn, best_mm


def make_matmul(device: torch.device, n: int):
    """An fp32 n x n matmul and its FLOPs (the roofline: what this machine's GEMM reaches)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return (lambda: torch.matmul(a, b)), 2.0 * n ** 3


def count_flops(model, name: str, layer: str, size: int) -> float:
    """FLOPs per image up to the tapped layer (2 x MACs of conv and linear layers)."""
    extract = feature_extractor(model, name, layer, "post_relu")
    return forward_flops(model, lambda: extract(torch.zeros(1, 3, size, size)))


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def rise(self) -> int:
        return self.peak - self.base


class Timers:
    """Wraps the pipeline's stages (module attributes) to time them in place."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self._undo = []

    def wrap(self, owner, attr: str, label: str, result_wrapper=None):
        original = getattr(owner, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                out = original(*a, **k)
            finally:
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t
            return result_wrapper(out) if result_wrapper else out

        setattr(owner, attr, wrapper)
        self._undo.append((owner, attr, original))

    def callable_timer(self, label: str, device):
        def wrap_fn(fn):
            def timed_fn(*a, **k):
                t = time.perf_counter()
                out = fn(*a, **k)
                sync(device)
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t
                return out
            return timed_fn
        return wrap_fn

    def batch_fill(self, batcher_cls):
        """Time spent filling batches (copy + normalisation), without the network runs inside."""
        add, flush = batcher_cls.add_case, batcher_cls.flush
        inner = [0.0, False]

        def timed_flush(b, *a, **k):
            t = time.perf_counter()
            try:
                return flush(b, *a, **k)
            finally:
                if inner[1]:
                    inner[0] += time.perf_counter() - t

        def timed_add(b, *a, **k):
            inner[0], inner[1] = 0.0, True
            t = time.perf_counter()
            try:
                return add(b, *a, **k)
            finally:
                inner[1] = False
                label = "batch fill (copy + normalise)"
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t - inner[0]

        batcher_cls.add_case, batcher_cls.flush = timed_add, timed_flush
        self._undo += [(batcher_cls, "add_case", add), (batcher_cls, "flush", flush)]

    def undo(self):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


# --------------------------------------------------------------------------- sections
def bench_networks(device, n_mat, batches, min_time, min_reps, formats):
    matmul, mm_flops = make_matmul(device, n_mat)
    print(f"\n## network throughput on {device} (224 x 224, up to fc7 post-ReLU / efficientnet_lite0 penultimate, "
          f"{torch.get_num_threads()} threads)")
    print(f"roofline: fp32 {n_mat} x {n_mat} torch.matmul, timed alternately with each network measurement")
    print(f"{'network':18} {'format':14} {'batch':>5} {'img/s':>8} {'ms/img':>8} {'GFLOP/img':>9} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s':>14} {'of roofline':>11}")
    results = {}
    for name, layer in NETWORKS:
        model, _ = load_backbone(name, "IMAGENET1K_V1" if name.startswith("efficientnet") else None)
        flops = count_flops(model, name, layer, 224)
        model.to(device)
        for fmt in formats:
            memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            model.to(memory_format=memory_format)
            fe = feature_extractor(model, name, layer, "post_relu")
            for b in batches:
                x = torch.rand(b, 3, 224, 224, device=device).contiguous(memory_format=memory_format)
                sec, mm_sec = paired_best(lambda: fe(x), matmul, device, min_time, min_reps)
                ips = b / sec
                roof = mm_flops / mm_sec
                results[(name, fmt, b)] = (flops * ips, roof)
                print(f"{name:18} {fmt:14} {b:5d} {ips:8.1f} {1000 / ips:8.1f} {flops / 1e9:9.2f} "
                      f"{flops * ips / 1e9:8.1f} {roof / 1e9:14.1f} {100 * flops * ips / roof:10.1f}%")
        del model
    best_roof = max(r for _, r in results.values())
    print(f"highest matmul rate seen: {best_roof / 1e9:.1f} GFLOP/s; against it, batch 64 reaches "
          + ", ".join(f"{n} {fmt} {100 * results[(n, fmt, 64)][0] / best_roof:.0f}%"
                      for n, _ in NETWORKS for fmt in formats if (n, fmt, 64) in results))
    return results


def bench_pipeline(manifest: Path, workdir: Path, sizes, batch: int, threads: int | None,
                   backbone: str = "alexnet", n_jobs: int = 1, warm: bool = True):
    """extract_deep on phantom cohorts of growing size: stage times and peak memory."""
    print(f"\n## pipeline: extract_deep, {backbone} fc7, batch {batch}, roi.size 224, phantom CT cohorts, "
          f"execution.n_jobs {n_jobs}")
    import pandas as pd

    full = pd.read_csv(manifest)
    rows = []
    # a warm-up run of one full batch (oneDNN creates its kernels for a batch shape on first use), not reported
    runs = ([(batch, True)] if warm else []) + [(n, False) for n in sizes]
    for n, warm_up in runs:
        man = manifest.parent / f"manifest_{n}.csv"  # beside the images: paths are relative
        full.iloc[:n].to_csv(man, index=False)
        data = {
            "cohort": {"manifest": str(man), "positive_label": "short"},
            "roi": {"size": 224, "crop": "window", "window_px": 56},
            "features": {"deep": {"backbone": backbone, "weights": None, "layer": "fc7", "batch_size": batch,
                                  "device": "cpu", "threads": threads}},
            "output": str(workdir / f"out_{backbone}_{n}_{n_jobs}_{warm_up}"),
            "execution": {"n_jobs": n_jobs, "progress": False},
        }
        config = parse_config(data, base_dir=workdir)
        cohort, _ = read_manifest(man, positive_label="short")
        timers = Timers()
        timers.wrap(deep, "read_case_images", "read")
        timers.wrap(roi, "prepare_case", "roi (crop, window, channels)")
        timers.wrap(FeatureStore, "save", "write (cache)")
        timers.wrap(deep, "load_backbone", "model load (once)")
        timers.batch_fill(deep._Batcher)
        timers.wrap(deep, "feature_extractor", "extractor", timers.callable_timer("network", torch.device("cpu")))
        try:
            with PeakRSS() as mem:
                t = time.perf_counter()
                res = deep.extract_deep(cohort, config, progress=False)
                total = time.perf_counter() - t
        finally:
            timers.undo()
        assert res.features.shape[0] == n, (res, res.failures[:2])
        if warm_up:
            continue
        tt = timers.total
        net = tt.get("network", 0.0)
        load = tt.get("model load (once)", 0.0)
        staged = {k: tt.get(k, 0.0) for k in ("read", "roi (crop, window, channels)", "batch fill (copy + normalise)",
                                         "write (cache)")}
        around = total - load - net
        other = around - sum(staged.values())
        no_read = around - staged["read"]
        rows.append({"backbone": backbone, "n": n, "n_jobs": n_jobs, "net": net, "around": around,
                     "no_read": no_read, "rise": mem.rise})
        print(f"\ncases {n}: total {total:.2f} s = model load {load:.2f} s + network {net:.2f} s "
              f"({n / net:.1f} img/s) + around the network {around:.2f} s")
        if n_jobs == 1:
            for k, v in staged.items():
                print(f"    {k:30} {v:7.3f} s  {100 * v / net:6.1f}% of network time  ({1000 * v / n:6.2f} ms/case)")
            print(f"    {'other (bookkeeping)':30} {other:7.3f} s  {100 * other / net:6.1f}% of network "
                  f"time  ({1000 * other / n:6.2f} ms/case)")
        else:
            print(f"    (reading and cropping ran in {n_jobs} worker processes, beside the network)")
        print(f"  pipeline overhead: {100 * around / net:.1f}% of the network's time"
              + ("" if n_jobs > 1 else f" (without reading the files: {100 * no_read / net:.1f}%)"))
        print(f"  peak memory rise of this process during the run: {mem.rise / 2**20:.0f} MiB "
              f"(all crops of the cohort held at once would be {n * 3 * 224 * 224 * 4 / 2**20:.0f} MiB)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller cohorts")
    ap.add_argument("--skip-network", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    args = parse_torch_args(ap, argv)
    quick = args.quick
    gpu = print_header("deep-route benchmark", quick,
                       f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if gpu else [])

    n_mat = 2048 if quick else 4096
    summary = []
    if not args.skip_network:
        for device in devices:
            formats = ["channels_last"] if quick else ["channels_last", "contiguous"]
            res = bench_networks(device, n_mat, (1, 16, 64), 1.0 if quick else 3.0, 2 if quick else 3, formats)
            for name, _ in NETWORKS:
                net, roof = res[(name, "channels_last", 64)]
                frac = net / roof
                ips = net / count_flops(load_backbone(name, None)[0], name, dict(NETWORKS)[name], 224)
                summary.append(f"{name} batch 64 on {device}: {ips:.1f} images/s, {net / 1e9:.1f} GFLOP/s = {100 * frac:.0f}% of the "
                               f"matmul roofline measured beside it ({roof / 1e9:.1f} GFLOP/s; target >= 60%: "
                               f"{'met' if frac >= 0.6 else 'NOT met'})")
    if not args.skip_pipeline:
        sizes = (64, 192) if quick else (64, 512)
        rows = []
        with tempfile.TemporaryDirectory(prefix="radiodeep-bench-") as tmp:
            manifest = make_cohort(Path(tmp) / "cohort", n_cases=max(sizes), seed=0)
            rows += bench_pipeline(manifest, Path(tmp), sizes, 64, args.threads)
            rows += bench_pipeline(manifest, Path(tmp), sizes[-1:], 64, args.threads, n_jobs=2, warm=False)
            rows += bench_pipeline(manifest, Path(tmp), (16 if quick else 64,), 16, args.threads,
                                   backbone="vgg16", warm=False)
        for r in rows:
            extra = "" if r["n_jobs"] > 1 else f" (without file reading {100 * r['no_read'] / r['net']:.0f}%)"
            summary.append(f"pipeline {r['backbone']}, {r['n']} cases, n_jobs {r['n_jobs']}: overhead "
                           f"{100 * r['around'] / r['net']:.0f}% of network time{extra} (target <= 10%); "
                           f"peak memory rise {r['rise'] / 2**20:.0f} MiB")
        flat = [r for r in rows if r["backbone"] == "alexnet" and r["n_jobs"] == 1]
        if len(flat) >= 2:
            small, large = flat[0], flat[-1]
            summary.append(f"memory: {large['n'] // small['n']}x the cases -> peak rise {small['rise'] / 2**20:.0f} "
                           f"MiB vs {large['rise'] / 2**20:.0f} MiB")
    print("\n## summary")
    for line in summary:
        print(" -", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
