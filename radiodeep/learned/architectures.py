"""Small CNNs trained from scratch: the published screening-nodule networks and a registry.

Built-ins (input ``size`` × ``size``, ``in_channels`` channels, published at 100 × 100):

``usf1``
    conv 64 × 5×5 (pad 0, stride 1) → leaky ReLU 0.01 → max-pool 3×3/3 → conv 64 × 2×2 →
    leaky ReLU 0.01 → max-pool 3×3/3 → dropout 0.1 → FC 128 + ReLU → FC 8 + ReLU (L2 0.01) →
    dropout 0.25 → one output (a logit; the published sigmoid is applied by the loss).
    841,681 parameters with 3 input channels, 840,081 with 2.
``usf2``
    ``usf1`` with an 8-unit LSTM (one time step, the FC-128 output as its input) in place of
    the 8-unit FC layer: 845,033 parameters with 3 channels. Keras' LSTM has one bias vector
    per gate; PyTorch's has two (``bias_ih`` and ``bias_hh``), so ``bias_hh`` is kept at zero
    and not trained: the trainable count is Keras' count.
``usf3``
    NOT a published network: the paper only says it is "a little larger". Ours is ``usf1`` with
    a 3×3 second convolution and 160 units in the first FC layer (1,067,249 parameters with 3
    channels, 1,065,649 with 2).

``n_outputs=1`` (default) gives one logit per case (binary cross-entropy on a sigmoid, as
published); ``n_outputs=2`` gives two logits (softmax / cross-entropy).

**L2 0.01.** Keras adds ``0.01 · Σw²`` of the 8-unit layer's kernel to the loss, i.e.
``0.02 · w`` to its gradient: the same as PyTorch's ``weight_decay=0.02`` on that weight alone
(coupled L2, as in Adam/SGD's ``weight_decay``, not AdamW's decoupled decay). Each built-in
names those weights in :attr:`weight_decay` (``{parameter name: decay}``); the estimator turns it
into optimiser parameter groups (skorch: ``optimizer__param_groups``). ``usf2`` carries it on the
LSTM's input kernel (Keras' ``kernel_regularizer``).

Any user module works the same way: ``"package.module:Class"``; its constructor is given
``in_channels``, ``size`` and ``n_outputs`` where it accepts them.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["USF1", "USF2", "USF3", "ARCHITECTURES", "resolve_architecture", "build_architecture",
           "expected_input_size", "check_input_size", "trainable_parameters", "ArchitectureError"]


class ArchitectureError(ValueError):
    """An architecture cannot be found, built or fed the configured input."""


def _pooled(size: int, kernel: int, conv_k2: int) -> int:
    """Spatial side after conv(kernel) → pool 3/3 → conv(conv_k2) → pool 3/3."""
    s = size - kernel + 1
    s = (s - 3) // 3 + 1
    s = s - conv_k2 + 1
    s = (s - 3) // 3 + 1
    return s


class _USFBase(nn.Module):
    """Two conv blocks and a dense head; subclasses choose the head's 8-unit layer."""

    conv2_kernel = 2
    hidden = 128
    #: smallest input side the conv stack accepts
    min_size = 1

    def __init__(self, in_channels: int = 2, size: int = 100, n_outputs: int = 1):
        super().__init__()
        if n_outputs not in (1, 2):
            raise ArchitectureError(f"n_outputs must be 1 (sigmoid) or 2 (softmax), got {n_outputs}")
        side = _pooled(size, 5, self.conv2_kernel)
        if side < 1:
            raise ArchitectureError(
                f"{type(self).__name__.lower()} needs inputs of at least {self.smallest_size()}×"
                f"{self.smallest_size()} pixels, got {size}×{size}")
        self.in_channels, self.input_size, self.n_outputs = in_channels, size, n_outputs
        self.conv1 = nn.Conv2d(in_channels, 64, 5)
        self.act1 = nn.LeakyReLU(0.01)
        self.pool1 = nn.MaxPool2d(3, 3)
        self.conv2 = nn.Conv2d(64, 64, self.conv2_kernel)
        self.act2 = nn.LeakyReLU(0.01)
        self.pool2 = nn.MaxPool2d(3, 3)
        self.drop1 = nn.Dropout(0.1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * side * side, self.hidden)
        self.act3 = nn.ReLU()
        self._head8()
        self.drop2 = nn.Dropout(0.25)
        self.out = nn.Linear(8, n_outputs)

    @classmethod
    def smallest_size(cls) -> int:
        s = 1
        while _pooled(s, 5, cls.conv2_kernel) < 1:
            s += 1
        return s

    def _head8(self) -> None:
        self.fc2 = nn.Linear(self.hidden, 8)
        self.act4 = nn.ReLU()
        self.weight_decay = {"fc2.weight": 0.02}

    def _eight(self, h: torch.Tensor) -> torch.Tensor:
        return self.act4(self.fc2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(self.act1(self.conv1(x)))
        h = self.pool2(self.act2(self.conv2(h)))
        h = self.act3(self.fc1(self.flatten(self.drop1(h))))
        return self.out(self.drop2(self._eight(h)))


class USF1(_USFBase):
    """Published ``usf1`` (see the module docstring)."""


class _KerasLSTM(nn.LSTM):
    """``nn.LSTM`` with Keras' parameter set: ``bias_hh`` fixed at zero, not trained."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, batch_first=True)
        for name, p in self.named_parameters():
            if name.startswith("bias_hh"):
                with torch.no_grad():
                    p.zero_()
                p.requires_grad_(False)


class USF2(_USFBase):
    """Published ``usf2``: an 8-unit LSTM in place of the 8-unit FC layer."""

    def _head8(self) -> None:
        self.lstm = _KerasLSTM(self.hidden, 8)
        self.weight_decay = {"lstm.weight_ih_l0": 0.02}

    def _eight(self, h: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(h.unsqueeze(1))  # one time step: (N, 1, 128) -> (N, 1, 8)
        return out[:, -1]


class USF3(_USFBase):
    """``usf3``: our choice of "a little larger" (3×3 second conv, 160 hidden); NOT published."""

    conv2_kernel = 3
    hidden = 160


ARCHITECTURES: dict[str, type[nn.Module]] = {"usf1": USF1, "usf2": USF2, "usf3": USF3}


def resolve_architecture(name: str) -> Callable[..., nn.Module]:
    """A built-in by name, or a user module class by ``package.module:Class``."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if ":" not in name:
        raise ArchitectureError(f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)} "
                                "or give a module class as 'package.module:Class'")
    mod_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise ArchitectureError(f"architecture {name!r}: cannot import module {mod_name!r} ({err})") from err
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ArchitectureError(f"architecture {name!r}: module {mod_name!r} has no {attr!r}")
    if not callable(obj):
        raise ArchitectureError(f"architecture {name!r} is not a class or factory")
    return obj


def build_architecture(name: str, in_channels: int = 2, size: int = 100, n_outputs: int = 1,
                       **kwargs) -> nn.Module:
    """Instantiate an architecture; a user class gets the keyword arguments it accepts."""
    factory = resolve_architecture(name)
    offered = {"in_channels": in_channels, "size": size, "n_outputs": n_outputs, **kwargs}
    try:
        sig = inspect.signature(factory)
        named = {k: v for k, v in offered.items() if k in sig.parameters}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        named, takes_any = {}, False
    tries = [offered, named] if takes_any else [named]
    for i, args in enumerate(tries):
        try:
            module = factory(**args)
            break
        except TypeError as err:  # **kwargs that do not take ours: retry with the named ones
            if i == len(tries) - 1:
                raise ArchitectureError(f"architecture {name!r} cannot be built: {err}") from err
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"architecture {name!r} gave {type(module).__name__}, not a torch nn.Module")
    return module


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def expected_input_size(module: nn.Module) -> int | None:
    """The input side a module declares (``input_size`` attribute), if any."""
    size = getattr(module, "input_size", None)
    return int(size) if isinstance(size, int) else None


def check_input_size(module: nn.Module, name: str, channels: int, size: int, where: str = "roi.size",
                     n_outputs: tuple[int, ...] | None = (1, 2)) -> None:
    """Fail, before any training, when the network cannot take ``channels`` × ``size`` × ``size``.

    A module that declares ``input_size`` must match it exactly; any module must accept a dry
    forward pass of one zero image of that shape (in eval mode, without gradients).
    """
    declared = expected_input_size(module)
    if declared is not None and declared != size:
        raise ArchitectureError(
            f"architecture {name} expects {declared}×{declared} inputs but the ROI stage gives "
            f"{size}×{size} ({where}: {size}); set {where}: {declared}, or build the network for {size}")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            param = next(module.parameters(), None)
            dev = param.device if param is not None else torch.device("cpu")
            out = module(torch.zeros(1, channels, size, size, device=dev))
    except Exception as err:  # noqa: BLE001 - any failure is a size/shape mismatch to report
        raise ArchitectureError(
            f"architecture {name} cannot take {channels}-channel {size}×{size} inputs from the ROI "
            f"stage ({where}: {size}): {err}") from err
    finally:
        module.train(was_training)
    if n_outputs is not None and (out.ndim != 2 or out.shape[0] != 1 or out.shape[1] not in n_outputs):
        raise ArchitectureError(f"architecture {name} must return (N, 1) or (N, 2) logits; "
                                f"it returned shape {tuple(out.shape)}")


def crop_for_rotation(size: int) -> int:
    """Side of the crop to rotate so that a centred ``size`` cut never reaches the corners."""
    return int(math.ceil(size * math.sqrt(2.0)))
