"""Fine-tune, then a layer's activations as features (the published second variant).

:class:`FineTunedFeatures` is a transformer: ``fit`` fine-tunes a fresh copy of its
:class:`~radiodeep.learned.estimator.CNNClassifier` on the fold's training images, ``transform``
returns the activations of a layer of that fine-tuned network (``fc7``, ``penultimate``, a module
path; pre- or post-ReLU, as the deep route reads them). In a ``Pipeline`` followed by a selector
and a random forest, all three are refitted on the training cases of every fold.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from .estimator import _FIT_LOCK

__all__ = ["FineTunedFeatures"]


class FineTunedFeatures(TransformerMixin, BaseEstimator):
    """``cnn``: a CNNClassifier whose module is a :class:`~radiodeep.learned.networks.FineTuneNet`."""

    def __init__(self, cnn=None, layer: str = "fc7", activation: str = "post_relu"):
        self.cnn = cnn
        self.layer = layer
        self.activation = activation

    def fit(self, X, y):
        self.cnn_ = clone(self.cnn).fit(X, y)
        self.classes_ = self.cnn_.classes_
        return self

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y)._features(X)

    def transform(self, X):
        """Activations of held-out images (audited against this fit's training tensors)."""
        check_is_fitted(self, "cnn_")
        x, ids = self.cnn_._images(X)
        self.cnn_._audit(x, ids)
        return self._features(X)

    def _features(self, X) -> np.ndarray:
        from ..features.backbones import FeatureExtractor

        x, _ = self.cnn_._images(X)
        module = self.cnn_.net_.module_
        extract = FeatureExtractor(module.net, module.backbone, self.layer, self.activation)
        out = []
        device = next(module.parameters()).device
        bs = max(1, int(self.cnn_.batch_size))
        with _FIT_LOCK:
            module.eval()
            for i in range(0, len(x), bs):
                xb = torch.from_numpy(x[i:i + bs]).to(device)
                out.append(extract(xb * module.scale + module.shift).float().cpu().numpy())
        feats = np.concatenate(out).astype(np.float64)
        self.n_features_out_ = feats.shape[1]
        return feats

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "n_features_out_")
        module = self.cnn_.net_.module_
        from ..features.deep import feature_names

        return np.asarray(feature_names(f"{module.backbone}-ft", self.layer, "img", self.n_features_out_), dtype=object)
