"""Experiment config -> the learned estimator; checks before any training; the cost estimate.

Hooked into :func:`radiodeep.pipeline.evaluate_experiments` (experiments whose classifier is a
learned one) and :func:`radiodeep.validate.check_routes` (settings checked before any case is
read: backbone, weights on this machine, layer, input size, device).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from .schema import is_learned

__all__ = ["build_learned", "check_learned", "cost_estimate", "fold_sizes"]

log = logging.getLogger(__name__)


def _seed(exp, config) -> int:
    s = exp.classifier.seed
    return int(config.evaluation.seed if s is None else s)


def _cnn(exp, config, X: pd.DataFrame | None):
    from .audit import tensor_hash
    from .estimator import CNNClassifier
    from .networks import FineTuneNet
    from .route import input_shape

    c = exp.classifier
    shape = input_shape(config)
    ids = None
    if X is not None:  # hash -> case id, so the audit names the training cases of every fold
        vals = X.to_numpy(dtype=np.float32)
        ids = {tensor_hash(v.reshape(shape)): str(cid) for v, cid in zip(vals, X.index)}
    sched = None if c.lr_schedule is None else (c.lr_schedule.step, c.lr_schedule.gamma)
    return CNNClassifier(
        module=FineTuneNet,
        module_params={"backbone": c.backbone, "weights": c.weights, "n_classes": 2, "freeze": c.freeze,
                       "base_dir": str(config.base_dir)},
        input_shape=shape, epochs=c.epochs, lr=c.lr, lr_schedule=sched, optimizer=c.optimizer,
        momentum=c.momentum, weight_decay=c.weight_decay, batch_size=c.batch_size,
        augment=None if c.augment is None else c.augment.model_dump(mode="json"),
        seed=_seed(exp, config), device=c.device, train_split=c.train_split, threads=c.threads,
        audit_dir=str(config.output_dir / "audit"), audit_name=exp.name, audit_ids=ids,
        progress=bool(config.execution.progress))


def build_learned(exp, config, X: pd.DataFrame | None = None) -> Pipeline:
    """The ``Pipeline`` of a learned experiment (``cnn_finetune``: the CNN alone;
    ``cnn_finetune_features``: fine-tuned layer -> the experiment's selector -> ``then``)."""
    if exp.classifier.name in ("cnn_scratch", "cnn_ensemble"):  # radiodeep/learned/scratch.py
        from .scratch import build_scratch

        return build_scratch(exp, config, X)
    cnn = _cnn(exp, config, X)
    if exp.classifier.name == "cnn_finetune":
        return Pipeline([("clf", cnn)])
    from ..experiment import build_classifier, build_selector
    from .features import FineTunedFeatures

    c = exp.classifier
    steps = [("finetune", FineTunedFeatures(cnn, layer=c.layer, activation=c.activation))]
    sel = build_selector(exp.select, {"image": []}, _seed(exp, config))
    if sel is not None:
        steps.append(("select", sel))
    clf = build_classifier(c.then, _seed(exp, config))
    steps += clf.steps if isinstance(clf, Pipeline) else [("clf", clf)]
    return Pipeline(steps)


def fold_sizes(evaluation, y: pd.Series, split: pd.Series | None = None) -> list[int]:
    """Number of training cases of each fold the evaluation scheme will make."""
    n = len(y)
    if evaluation.scheme == "loo":
        return [n - 1] * n
    if evaluation.scheme == "repeated_kfold":
        k = evaluation.folds
        return [n - (n // k + (1 if i < n % k else 0)) for i in range(k)] * evaluation.repeats
    if split is None:
        return [n]
    return [int((split.reindex(y.index).astype(str) == str(evaluation.train_split)).sum())]


def cost_estimate(exp, config, y: pd.Series, split: pd.Series | None = None) -> dict:
    """Folds x epochs x training images, and a check that every fold can fill a batch."""
    c = exp.classifier
    sizes = fold_sizes(config.evaluation, y, split)
    grid = 1
    if c.augment is not None and c.augment.mode in ("grid", "circle"):
        from .augment import parse_augment

        aug = parse_augment(c.augment.model_dump(mode="json"))
        grid = aug.grid_size() if aug is not None else 1
    if c.train_split:  # the inner split takes whole cases, before augmentation (train_test_split's count)
        sizes_train = [s - int(math.ceil(c.train_split * s)) for s in sizes]
    else:
        sizes_train = sizes
    images = [s * grid for s in sizes_train]
    smallest = min(images)
    if c.batch_size > smallest:
        raise ValueError(f"batch_size {c.batch_size} is larger than the {smallest} training images of the "
                         f"smallest fold ({min(sizes)} cases, {len(y)} in the cohort, scheme "
                         f"{config.evaluation.scheme}); set batch_size to at most {smallest}")
    members = 1
    if c.name == "cnn_ensemble":  # architectures x seeds networks per fold
        members = len(c.architectures) * (c.seeds if isinstance(c.seeds, int) else len(c.seeds))
    net = getattr(c, "backbone", None) or getattr(c, "architecture", None) or "+".join(
        str(a.get("name") if isinstance(a, dict) else a) for a in getattr(c, "architectures", []))
    total = int(sum(images) * c.epochs * members)
    return {"folds": len(sizes), "epochs": c.epochs, "training_images_per_fold": max(images),
            "image_passes": total,
            "members": members,
            "text": f"experiment {exp.name}: {len(sizes)} folds x {c.epochs} epochs x {max(images)} training images"
                    + (f" x {members} networks" if members > 1 else "")
                    + f" = {total:,} forward+backward passes of {net} at {config.roi.size}x{config.roi.size}"}


def check_learned(config) -> list[str]:
    """Problems of the learned experiments' settings that show before any case is read."""
    problems = []
    seen = set()
    for i, exp in enumerate(config.experiments):
        if not is_learned(exp):
            continue
        c = exp.classifier
        where = f"experiments[{i}] ({exp.name}).classifier"
        if c.name in ("cnn_scratch", "cnn_ensemble"):  # radiodeep/learned/scratch.py
            from .scratch import scratch_problems

            problems += scratch_problems(exp, config, where)
            continue
        from ..features.backbones import get_spec, resolve_layer, resolve_weights

        try:
            spec = get_spec(c.backbone)
        except ValueError as err:
            problems.append(f"{where}.backbone: {err}")
            continue
        if spec.family == "matconvnet":
            problems.append(f"{where}.backbone: {c.backbone} is read from a MatConvNet file and cannot be "
                            "fine-tuned here; use a torchvision or timm backbone (alexnet is its closest relative)")
            continue
        if config.roi.size < spec.min_size:
            problems.append(f"roi.size: {config.roi.size} is too small for {c.backbone} (at least {spec.min_size} pixels)")
        if c.name == "cnn_finetune_features":
            try:
                resolve_layer(spec, c.layer, c.activation)
            except ValueError as err:
                problems.append(f"{where}.layer: {err}")
        if c.freeze not in ("none", "features") and c.freeze not in spec.layers and "." not in c.freeze \
                and not c.freeze.isidentifier():
            problems.append(f"{where}.freeze: {c.freeze!r} is not none, features, an alias or a module path")
        if c.device == "cuda" and config.execution.backend != "dask":  # on Dask: the workers' GPUs
            import torch

            if not torch.cuda.is_available():
                problems.append(f"{where}.device: 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")
        key = (c.backbone, c.weights)
        if key in seen:
            continue
        seen.add(key)
        try:
            resolve_weights(c.backbone, c.weights, config.base_dir)
        except (ValueError, FileNotFoundError) as err:
            problems.append(f"{where}.weights: {err}")
    return problems
