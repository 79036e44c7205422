"""Folds as tasks on a Dask cluster give the same predictions as a local run (CNN and forest)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from radiodeep.config import EvaluationConfig
from radiodeep.evaluation import evaluate
from radiodeep.learned.estimator import CNNClassifier
from radiodeep.learned.networks import TinyCNN

distributed = pytest.importorskip("distributed")


def test_cnn_folds_on_dask_match_the_local_run():
    rng = np.random.default_rng(0)
    n = 6
    x = rng.random((n, 3, 16, 16), dtype=np.float32)
    y = pd.Series([0, 1] * 3, index=[f"c{i}" for i in range(n)])
    x[y.to_numpy() == 1, :, 4:12, 4:12] += 0.5
    X = pd.DataFrame(x.reshape(n, -1), index=y.index)
    X.columns = [f"image_{i:06d}" for i in range(X.shape[1])]
    pipe = Pipeline([("clf", CNNClassifier(TinyCNN, {"width": 4}, input_shape=(3, 16, 16), epochs=2, lr=0.05,
                                           batch_size=2, seed=0, device="cpu", threads=1))])
    local = evaluate(pipe, X, y, EvaluationConfig(scheme="loo"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        remote = evaluate(pipe, X, y, EvaluationConfig(scheme="loo"), dask_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(local.predictions, remote.predictions, check_exact=True)
    assert local.metrics == remote.metrics
