"""Benchmark of CNNs trained from scratch (issue 14): usf1 training throughput against the same
network's own roofline, seconds per epoch of the published augmentation, and a 3 x 3 ensemble on a
phantom pair (train cohort 1 -> test cohort 2).

    uv run python bench/bench_cnn.py            # full run (the ensemble at published settings: long on a CPU)
    uv run python bench/bench_cnn.py --quick    # shorter: a part of the epoch, a small ensemble

Prints figures; asserts nothing (not a timed test).

* **roofline**: forward + backward + Adam step of ``usf1`` (100 x 100, 2 channels, batch 64) on one
  fixed batch in a bare loop: what this machine does with this network when nothing else runs.
  **training**: the same network trained by ``CNNClassifier.fit`` (skorch: shuffling, batching,
  the loss, the L2 hook, the finiteness check), measured alternately with the roofline in the
  same window (best of the repeats: other processes only ever slow a run down). Target: >= 50%.
* **epoch**: one epoch of 40 cases x 72 images (24 rotations x 3 flips of 142 x 142 crops, the
  network's 100 x 100 centre), augmentation included (``--quick``: 10 cases, scaled to 40).
* **ensemble**: usf1/usf2/usf3 x 3 seeds trained on phantom cohort 1 (50 cases), tested on
  cohort 2 (50 cases, another scanner: noise, kernel, spacing), through ``radiodeep run``: AUC
  of each member and of the average, median and vote (``--quick``: 20 + 20 cases, 32 x 32
  inputs, 8 images per case, 3 epochs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import forward_flops, parse_torch_args, print_header  # noqa: E402 - bench/ is on sys.path when a script runs
from radiodeep.learned.rotations import rotation_crop_side  # noqa: E402
from radiodeep.learned.scratch import ScratchNet, scratch_classifier  # noqa: E402


def flops_per_image(net: torch.nn.Module, channels: int, size: int) -> float:
    """Forward FLOPs per image (2 x multiply-accumulates of convolutions and linear layers)."""
    return forward_flops(net, lambda: net.eval()(torch.zeros(1, channels, size, size)))


def roofline_step(channels: int, size: int, batch: int):
    """One bare forward+backward+Adam step of usf1 on a fixed batch (the network's own ceiling)."""
    torch.manual_seed(0)
    net = ScratchNet("usf1", in_channels=channels, input_size=size).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, channels, size, size)
    y = torch.randint(0, 2, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return step, net


def bench_throughput(quick: bool, channels: int = 2, size: int = 100, batch: int = 64) -> dict:
    step, net = roofline_step(channels, size, batch)
    n_batches = 2 if quick else 8
    rng = np.random.default_rng(0)
    X = rng.random((batch * n_batches, channels, size, size), dtype=np.float32)
    y = np.tile([0, 1], len(X) // 2)
    est = scratch_classifier("usf1", channels, size, seed=0, epochs=1, batch_size=batch, device="cpu")
    est.fit(X[:batch * 2], y[:batch * 2])  # warm-up (allocator, skorch imports)
    step()
    best_roof = best_train = float("inf")
    reps = 2 if quick else 3
    for _ in range(reps):  # alternate: both see the same machine load
        t = time.perf_counter()
        for _ in range(n_batches):
            step()
        best_roof = min(best_roof, time.perf_counter() - t)
        t = time.perf_counter()
        est.fit(X, y)
        best_train = min(best_train, time.perf_counter() - t)
    fl = flops_per_image(net, channels, size)
    return {"roofline_img_s": len(X) / best_roof, "train_img_s": len(X) / best_train,
            "ratio": best_roof / best_train, "gflop_s_roof": 3 * fl * len(X) / best_roof / 1e9,
            "fwd_mflop": fl / 1e6}


def bench_stacked(device: torch.device, quick: bool, n_members: int = 3, channels: int = 2, size: int = 100,
                  batch: int = 64) -> dict:
    """Several members trained at once (``torch.func``: stacked parameters, ``vmap`` over members)
    against the same members one at a time: members x images per second, same batches."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    torch.manual_seed(0)
    nets = [ScratchNet("usf1", in_channels=channels, input_size=size).to(device) for _ in range(n_members)]
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]

    def one_at_a_time():
        for net, opt in zip(nets, opts):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

    params, buffers = stack_module_state(nets)
    params = {k: v.detach().requires_grad_(False) for k, v in params.items()}
    base = nets[0]

    def loss_of(p, b):
        return loss_fn(functional_call(base, (p, b), (x,)), y)

    step_all = vmap(grad_and_value(loss_of), randomness="different")  # dropout: own draws per member
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)

    def stacked():
        grads, _ = step_all(params, buffers)
        for k, v in params.items():
            v.grad = grads[k]
        opt.step()

    def timed(fn):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = float("inf")
        for _ in range(2 if quick else 4):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    # the L2 gradient hooks of ScratchNet live on the modules' own parameters: the stacked copy
    # has none, so both sides are timed without them (one_at_a_time's hooks cost ~nothing)
    t_seq, t_stack = timed(one_at_a_time), timed(stacked)
    return {"members": n_members, "seq_img_s": n_members * batch / t_seq, "stack_img_s": n_members * batch / t_stack}


def bench_epoch(quick: bool, channels: int = 2, size: int = 100, batch: int = 64) -> dict:
    n_cases = 10 if quick else 40
    side = rotation_crop_side(size)
    rng = np.random.default_rng(1)
    X = rng.random((n_cases, channels, side, side), dtype=np.float32)
    y = np.tile([0, 1], n_cases // 2)
    aug = {"mode": "circle", "rotate_deg": 15, "flip": ["horizontal", "vertical"]}
    est = scratch_classifier("usf1", channels, size, seed=0, epochs=1, batch_size=batch, device="cpu", augment=aug)
    t = time.perf_counter()
    est.fit(X, y)
    sec = time.perf_counter() - t
    return {"cases": n_cases, "images": est.n_training_images_, "seconds": sec,
            "seconds_per_epoch_40x72": sec * 40 / n_cases}


def bench_ensemble(quick: bool, workdir: Path) -> tuple[str, float]:
    from radiodeep.config import parse_config
    from radiodeep.pipeline import run
    from radiodeep.synth import make_cohort_pair

    n = 20 if quick else 50
    manifest = make_cohort_pair(workdir / "pair", n_train=n, n_test=n, seed=0)
    size = 32 if quick else 100
    clf = {"name": "cnn_ensemble", "architectures": ["usf1", "usf2", "usf3"], "seeds": 3, "combine": "all",
           "input_size": size, "channels": [0, 1], "epochs": 3 if quick else 20, "batch_size": 64, "lr": 1e-3,
           "device": "cpu",
           "augment": {"mode": "circle", "rotate_deg": 90 if quick else 15, "flip": ["horizontal", "vertical"]}}
    if not quick:
        clf.update(train_split=0.3, early_stopping=5)
    side = rotation_crop_side(size)
    cfg = parse_config({
        "name": "bench-ensemble",
        "cohort": {"manifest": str(manifest), "positive_label": "short"},
        "roi": {"slice": "largest", "crop": "window", "window_px": int(round(50 * side / 100)), "size": side,
                "intensity": {"modality": "CT"}},
        "features": {"image": {"channels": "ct_windows"}},
        "experiments": [{"name": "ens", "features": ["image"], "classifier": clf}],
        "evaluation": {"scheme": "external", "train_split": "train", "test_split": "test", "seed": 0},
        "output": str(workdir / "out"),
        "execution": {"n_jobs": 1, "progress": False},
    })
    t = time.perf_counter()
    res = run(cfg)
    sec = time.perf_counter() - t
    if res.experiment_errors:
        return f"ensemble failed: {res.experiment_errors}", sec
    m = res.metrics.set_index("experiment")
    lines = [f"{'network / combination':<22} {'AUC':>6} {'accuracy':>9}"]
    for name in m.index:
        lines.append(f"{name:<22} {m.loc[name, 'auc']:>6.3f} {m.loc[name, 'accuracy']:>9.3f}")
    d = res.delong
    vs = d[(d.experiment_a == "ens") & d.experiment_b.str.startswith("ens/")]
    if len(vs):
        lines.append("DeLong, average vs each member: p = " + ", ".join(
            f"{b.split('/')[1]} {p:.3f}" for b, p in zip(vs.experiment_b, vs.p)))
    return "\n".join(lines), sec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a part of the epoch, a small ensemble")
    ap.add_argument("--skip-ensemble", action="store_true")
    args = parse_torch_args(ap, argv)
    quick = args.quick
    print_header("CNN-from-scratch benchmark", quick)

    r = bench_throughput(quick)
    print(f"\nusf1, 2 x 100 x 100, batch 64, CPU ({r['fwd_mflop']:.0f} MFLOP forward per image)")
    print(f"  roofline (bare forward+backward+Adam): {r['roofline_img_s']:8.1f} images/s "
          f"(~{r['gflop_s_roof']:.1f} GFLOP/s, counting backward as 2x forward)")
    print(f"  training (CNNClassifier.fit, skorch):  {r['train_img_s']:8.1f} images/s = "
          f"{100 * r['ratio']:.0f}% of the roofline (target >= 50%)")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        st = bench_stacked(dev, quick)
        print(f"\n{st['members']} usf1 members on {dev.type}, batch 64: one at a time {st['seq_img_s']:.1f} "
              f"member-images/s; stacked (torch.func vmap) {st['stack_img_s']:.1f} "
              f"({st['stack_img_s'] / st['seq_img_s']:.2f}x)")

    e = bench_epoch(quick)
    print(f"\none epoch, usf1, published augmentation (142 crops -> 100 centre, 72 per case): "
          f"{e['cases']} cases = {e['images']} images in {e['seconds']:.1f} s")
    print(f"  seconds per epoch for 40 cases x 72: {e['seconds_per_epoch_40x72']:.1f}"
          + (" (scaled from 10 cases)" if quick else ""))

    if not args.skip_ensemble:
        with tempfile.TemporaryDirectory(prefix="radiodeep-bench-cnn-") as tmp:
            text, sec = bench_ensemble(quick, Path(tmp))
        n = 20 if quick else 50
        print(f"\n3 x 3 ensemble (usf1, usf2, usf3 x 3 seeds), phantom cohort 1 ({n}) -> cohort 2 ({n}), "
              f"{'32 x 32, 8 images per case, 3 epochs' if quick else '100 x 100, 72 per case, 20 epochs, 70/30 early stop'}: "
              f"{sec:.0f} s in all")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
