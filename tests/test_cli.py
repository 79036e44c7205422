"""The command line, driven as a user would: through ``main(argv)`` and a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import yaml

from radiodeep.cli import main
from radiodeep.synth import make_cohort


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "radiodeep.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("run", "demo", "validate", "synth"):
        assert cmd in out.stdout


def test_synth_then_validate_ok(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "c"), "--cases", "4", "--seed", "1"]) == 0
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "features": {"handcrafted": {"mode": "3d"}}}), encoding="utf-8")
    assert main(["validate", str(study)]) == 0
    assert "cohort OK: 4 cases, labels {'long': 2, 'short': 2}" in capsys.readouterr().out


def test_validate_lists_every_problem_with_case_ids(tmp_path, capsys):
    manifest = make_cohort(tmp_path / "c", n_cases=6, seed=2)
    df = pd.read_csv(manifest)
    df.loc[1, "image"] = "images/gone.nrrd"
    df.loc[2, "mask"] = df.loc[3, "mask"]  # another case's mask: geometry differs
    df.loc[4, "case_id"] = df.loc[5, "case_id"]
    df.to_csv(manifest, index=False)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "features": {"handcrafted": {"mode": "3d"}}}), encoding="utf-8")
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert "case ct005: duplicate case_id (manifest rows [6, 7])" in err
    assert "case ct001: image file not found:" in err and "gone.nrrd" in err
    assert "case ct002: image/mask geometry mismatch" in err


def test_validate_reports_config_errors(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("cohort: {manifest: nope.csv, positve_label: x}\nfeatures: {deep: {}}\n", encoding="utf-8")
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'positive_label'?" in err
    assert "cohort.manifest: file not found:" in err


def _deep_study(tmp_path, **deep):
    make_cohort(tmp_path / "c", n_cases=4, seed=1)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "features": {"handcrafted": {"mode": "3d", "settings": {"binWidth": 25}},
                     "deep": {"backbone": "alexnet", **deep}},
        "experiments": [{"name": "e", "features": ["deep"], "classifier": "naive_bayes"}],
        "output": "out", "execution": {"progress": False}}), encoding="utf-8")
    return study


def test_missing_imagenet_weights_are_found_by_validate_and_stop_a_run_before_any_work(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    study = _deep_study(tmp_path, weights="IMAGENET1K_V1", layer="fc7")
    missing = tmp_path / "torchhome" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert main(["validate", str(study)]) == 1
    err = capsys.readouterr().err
    assert "features.deep.weights: ImageNet weights AlexNet_Weights.IMAGENET1K_V1" in err
    assert f"missing file:  {missing}" in err
    # a run refuses at once, with the same message and no traceback, before the handcrafted route
    assert main(["run", str(study), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the feature settings cannot be used" in err and f"missing file:  {missing}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "features_handcrafted.csv").exists()
    assert not (tmp_path / "out" / "cache").exists()


def test_validate_names_a_layer_the_backbone_lacks(tmp_path, capsys):
    study = _deep_study(tmp_path, weights=None, backbone="resnet18", layer="fc7")
    assert main(["validate", str(study), "--no-images"]) == 1
    assert "features.deep.layer: layer 'fc7' is not defined for resnet18" in capsys.readouterr().err
