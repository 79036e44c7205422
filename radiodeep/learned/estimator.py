"""A CNN as a scikit-learn classifier, trained with skorch.

:class:`CNNClassifier` follows the estimator contract: the constructor only stores its
parameters, ``clone`` gives an unfitted copy, and every ``fit`` builds a fresh network from
``module(**module_params)`` (skorch receives the module *class* and its ``module__``
parameters, never an instance), so no fold starts from another fold's weights.

The module contract: ``module(**module_params)`` is a ``torch.nn.Module`` whose forward takes a
float32 batch ``(N, C, H, W)`` and returns logits ``(N, n_classes)``, ``n_classes`` being the
number of classes in ``y`` (2 for radiodeep's binary tasks). ``X`` is either ``(n, C, H, W)``
or flat ``(n, C*H*W)`` (a DataFrame row per case: the ``image`` pseudo-route) with
``input_shape=(C, H, W)``.

Honest defaults for small data:

* ``train_split=None``: every training image trains the network (skorch's own default would
  silently hold out 20%); a fraction (e.g. 0.2) asks for a stratified inner validation split;
* BatchNorm: when the training images do not divide into batches evenly and the last batch
  would hold a single image, that batch is dropped each epoch (BatchNorm cannot normalise one
  image; the image is seen in other epochs, as shuffling changes which one is last). BatchNorm
  layers in frozen parts of a network keep their statistics (:mod:`.networks`);
* ``seed``: the network's initialisation, the shuffling and the augmentation come from this
  seed alone (torch's global generator is forked and seeded per fit, shuffling and augmentation
  have their own ``torch.Generator``), so on the CPU the same data give bit-identical
  predictions run to run; fits in one process run one at a time (a lock), so threads cannot
  interleave draws;
* ``device='auto'`` trains on the GPU when torch sees one;
* a loss that is not finite stops training: :class:`TrainingDiverged` names the epoch and
  the learning rate.

Augmentation (:mod:`.augment`) happens inside ``fit`` on the training rows only. Each fit
records the training tensors' hashes (and case ids: ``audit_ids`` maps hash -> case id, or
the DataFrame index is used); with ``audit_dir`` set, scoring held-out rows writes the fold's
audit (:mod:`.audit`).
"""

from __future__ import annotations

import logging
import threading
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, LRScheduler
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset, unpack_data
from skorch.helper import predefined_split
from torch import nn

from .audit import fold_audit, tensor_hashes, write_audit
from .augment import parse_augment

__all__ = ["CNNClassifier", "TrainingDiverged", "pick_device"]

log = logging.getLogger(__name__)

_FIT_LOCK = threading.RLock()  # torch's global generator is shared: one fit at a time per process


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def pick_device(choice: str) -> torch.device:
    if choice in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but torch sees no CUDA device on this machine; use 'auto' or 'cpu'")
    return torch.device(choice)


class _EpochBar(Callback):
    """One progress bar per fit (per fold): epochs, with the last loss."""

    def __init__(self, enabled: bool, desc: str):
        self.enabled, self.desc = enabled, desc

    def on_train_begin(self, net, **kw):
        from ..progress import progress

        self.bar = progress(range(net.max_epochs), total=net.max_epochs, desc=self.desc, enabled=self.enabled)
        self.it = iter(self.bar)

    def on_epoch_end(self, net, **kw):
        next(self.it, None)
        if hasattr(self.bar, "set_postfix"):
            self.bar.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4g}", refresh=False)

    def on_train_end(self, net, **kw):
        if hasattr(self.bar, "close"):
            self.bar.close()

    def __getstate__(self):  # a fitted model pickles (final models): the bar and its iterator do not
        return {k: v for k, v in self.__dict__.items() if k not in ("bar", "it")}


class _Net(NeuralNetClassifier):
    """skorch's classifier with augmentation in the training step and a finiteness check."""

    augment_ = None
    aug_gen_ = None

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        if self.augment_ is not None:
            Xi = self.augment_.random_batch(Xi, self.aug_gen_)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if not torch.isfinite(loss):
            lr = self.optimizer_.param_groups[0]["lr"]
            raise TrainingDiverged(f"training diverged: the loss is {loss.item()} at epoch {len(self.history)} "
                                   f"of {self.max_epochs} (learning rate {lr:g}, {len(Xi)} images in the batch); "
                                   "lower lr or check the inputs")
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}


def _inner_split(y_enc: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of the training fold's cases into (train, validation) indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y_enc))
    tr, va = train_test_split(idx, test_size=frac, stratify=y_enc, random_state=seed)
    return np.sort(tr), np.sort(va)


def _as_step(lr_schedule) -> tuple[int, float] | None:
    if lr_schedule is None:
        return None
    if isinstance(lr_schedule, Mapping):
        unknown = set(lr_schedule) - {"step", "gamma"}
        if unknown:
            raise ValueError(f"lr_schedule: unknown key(s) {sorted(unknown)}; accepted: step, gamma")
        return int(lr_schedule.get("step", 4)), float(lr_schedule.get("gamma", 0.1))
    step, gamma = lr_schedule
    return int(step), float(gamma)


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A CNN trained on images, as a scikit-learn classifier (see the module docstring).

    Parameters: ``module`` (a ``nn.Module`` class or factory) and ``module_params`` (its keyword
    arguments); ``input_shape`` ``(C, H, W)`` for flat rows; ``epochs``; ``lr``; ``lr_schedule``
    (``(step, gamma)`` or ``{step, gamma}``: lr multiplied by gamma every ``step`` epochs; the
    published 4 and 0.1 by default; None: constant); ``optimizer`` (``sgd`` with ``momentum``, or
    ``adam``); ``weight_decay``; ``batch_size``; ``augment`` (mapping, see :mod:`.augment`);
    ``seed``; ``device`` (``auto``/``cpu``/``cuda``); ``train_split`` (None, or the fraction of
    an inner validation split of the training fold's cases, stratified, seeded, made before any
    augmentation); ``early_stopping`` (patience in epochs: stop when the inner validation loss
    has not improved for that many epochs and keep the best epoch's weights; needs
    ``train_split``); ``threads`` (torch CPU threads during the fit); ``audit_dir``,
    ``audit_name``, ``audit_ids`` (the per-fold audit); ``progress`` (a bar per fit).
    """

    def __init__(self, module=None, module_params=None, input_shape=None, epochs: int = 10, lr: float = 1e-5,
                 lr_schedule=(4, 0.1), optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
                 batch_size: int = 16, augment=None, seed: int = 0, device: str = "auto", train_split=None,
                 threads: int | None = None, audit_dir=None, audit_name: str | None = None, audit_ids=None,
                 progress: bool = False, early_stopping: int | None = None):
        self.module = module
        self.module_params = module_params
        self.input_shape = input_shape
        self.epochs = epochs
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.device = device
        self.train_split = train_split
        self.threads = threads
        self.audit_dir = audit_dir
        self.audit_name = audit_name
        self.audit_ids = audit_ids
        self.progress = progress
        self.early_stopping = early_stopping

    # ------------------------------------------------------------------ inputs
    def _images(self, X) -> tuple[np.ndarray, list[str | None] | None]:
        ids = None
        if isinstance(X, pd.DataFrame):
            if not isinstance(X.index, pd.RangeIndex):
                ids = [str(i) for i in X.index]
            X = X.to_numpy()
        x = np.asarray(X, dtype=np.float32)
        if x.ndim == 2:
            if self.input_shape is None:
                raise ValueError("X holds flat rows: set input_shape=(C, H, W)")
            shape = tuple(int(s) for s in self.input_shape)
            if int(np.prod(shape)) != x.shape[1]:
                raise ValueError(f"X rows hold {x.shape[1]} values but input_shape {shape} needs {int(np.prod(shape))}")
            x = x.reshape((len(x),) + shape)
        elif x.ndim != 4:
            raise ValueError(f"X must be (n, C, H, W) or flat (n, C*H*W) rows, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("X holds NaN or infinite values")
        return np.ascontiguousarray(x), ids

    def _ids(self, hashes: list[str], ids: list | None) -> list[str | None]:
        if ids is not None:
            return ids
        lookup = self.audit_ids or {}
        return [lookup.get(h) for h in hashes]

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        if self.module is None:
            raise ValueError("CNNClassifier needs a module (a torch.nn.Module class or factory)")
        x, ids = self._images(X)
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"X has {len(x)} images but y has {len(y)} labels")
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the training cases hold a single class {self.classes_.tolist()}")
        aug = parse_augment(self.augment)
        step = _as_step(self.lr_schedule)
        device = pick_device(self.device)
        n_images = len(x) * (aug.grid_size() if aug is not None else 1)
        if self.train_split:
            frac = float(self.train_split)
            counts = np.bincount(y_enc)
            n_valid = int(np.ceil(frac * len(x)))  # train_test_split's count
            k = len(counts)
            if not 0 < frac < 1 or counts.min() < 2 or n_valid < k or len(x) - n_valid < k:
                raise ValueError(f"train_split={frac:g} needs at least one case of each class on both sides "
                                 f"({n_valid} validation and {len(x) - n_valid} training cases of {len(x)}); "
                                 f"the training cases hold {dict(zip(self.classes_.tolist(), counts.tolist()))}")
            n_images = (len(x) - n_valid) * (aug.grid_size() if aug is not None else 1)
        if self.batch_size > n_images:
            raise ValueError(f"batch_size {self.batch_size} is larger than the {n_images} training images of this "
                             f"fold ({len(x)} cases); set batch_size to at most {n_images}")
        self.train_hashes_ = tensor_hashes(x)
        self.train_ids_ = self._ids(self.train_hashes_, ids)
        self.input_shape_ = tuple(x.shape[1:])
        self.n_training_images_ = n_images
        self.augment_record_ = aug.record() if aug is not None else None
        self._train_x = x  # for the audit (the un-augmented training tensors)
        # the last batch of one image is dropped (BatchNorm); drop_last drops only an incomplete batch
        drop_last = n_images % self.batch_size == 1 and n_images > 1

        with _FIT_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(self.seed))
            shuffle_gen = torch.Generator().manual_seed(int(self.seed))
            aug_gen = torch.Generator().manual_seed(int(self.seed) + 1)
            xt, yt = torch.from_numpy(x), torch.from_numpy(y_enc.astype(np.int64))
            inner = None
            if self.train_split:  # split the cases first: no augmented copy on both sides
                inner = _inner_split(y_enc, float(self.train_split), int(self.seed))
                xv, yv = xt[inner[1]], yt[inner[1]]
                xt, yt = xt[inner[0]], yt[inner[0]]
                self.inner_split_ = {"train": [int(i) for i in inner[0]], "valid": [int(i) for i in inner[1]]}
            if aug is not None:
                xt, yt = aug.expand(xt, yt)
            callbacks = [("progress", _EpochBar(bool(self.progress), f"{self.audit_name or 'cnn'} fold"))]
            if step is not None:
                callbacks.append(("lr_schedule", LRScheduler("StepLR", step_size=step[0], gamma=step[1])))
            opt_kw = {"optimizer__weight_decay": float(self.weight_decay)}
            if self.optimizer == "sgd":
                opt, opt_kw["optimizer__momentum"] = torch.optim.SGD, float(self.momentum)
            elif self.optimizer == "adam":
                opt = torch.optim.Adam
            else:
                raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
            split = None
            if inner is not None:
                split = predefined_split(Dataset(xv, yv))
                if self.early_stopping:
                    callbacks.append(("early_stopping", EarlyStopping(
                        monitor="valid_loss", patience=int(self.early_stopping), load_best=True)))
            elif self.early_stopping:
                raise ValueError("early_stopping needs an inner validation split: set train_split (e.g. 0.3)")
            net = _Net(
                module=self.module,
                **{f"module__{k}": v for k, v in dict(self.module_params or {}).items()},
                criterion=nn.CrossEntropyLoss,
                optimizer=opt, lr=float(self.lr), **opt_kw,
                max_epochs=int(self.epochs), batch_size=int(self.batch_size),
                train_split=split,
                iterator_train__shuffle=True, iterator_train__generator=shuffle_gen,
                iterator_train__drop_last=drop_last,
                callbacks=callbacks, callbacks__print_log=None,  # verbose=0: no table to format per epoch
                device=str(device), verbose=0, classes=list(range(len(self.classes_))),
            )
            net.augment_ = aug if aug is not None and aug.mode in ("random", "circle_random") else None
            net.aug_gen_ = aug_gen
            old_threads = torch.get_num_threads()
            try:
                if self.threads:
                    torch.set_num_threads(int(self.threads))
                net.initialize()
                self._check_output(net, xt[:1].to(device), len(self.classes_))
                net.partial_fit(xt, yt)
            finally:
                torch.set_num_threads(old_threads)
        net.module_.eval()
        self.net_ = net
        return self

    @staticmethod
    def _check_output(net, x1, n_classes):
        with torch.no_grad():
            net.module_.eval()
            out = net.module_(x1)
        if out.ndim != 2 or out.shape[1] != n_classes:
            raise ValueError(f"the module returns shape {tuple(out.shape)} for one image; a CNNClassifier module "
                             f"must return logits (N, {n_classes})")

    # ------------------------------------------------------------------ predict
    def _audit(self, x: np.ndarray, ids) -> None:
        if getattr(self, "_train_x", None) is None:  # a final model, detached from its training images
            return
        test_hashes = tensor_hashes(x)
        record = fold_audit(self._train_x, self.train_ids_, self.train_hashes_, x,
                            self._ids(test_hashes, ids), augment=self.augment_record_,
                            n_training_images=self.n_training_images_)
        self.audit_ = record
        if self.audit_dir is not None:
            write_audit(record, self.audit_dir, self.audit_name)

    def logits(self, X) -> np.ndarray:
        check_is_fitted(self, "net_")
        x, _ = self._images(X)
        return self.net_.forward(torch.from_numpy(x), training=False).cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits), columns in the order of ``classes_``.

        Every call audits the rows scored against this fit's training tensors (``audit_``; written
        to ``audit_dir`` when set)."""
        check_is_fitted(self, "net_")
        x, ids = self._images(X)
        self._audit(x, ids)
        with _FIT_LOCK:
            p = self.net_.predict_proba(torch.from_numpy(x))
        return np.asarray(p, dtype=np.float64)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
