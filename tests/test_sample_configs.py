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
    assert len(RECIPES) >= 3
    for recipe in RECIPES:
        text = (recipe.parent / "README.md").read_text(encoding="utf-8")
        assert "You supply" in text and "published" in text


@pytest.mark.parametrize("name", ["pyradiomics_ct.yaml", "pyradiomics_mr.yaml"])
def test_pyradiomics_param_files_are_valid_for_pyradiomics(name):
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    path = ROOT / "sample_configs" / name
    extractor = RadiomicsFeatureExtractor(str(path))  # PyRadiomics validates against its schema
    assert extractor.enabledFeatures
