"""Every shipped config (sample_configs/, pipelines/) validates against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radiodeep.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "sample_configs").glob("*.yaml") if not p.name.startswith("pyradiomics"))
RECIPES = sorted((ROOT / "pipelines").glob("*/study.yaml"))


@pytest.mark.parametrize("path", STUDIES + RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_validates(path, tmp_path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,image,mask,label\n", encoding="utf-8")
    data["cohort"]["manifest"] = str(manifest)  # the user supplies the cohort
    cfg = parse_config(data, base_dir=path.parent, source=str(path))
    assert cfg.experiments, "a shipped study should define experiments"


def test_recipes_have_a_readme_naming_what_to_supply():
    assert len(RECIPES) >= 3  # the published three, then recipes of later issues (brain_mr_finetune, ...)
    for recipe in RECIPES:
        text = (recipe.parent / "README.md").read_text(encoding="utf-8")
        assert "You supply" in text and "published" in text


@pytest.mark.parametrize("name", ["pyradiomics_ct.yaml", "pyradiomics_mr.yaml"])
def test_pyradiomics_param_files_are_valid_for_pyradiomics(name):
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    path = ROOT / "sample_configs" / name
    extractor = RadiomicsFeatureExtractor(str(path))  # PyRadiomics validates against its schema
    assert extractor.enabledFeatures


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_sample_config_validates_as_shipped_beside_a_synth_cohort(path, tmp_path, monkeypatch):
    """Copied beside `radiodeep synth`'s manifest, unedited: the cohort and the settings pass
    (on a machine without ImageNet weights, the missing weights are the only problem)."""
    import shutil

    from radiodeep.config import load_config
    from radiodeep.synth import make_cohort
    from radiodeep.validate import check_routes, load_cohort

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights here, whatever the machine
    modality = "mr" if path.name.startswith("mr_") else "ct"
    make_cohort(tmp_path, n_cases=4, seed=0, modality=modality)
    for p in [path, *(ROOT / "sample_configs").glob("pyradiomics_*.yaml")]:
        shutil.copy(p, tmp_path / p.name)
    cfg = load_config(tmp_path / path.name)
    report = load_cohort(cfg)
    assert report.ok, report.lines()
    problems = check_routes(cfg)
    assert all(p.startswith("features.deep.weights") and "not on this machine" in p for p in problems), problems
    assert bool(problems) == (cfg.features.deep is not None)
