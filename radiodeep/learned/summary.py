"""A layer table of a network, like Keras' ``model.summary()``: ``radiodeep describe-model``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .architectures import build_architecture, check_input_size

__all__ = ["LayerRow", "ModelSummary", "summarise", "describe_model"]


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int  # trainable parameters owned by this layer
    frozen: int  # non-trainable parameters owned by this layer


@dataclass(frozen=True)
class ModelSummary:
    name: str
    input_shape: tuple
    rows: list[LayerRow]
    trainable: int
    non_trainable: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def table(self) -> str:
        from tabulate import tabulate

        body = [(r.name, r.kind, _shape(r.output_shape), f"{r.params:,}") for r in self.rows]
        lines = [f"Model: {self.name}   input: {_shape(self.input_shape)}",
                 tabulate(body, headers=["layer", "type", "output shape", "params"],
                          colalign=("left", "left", "left", "right")),
                 f"Total params: {self.total:,}",
                 f"Trainable params: {self.trainable:,}",
                 f"Non-trainable params: {self.non_trainable:,}"]
        return "\n".join(lines)


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def summarise(module: nn.Module, channels: int, size: int, name: str = "") -> ModelSummary:
    """Run one zero image through ``module`` and record each leaf layer's output shape."""
    name = name or type(module).__name__
    check_input_size(module, name, channels, size, where="--size", n_outputs=None)
    shapes: dict[str, tuple] = {}
    hooks = []
    leaves = [(n, m) for n, m in module.named_modules() if n and not any(True for _ in m.children())]
    for n, m in leaves:
        def hook(_m, _inp, out, n=n):
            t = _first_tensor(out)
            if t is not None and n not in shapes:
                shapes[n] = (None, *t.shape[1:])
        hooks.append(m.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, size, size))
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    rows = []
    for n, m in leaves:
        own = list(m.parameters(recurse=False))
        rows.append(LayerRow(n, type(m).__name__, shapes.get(n, ()),
                             sum(p.numel() for p in own if p.requires_grad),
                             sum(p.numel() for p in own if not p.requires_grad)))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return ModelSummary(name, (None, channels, size, size), rows, trainable, frozen)


def describe_model(name: str, channels: int = 2, size: int = 100, n_outputs: int = 1) -> ModelSummary:
    """The summary of a built-in (``usf1``) or user module (``package.module:Class``)."""
    module = build_architecture(name, in_channels=channels, size=size, n_outputs=n_outputs)
    return summarise(module, channels, size, name=name)
