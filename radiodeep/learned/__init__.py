"""Networks that learn from the cohort, fitted inside every fold of the evaluation.

* :mod:`.estimator`: :class:`CNNClassifier`, a CNN as a scikit-learn classifier (on skorch);
* :mod:`.augment`: rotations and flips applied inside ``fit`` only (random or an exhaustive grid);
* :mod:`.audit`: the per-fold audit (training case ids, tensor hashes, a near-copy check);
* :mod:`.networks`: fine-tunable backbones of the deep route, a tiny CNN;
* :mod:`.features`: fine-tune, then a layer's activations as features (``cnn_finetune_features``);
* :mod:`.schema`: the config of learned classifiers (no torch import);
* :mod:`.route`: the ``image`` pseudo-route (the prepared ROI tensor of each case, cached);
* :mod:`.build`: experiment config -> estimator, checks and the cost estimate.

Imports are lazy, so that ``radiodeep.config`` can read :mod:`.schema` without importing torch.
"""

from __future__ import annotations

__all__ = ["CNNClassifier", "FineTunedFeatures", "FineTuneNet", "TinyCNN", "TrainingDiverged"]


def __getattr__(name):
    if name in ("CNNClassifier", "TrainingDiverged"):
        from . import estimator

        return getattr(estimator, name)
    if name in ("FineTuneNet", "TinyCNN"):
        from . import networks

        return getattr(networks, name)
    if name == "FineTunedFeatures":
        from .features import FineTunedFeatures

        return FineTunedFeatures
    raise AttributeError(name)
