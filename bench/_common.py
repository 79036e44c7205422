"""What the torch benchmarks share: the lines they print first (torch, CPU, threads, load, GPU) and
the FLOP count of a forward pass."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
from typing import Callable

import torch


def parse_torch_args(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse a torch benchmark's arguments, ``--threads`` added; quiet logging; torch's threads set."""
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def print_header(title: str, quick: bool, extra: str = "") -> bool:
    """Print the benchmark's title and the machine it runs on; returns whether a GPU is there."""
    print(f"# radiodeep {title}" + (" (--quick)" if quick else ""))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads" + (f", {extra}" if extra else ""))
    with contextlib.suppress(OSError):
        print("load average at start:", " ".join(f"{v:.2f}" for v in os.getloadavg()),
              "(other processes on this machine skew every figure)")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        return True
    print("GPU: none on this machine (torch.cuda.is_available() is False): GPU figures not measured")
    return False


def forward_flops(model: torch.nn.Module, forward: Callable[[], object]) -> float:
    """FLOPs of the forward pass ``forward()`` runs, per image (2 x the multiply-accumulates of
    the convolutions and linear layers it reaches)."""
    macs = [0]

    def hook(module, args, out):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs[0] += out.numel() // out.shape[0] * k
        elif isinstance(module, torch.nn.Linear):
            macs[0] += out.numel() // out.shape[0] * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return 2.0 * macs[0]
