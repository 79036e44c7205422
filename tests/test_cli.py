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
