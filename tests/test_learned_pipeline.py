"""The learned route inside a run: config names, the image route, audit files, failures kept per
experiment, the frozen-feature comparison (DeLong) and --only evaluate giving the same numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from radiodeep.config import ConfigError, parse_config
from radiodeep.pipeline import RunError, run
from radiodeep.synth import make_cohort

ISSUE_YAML = """
- name: flair-finetune
  features: [image]                 # the ROI input itself, not a feature table
  classifier:
    name: cnn_finetune
    backbone: efficientnet_lite0    # any backbone of the deep route, with its weights
    epochs: 10
    lr: 1.0e-5
    lr_schedule: {step: 4, gamma: 0.1}   # the published schedule is the default
    freeze: none                    # none | features | up to a named layer
    batch_size: 16
    augment: {rotate_deg: 15, flip: [horizontal, vertical]}
"""

TINY = {"backbone": "resnet18", "weights": None, "epochs": 1, "lr": 1e-3, "batch_size": 2, "threads": 1,
        "device": "cpu"}


def study(tmp_path, experiments, n_cases=6, **features):
    manifest = make_cohort(tmp_path / "cohort", n_cases=n_cases, seed=4, modality="mr")
    return {
        "cohort": {"manifest": str(manifest), "positive_label": "short"},
        "roi": {"slice": "largest", "crop": "exact", "margin_px": 2, "size": 32, "intensity": {"modality": "MR"}},
        "features": {"image": {"channels": "grey3"}, **features},
        "experiments": experiments,
        "output": str(tmp_path / "out"),
        "execution": {"progress": False},
    }


def test_issue_config_names_validate(tmp_path):
    data = study(tmp_path, yaml.safe_load(ISSUE_YAML), n_cases=2)
    exp = parse_config(data, base_dir=tmp_path).experiments[0]
    c = exp.classifier
    assert (c.name, c.backbone, c.epochs, c.lr, c.lr_schedule.step, c.lr_schedule.gamma, c.freeze, c.batch_size) == \
        ("cnn_finetune", "efficientnet_lite0", 10, 1e-5, 4, 0.1, "none", 16)
    assert c.augment.rotate_deg == 15 and c.augment.flip == ["horizontal", "vertical"]
    data["experiments"] = [{"name": "d", "features": ["image"], "classifier": {"name": "cnn_finetune"}}]
    assert parse_config(data, base_dir=tmp_path).experiments[0].classifier.lr_schedule.step == 4  # default


@pytest.mark.parametrize("exp, message", [
    ({"features": ["image"], "classifier": {"name": "cnn_finetune", "epoch": 3}},
     "experiments[0].classifier.epoch: unknown key 'epoch' (did you mean 'epochs'?)"),
    ({"features": ["image"], "classifier": "random_forest"}, "needs a classifier that learns from images"),
    ({"features": ["deep"], "classifier": "cnn_finetune"}, "set features: [image]"),
    ({"features": ["image"], "select": {"method": "su", "k": 3}, "classifier": "cnn_finetune"},
     "'select' applies to cnn_finetune_features"),
    ({"features": ["image"], "classifier": {"name": "cnn_finetune", "augment": {"flip": ["diagonal"]}}},
     "experiments[0].classifier.augment.flip[0]"),
])
def test_learned_config_errors_name_the_key(tmp_path, exp, message):
    data = study(tmp_path, [{"name": "x", **exp}], n_cases=2, deep={"weights": None})
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=tmp_path)
    assert message in str(err.value)


def test_missing_weights_stop_the_run_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    data = study(tmp_path, [{"name": "ft", "features": ["image"],
                             "classifier": {"name": "cnn_finetune", **TINY, "weights": "IMAGENET1K_V1"}}], n_cases=4)
    with pytest.raises(RunError, match="are not on this machine") as err:
        run(parse_config(data, base_dir=tmp_path))
    assert "resnet18-f37072fd.pth" in str(err.value) and "experiments[0] (ft).classifier.weights" in str(err.value)
    assert not (tmp_path / "out" / "audit").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_is_refused_here_but_left_to_the_workers_on_dask(tmp_path):
    from radiodeep.learned.build import check_learned

    exp = [{"name": "ft", "features": ["image"], "classifier": {"name": "cnn_finetune", **TINY, "device": "cuda"}}]
    local = parse_config(study(tmp_path, exp, n_cases=2), base_dir=tmp_path)
    assert any(".device: 'cuda' but torch sees no CUDA device here" in p for p in check_learned(local))
    remote = parse_config({**study(tmp_path, exp, n_cases=2),
                           "execution": {"backend": "dask", "address": "tcp://127.0.0.1:1"}}, base_dir=tmp_path)
    assert not any(".device" in p for p in check_learned(remote))


def test_finetune_beside_frozen_features_end_to_end(tmp_path):
    experiments = [
        {"name": "frozen-rf", "features": ["deep"], "classifier": {"name": "random_forest", "n_estimators": 10}},
        {"name": "finetune", "features": ["image"],
         "classifier": {"name": "cnn_finetune", **TINY, "augment": {"rotate_deg": 10, "flip": ["horizontal"]}}},
        {"name": "finetune-fc-rf", "features": ["image"], "select": {"method": "su", "k": 4},
         "classifier": {"name": "cnn_finetune_features", **TINY, "layer": "penultimate",
                        "then": {"name": "random_forest", "n_estimators": 10}}},
        {"name": "too-big-batch", "features": ["image"], "classifier": {"name": "cnn_finetune", **TINY, "batch_size": 16}},
        {"name": "diverges", "features": ["image"], "classifier": {"name": "cnn_finetune", **TINY, "lr": 1e30}},
    ]
    data = study(tmp_path, experiments,
                 deep={"backbone": "resnet18", "weights": None, "layer": "penultimate", "channels": "grey3"})
    cfg = parse_config(data, base_dir=tmp_path)
    res = run(cfg)
    out = tmp_path / "out"
    # failures stay with their experiment and name the numbers; the others complete
    assert set(res.experiment_errors) == {"too-big-batch", "diverges"}
    assert "batch_size 16 is larger than the 5 training images of the smallest fold (5 cases" in \
        res.experiment_errors["too-big-batch"]
    assert "at epoch 1 of 1 (learning rate 1e+30" in res.experiment_errors["diverges"]
    assert "; in the fold that holds out case " in res.experiment_errors["diverges"]  # which fold
    assert set(res.metrics.experiment) == {"frozen-rf", "finetune", "finetune-fc-rf"}
    preds = pd.read_csv(out / "predictions.csv")
    assert preds.groupby("experiment").case_id.nunique().eq(6).all()
    # the fine-tuned experiments beside the frozen-feature one, DeLong on the same cases
    pairs = {(r.experiment_a, r.experiment_b) for r in res.delong.itertuples()}
    assert ("frozen-rf", "finetune") in pairs and ("frozen-rf", "finetune-fc-rf") in pairs
    assert (res.delong["n"] == 6).all()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "finetune-fc-rf" in html
    # weights: null in every learned experiment here: the run says so, last, and the report on top
    assert res.summary().splitlines()[-1].startswith("WARNING: route(s) deep used RANDOM")
    assert "experiment(s) finetune, finetune-fc-rf, too-big-batch, diverges fine-tuned" in res.summary()
    assert html.index("fine-tuned a network from RANDOM weights") < html.index("<h1>")
    # one audit per held-out case: that case absent from training, no copy of it found
    for exp in ("finetune", "finetune-fc-rf"):
        files = sorted((out / "audit" / exp).glob("heldout_*.json"))
        assert len(files) == 6
        for f in files:
            a = json.loads(f.read_text(encoding="utf-8"))
            (held,) = a["heldout_cases"]
            assert held not in a["training_cases"] and len(a["training_cases"]) == 5
            assert None not in a["training_cases"] and a["leak"] is False
    # the ROI tensors are exported (not as CSV) and --only evaluate gives the same numbers, bit for bit
    assert (out / "features_image.npz").is_file() and not (out / "features_image.csv").exists()
    first = preds.sort_values(["experiment", "case_id"]).reset_index(drop=True)
    run(cfg, only="evaluate")
    again = pd.read_csv(out / "predictions.csv").sort_values(["experiment", "case_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
