"""Import a MatConvNet SimpleNN network (``imagenet-vgg-f.mat``, CNN-F) as a torch module.

The published experiments used CNN-F (Chatfield et al., "Return of the devil in the
details", 2014) through MatConvNet. This module reads the ``.mat`` file with
``scipy.io.loadmat`` (no code is run) and mirrors its layers one for one, so its
fc6/fc7 activations can be reproduced:

* ``conv``: ``weights{1}`` is H x W x Cin x Cout (older files: ``filters``/``biases``),
  ``stride`` [sy sx], ``pad`` [top bottom left right]; the fully connected layers are
  convolutions too (fc6 is a 6 x 6 convolution over pool5).
* ``lrn`` (older files: ``normalize``): ``param`` = [N kappa alpha beta],
  y = x / (kappa + alpha * sum over N neighbouring channels of x^2)^beta -- MatConvNet's
  alpha is *not* divided by N, unlike torch's LocalResponseNorm.
* ``pool``: ``method`` max or avg, ``pool`` [h w], ``stride``, ``pad`` (max pooling pads
  with -inf, so padding never wins).
* ``relu``, ``dropout`` (identity at inference), ``softmax``.

Inputs are RGB in the 0-255 range minus ``meta.normalization.averageImage`` (older
files: ``normalization.averageImage``), at ``imageSize`` (224 x 224 for CNN-F).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MatConvNet", "McnConv", "McnLRN", "McnPool", "load_simplenn", "read_simplenn"]


# --------------------------------------------------------------------------- modules
def _pad4(pad) -> tuple[int, int, int, int]:
    """MatConvNet pad (scalar or [top bottom left right]) -> F.pad order (left, right, top, bottom)."""
    p = [int(v) for v in np.atleast_1d(np.asarray(pad, dtype=float)).ravel()] or [0]
    if len(p) == 1:
        p = p * 4
    if len(p) != 4:
        raise ValueError(f"pad must have 1 or 4 values, got {p}")
    top, bottom, left, right = p
    return (left, right, top, bottom)


def _pair(v, name: str) -> tuple[int, int]:
    p = [int(x) for x in np.atleast_1d(np.asarray(v, dtype=float)).ravel()]
    if len(p) == 1:
        p = p * 2
    if len(p) != 2:
        raise ValueError(f"{name} must have 1 or 2 values, got {p}")
    return (p[0], p[1])


class McnConv(nn.Conv2d):
    """A convolution with MatConvNet's (possibly asymmetric) zero padding."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int, int, int], groups: int = 1, dilation: tuple[int, int] = (1, 1)):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, dilation=dilation, bias=True)
        self.mcn_pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.mcn_pad):
            x = F.pad(x, self.mcn_pad)
        return super().forward(x)


class McnLRN(nn.Module):
    """MatConvNet's cross-channel normalisation (vl_nnnormalize)."""

    def __init__(self, n: int, kappa: float, alpha: float, beta: float):
        super().__init__()
        self.n, self.kappa, self.alpha, self.beta = int(n), float(kappa), float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channel window [k - floor((n-1)/2), k + ceil((n-1)/2)], zeros beyond the edges
        before, after = (self.n - 1) // 2, self.n - 1 - (self.n - 1) // 2
        sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, before, after))
        total = F.avg_pool3d(sq, (self.n, 1, 1), stride=1).squeeze(1) * self.n
        return x / (self.kappa + self.alpha * total).pow(self.beta)

    def extra_repr(self) -> str:
        return f"n={self.n}, kappa={self.kappa}, alpha={self.alpha}, beta={self.beta}"


class McnPool(nn.Module):
    def __init__(self, method: str, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int, int, int]):
        super().__init__()
        if method not in ("max", "avg"):
            raise ValueError(f"pooling method {method!r} is not supported (max, avg)")
        if method == "avg" and any(pad):
            raise ValueError("average pooling with padding is not supported")
        self.method, self.kernel, self.stride, self.mcn_pad = method, kernel, stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "max":
            if any(self.mcn_pad):
                x = F.pad(x, self.mcn_pad, value=-math.inf)
            return F.max_pool2d(x, self.kernel, self.stride)
        return F.avg_pool2d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad(l,r,t,b)={self.mcn_pad}"


class MatConvNet(nn.Sequential):
    """A SimpleNN network: children named as in the .mat file (conv1, relu1, ..., fc7, relu7)."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", average_image: torch.Tensor,
                 image_size: tuple[int, int]):
        super().__init__(layers)
        self.register_buffer("average_image", average_image)  # (3, h, w), 0-255 range
        self.image_size = image_size


# --------------------------------------------------------------------------- .mat reading
def _one(x):
    """Unwrap MATLAB's 1x1 cells/structs as scipy returns them (squeeze_me=False)."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def _str(x) -> str:
    x = _one(x)
    if isinstance(x, str):
        return x
    if isinstance(x, np.ndarray):
        if x.size == 0:
            return ""
        return "".join(str(v) for v in x.ravel())
    return str(x)


def _field(struct, name: str, default=None):
    struct = _one(struct)
    if isinstance(struct, dict):
        return struct.get(name, default)
    names = getattr(struct, "_fieldnames", None) or []
    return getattr(struct, name) if name in names else default


def _cell_list(x) -> list:
    if isinstance(x, np.ndarray) and x.dtype == object:
        return [_one(v) for v in x.ravel(order="F")]
    return [x]


def _num(x) -> np.ndarray:
    return np.asarray(_one(x), dtype=np.float64)


def read_simplenn(path: Path | str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The layers of a SimpleNN .mat file as plain dicts, and its normalisation metadata."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(str(path), squeeze_me=False, struct_as_record=False, chars_as_strings=True)
    except NotImplementedError:
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file; save it again with save(..., '-v7') "
                         "or download the SimpleNN imagenet-vgg-f.mat") from None
    except Exception as err:  # noqa: BLE001 - scipy raises several kinds for damaged files
        raise ValueError(f"cannot read MatConvNet file {path}: {type(err).__name__}: {err}") from None
    # the published files are saved with save(..., '-struct', 'net'): layers and meta at the top level
    net = _one(mat["net"]) if "net" in mat else {k: v for k, v in mat.items() if not k.startswith("__")}
    if _field(net, "vars") is not None and _field(net, "params") is not None:
        raise ValueError(f"{path} is a DagNN network; only SimpleNN files (such as imagenet-vgg-f.mat) are supported")
    raw_layers = _field(net, "layers")
    if raw_layers is None:
        raise ValueError(f"{path} holds no MatConvNet network (no 'layers', at the top level or in 'net')")
    layers = []
    for i, raw in enumerate(_cell_list(raw_layers)):
        ltype = _str(_field(raw, "type", "")).lower()
        name = _str(_field(raw, "name", "")) or f"layer{i + 1}"
        entry: dict[str, Any] = {"type": ltype, "name": name}
        if ltype == "conv":
            weights = _field(raw, "weights")
            if weights is not None:
                ws = [np.asarray(w) for w in _cell_list(weights)]
                filt, bias = ws[0], (ws[1] if len(ws) > 1 else None)
            else:
                filt, bias = np.asarray(_one(_field(raw, "filters"))), _field(raw, "biases")
                bias = None if bias is None else np.asarray(_one(bias))
            entry["filters"] = filt
            entry["bias"] = bias
            entry["stride"] = _num(_field(raw, "stride", 1))
            entry["pad"] = _num(_field(raw, "pad", 0))
            entry["dilate"] = _num(_field(raw, "dilate", 1))
        elif ltype in ("lrn", "normalize"):
            entry["type"] = "lrn"
            entry["param"] = _num(_field(raw, "param")).ravel()
        elif ltype == "pool":
            entry["method"] = _str(_field(raw, "method", "max")) or "max"
            entry["pool"] = _num(_field(raw, "pool"))
            entry["stride"] = _num(_field(raw, "stride", 1))
            entry["pad"] = _num(_field(raw, "pad", 0))
        elif ltype == "relu":
            leak = _field(raw, "leak")
            entry["leak"] = float(_num(leak).ravel()[0]) if leak is not None and np.size(_one(leak)) else 0.0
        layers.append(entry)
    norm = _field(_field(net, "meta"), "normalization")
    if norm is None:  # older files: net.normalization
        norm = _field(net, "normalization")
    norm = _one(norm)
    info: dict[str, Any] = {}
    if norm is not None:
        avg = _field(norm, "averageImage")
        info["average_image"] = None if avg is None else np.asarray(_one(avg), dtype=np.float32)
        size = _field(norm, "imageSize")
        if size is not None and np.size(_one(size)):
            info["image_size"] = [int(v) for v in _num(size).ravel()]
        for key in ("interpolation", "keepAspect", "border"):
            v = _field(norm, key)
            if v is not None:
                v = _one(v)
                is_text = isinstance(v, str) or (isinstance(v, np.ndarray) and v.dtype.kind == "U")
                info[key] = _str(v) if is_text else _num(v).ravel().tolist()
    return layers, info


# --------------------------------------------------------------------------- building
def _filters4(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float32)
    if f.ndim > 4:
        raise ValueError(f"conv filters must be 4-D (H x W x Cin x Cout), got shape {f.shape}")
    return f.reshape(f.shape + (1,) * (4 - f.ndim))  # MATLAB drops trailing singleton dimensions


def _average_image(avg: np.ndarray | None) -> torch.Tensor:
    if avg is None or avg.size == 0:
        return torch.zeros(3, 1, 1)
    a = np.asarray(avg, dtype=np.float32)
    if a.size == 3:
        return torch.from_numpy(a.reshape(3, 1, 1).copy())
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"averageImage must be H x W x 3 or 3 values, got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def build_simplenn(layers: list[dict[str, Any]], info: dict[str, Any]) -> MatConvNet:
    modules: "OrderedDict[str, nn.Module]" = OrderedDict()
    channels = 3
    for entry in layers:
        ltype = entry["type"]
        name = base = entry["name"].replace(".", "_")  # a '.' would be read as a module path
        k = 1
        while name in modules:
            k += 1
            name = f"{base}_{k}"
        if ltype == "conv":
            f = _filters4(entry["filters"])
            h, w, cin, cout = f.shape
            if channels % cin:
                raise ValueError(f"layer {name}: filters take {cin} channels but the input has {channels}")
            groups = channels // cin
            conv = McnConv(channels, cout, (h, w), _pair(entry["stride"], "stride"), _pad4(entry["pad"]),
                           groups=groups, dilation=_pair(entry["dilate"], "dilate"))
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(f.transpose(3, 2, 0, 1))))
                b = entry["bias"]
                if b is None or np.size(b) == 0:
                    conv.bias.zero_()
                else:
                    b = np.asarray(b, dtype=np.float32).ravel()
                    if b.size != cout:
                        raise ValueError(f"layer {name}: {b.size} biases for {cout} filters")
                    conv.bias.copy_(torch.from_numpy(b))
            modules[name] = conv
            channels = cout
        elif ltype == "relu":
            modules[name] = nn.LeakyReLU(entry["leak"]) if entry.get("leak") else nn.ReLU()
        elif ltype == "lrn":
            p = entry["param"]
            if p.size != 4:
                raise ValueError(f"layer {name}: lrn param must be [N kappa alpha beta], got {p.tolist()}")
            modules[name] = McnLRN(int(p[0]), p[1], p[2], p[3])
        elif ltype == "pool":
            modules[name] = McnPool(entry["method"], _pair(entry["pool"], "pool"),
                                    _pair(entry["stride"], "stride"), _pad4(entry["pad"]))
        elif ltype == "dropout":
            modules[name] = nn.Identity()
        elif ltype == "softmax":
            modules[name] = nn.Softmax(dim=1)
        else:
            raise ValueError(f"layer {name}: MatConvNet layer type {ltype!r} is not supported "
                             "(conv, relu, lrn/normalize, pool, dropout, softmax)")
    size = info.get("image_size") or [224, 224]
    return MatConvNet(modules, _average_image(info.get("average_image")), (int(size[0]), int(size[1])))


def load_simplenn(path: Path | str) -> tuple[MatConvNet, dict[str, Any]]:
    """Build the network of a SimpleNN .mat file; return it and a summary for provenance."""
    layers, info = read_simplenn(path)
    model = build_simplenn(layers, info)
    model.eval()
    avg = model.average_image
    meta = {
        "layers": [f"{e['name']}:{e['type']}" for e in layers],
        "image_size": list(model.image_size),
        "average_image": ("mean colour " + str([round(float(v), 3) for v in avg.flatten()]))
        if avg.shape[-1] == 1 else f"full image {tuple(avg.shape[1:])}",
    }
    for key in ("interpolation", "keepAspect", "border"):
        if key in info:
            meta[key] = info[key]
    return model, meta
