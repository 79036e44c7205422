"""Benchmark of the learned route: fine-tuning inside leave-one-out folds, against the
forward+backward roofline of the same network measured in the same run.

    uv run python bench/bench_finetune.py            # 40 phantom cases at 224 x 224, 2 folds timed
    uv run python bench/bench_finetune.py --quick    # 1 fold, 1 epoch
    uv run python bench/bench_finetune.py --full     # every one of the 40 folds (the real LOO time)

Prints figures; asserts nothing (not a timed test). For each network (efficientnet_lite0 on its
packaged ImageNet weights; alexnet with random weights: its ImageNet file cannot be fetched here,
and speed does not depend on the weights):

* roofline: forward + backward + SGD step of the same FineTuneNet on one training batch held in
  memory (no data loading, no augmentation, no audit), best of repeated calls, as images/s;
* training: :class:`~radiodeep.learned.estimator.CNNClassifier` ``fit`` on the 39 training
  tensors of a leave-one-out fold (epochs x 39 images; shuffling, batching, the lr schedule,
  skorch's loop), images/s over the epochs' own time, and its share of the roofline
  (target >= 50% on the CPU);
* seconds per fold (the whole fit: network built from the ImageNet weights, hashes, training,
  scoring and auditing the held-out case), and the leave-one-out total (measured with --full,
  else folds x seconds per fold);
* peak memory: the process's peak resident set size (and the GPU's peak allocation there).

The machine may be shared: the figures are then pessimistic.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radiodeep.cohort import read_manifest  # noqa: E402
from radiodeep.config import parse_config  # noqa: E402
from radiodeep.features.routes import RunContext  # noqa: E402
from radiodeep.learned import route as image_route  # noqa: E402
from radiodeep.learned.estimator import CNNClassifier, pick_device  # noqa: E402
from radiodeep.learned.networks import FineTuneNet  # noqa: E402
from radiodeep.synth import make_cohort  # noqa: E402

NETWORKS = (("efficientnet_lite0", "IMAGENET1K_V1"), ("alexnet", None))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def cohort_tensors(n: int, size: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image route's tensors of an n-case phantom cohort (through the ROI stage)."""
    manifest = make_cohort(folder / "cohort", n_cases=n, seed=0, modality="mr")
    cfg = parse_config({"cohort": {"manifest": str(manifest), "positive_label": "short"},
                        "roi": {"slice": "largest", "crop": "exact", "margin_px": 4, "size": size,
                                "intensity": {"modality": "MR"}},
                        "features": {"image": {"channels": "grey3"}}}, base_dir=folder)
    cohort, _ = read_manifest(manifest, positive_label="short")
    res = image_route.extract(cohort, image_route.settings_from_config(cfg),
                              RunContext(folder / "cache", progress=False))
    x = np.array(res.features.to_numpy(np.float32).reshape(-1, 3, size, size))  # writable, contiguous
    y = cohort.y().loc[res.features.index].to_numpy()
    return x, y


def roofline(backbone, weights, x, batch_size, device, min_time) -> float:
    """Images/s of forward + backward + SGD step on one in-memory batch (best call)."""
    torch.manual_seed(0)
    net = FineTuneNet(backbone, weights).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-5, momentum=0.9)
    batch_size = min(batch_size, len(x))
    xb = torch.from_numpy(x[:batch_size]).to(device)
    yb = torch.arange(batch_size, device=device) % 2
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(net(xb), yb).backward()
        opt.step()

    step()  # warm-up
    sync(device)
    best, spent, reps = float("inf"), 0.0, 0
    while spent < min_time or reps < 3:
        t = time.perf_counter()
        step()
        sync(device)
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return batch_size / best


def one_fold(backbone, weights, x, y, q, epochs, batch_size, device, out) -> dict:
    tr = np.delete(np.arange(len(x)), q)
    est = CNNClassifier(FineTuneNet, {"backbone": backbone, "weights": weights}, epochs=epochs, lr=1e-5,
                        batch_size=batch_size, seed=0, device=device, audit_dir=str(out), audit_name=backbone)
    t = time.perf_counter()
    est.fit(x[tr], y[tr])
    est.predict_proba(x[q:q + 1])
    wall = time.perf_counter() - t
    train_s = float(sum(est.net_.history[:, "dur"]))
    return {"wall": wall, "train_s": train_s, "images": len(tr) * epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 fold, 1 epoch")
    ap.add_argument("--full", action="store_true", help="time every fold of the leave-one-out")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=None, help="default 2 (--quick: 1)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--networks", default=",".join(n for n, _ in NETWORKS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    epochs = args.epochs or (1 if args.quick else 2)
    n_folds = args.cases if args.full else (1 if args.quick else 2)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        x, y = cohort_tensors(args.cases, args.size, tmp)
        print(f"cohort: {len(x)} phantom cases, tensors {tuple(x.shape[1:])} through the ROI stage "
              f"({time.perf_counter() - t:.1f} s); LOO: {len(x)} folds x {epochs} epochs x {len(x) - 1} images")
        weights_of = dict(NETWORKS)
        for backbone in args.networks.split(","):
            weights = weights_of.get(backbone)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            roof = roofline(backbone, weights, x, args.batch_size, device, min_time=1.0 if args.quick else 3.0)
            folds = [one_fold(backbone, weights, x, y, q, epochs, args.batch_size, device, tmp / "audit")
                     for q in range(n_folds)]
            wall = float(np.mean([f["wall"] for f in folds]))
            ips = sum(f["images"] for f in folds) / sum(f["train_s"] for f in folds)
            total = sum(f["wall"] for f in folds) if args.full else wall * len(x)
            gpu = (f", GPU peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
                   if device.type == "cuda" else "")
            print(f"{backbone:<19} weights {weights or 'random'}: roofline (fwd+bwd+step, batch {args.batch_size}) "
                  f"{roof:7.1f} img/s | training {ips:7.1f} img/s = {100 * ips / roof:5.1f}% of roofline | "
                  f"{wall:6.1f} s per fold ({n_folds} timed) | LOO {len(x)} folds "
                  f"{'measured' if args.full else 'estimated'} {total / 60:6.1f} min | peak RSS {peak_rss_mb():.0f} MB{gpu}")


if __name__ == "__main__":
    main()
