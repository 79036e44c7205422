"""Networks for the learned route.

A network for :class:`~radiodeep.learned.estimator.CNNClassifier` takes a float32 batch
``(N, C, H, W)`` (the ROI stage's crops, values in [0, 1]) and returns logits ``(N, n_classes)``.

:class:`FineTuneNet` is a backbone of the deep route (``radiodeep.features.backbones``: same
registry, same weights resolution, same "weights not on this machine" message) with its last
linear layer replaced by a fresh one with ``n_classes`` outputs, and the backbone's input
normalisation (ImageNet mean/std, or MatConvNet's average image) as a fixed first step, so the
cached tensors stay backbone-independent. ``freeze`` keeps part of it fixed:
``none`` (train everything), ``features`` (train the new head only) or a layer (an alias such
as ``fc6``, or a module path such as ``layer3``): that layer and every layer before it are
frozen. BatchNorm layers inside the frozen part keep their ImageNet statistics (they stay in
eval mode during training).
"""

from __future__ import annotations

import copy
import functools
import logging

import torch
from torch import nn

__all__ = ["FineTuneNet", "TinyCNN", "head_path"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _pretrained(backbone: str, weights: str | None, base_dir: str | None) -> nn.Module:
    from ..features.backbones import load_backbone

    model, _ = load_backbone(backbone, weights, base_dir)
    return model


def head_path(model: nn.Module) -> str:
    """The module path of the last linear layer (the classification head)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear layer to replace with a {2}-class head")
    return last


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


class FineTuneNet(nn.Module):
    """A deep-route backbone with a new ``n_classes`` head (see the module docstring)."""

    def __init__(self, backbone: str = "alexnet", weights: str | None = "IMAGENET1K_V1", n_classes: int = 2,
                 freeze: str = "none", base_dir: str | None = None):
        super().__init__()
        from ..features.backbones import get_spec, normalisation_affine

        w = None if weights is None else str(weights)
        net = copy.deepcopy(_pretrained(backbone, w, None if base_dir is None else str(base_dir)))
        net.requires_grad_(True)
        self.head = head_path(net)
        old = net.get_submodule(self.head)
        _set_module(net, self.head, nn.Linear(old.in_features, int(n_classes)))  # seeded by the caller
        scale, shift = normalisation_affine(net, backbone)
        self.register_buffer("scale", torch.from_numpy(scale)[None], persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift)[None], persistent=False)
        self.net = net
        self.backbone = backbone
        self.freeze = freeze
        if freeze == "features":
            for name, p in net.named_parameters():
                p.requires_grad_(name.startswith(self.head + "."))
        elif freeze not in (None, "none"):
            spec = get_spec(backbone)
            path = spec.layers[freeze].path if freeze in spec.layers else freeze
            if path == self.head:
                raise ValueError(f"freeze: {freeze!r} is the classification head of {backbone}; use 'features'")
            names = [n for n, _ in net.named_parameters()]
            inside = [i for i, n in enumerate(names) if n == path or n.startswith(path + ".")]
            if not inside:
                mods = [n for n, m in net.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
                from ..config import _suggest

                raise ValueError(f"freeze: {backbone} has no layer with parameters {freeze!r}{_suggest(path, mods)}; "
                                 f"use none, features, an alias {sorted(spec.layers)} or a module path "
                                 f"such as {mods[len(mods) // 2]!r}")
            params = dict(net.named_parameters())
            for n in names[: max(inside) + 1]:
                params[n].requires_grad_(False)
        self._frozen_bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                           and all(not p.requires_grad for p in m.parameters(recurse=False))
                           and any(True for _ in m.parameters(recurse=False))]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_bn:  # frozen BatchNorm keeps its statistics
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale + self.shift)


class TinyCNN(nn.Module):
    """A small CNN (two conv blocks, global average pooling, a linear head): tests, quick runs."""

    def __init__(self, in_channels: int = 3, n_classes: int = 2, width: int = 8, batchnorm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
