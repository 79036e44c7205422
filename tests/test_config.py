"""The YAML schema: strict validation with precise messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radiodeep.config import ConfigError, load_config, parse_config, settings_hash


def base(tmp_path: Path) -> dict:
    (tmp_path / "cohort.csv").write_text("case_id,image,mask,label\n", encoding="utf-8")
    return {
        "cohort": {"manifest": "cohort.csv", "positive_label": "short"},
        "features": {"deep": {"weights": None}},
        "experiments": [{"name": "e1", "features": ["deep"], "select": {"method": "su", "k": 10},
                         "classifier": "random_forest"}],
    }


def problems(data, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    return info.value.problems


def test_valid_config_resolves_paths_and_defaults(tmp_path):
    cfg = parse_config(base(tmp_path), base_dir=tmp_path)
    assert cfg.resolve(cfg.cohort.manifest) == (tmp_path / "cohort.csv").resolve()
    assert cfg.roi.window_px == 56 and cfg.features.deep.layer == "fc7"
    assert cfg.output_dir == (tmp_path / "results").resolve()
    assert cfg.cache_dir == cfg.output_dir / "cache"


def test_typo_in_key_suggests_the_right_one(tmp_path):
    data = base(tmp_path)
    data["cohort"]["positve_label"] = data["cohort"].pop("positive_label")
    data["roi"] = {"windw_px": 64}
    msgs = problems(data, tmp_path)
    assert "cohort.positve_label: unknown key 'positve_label' (did you mean 'positive_label'?)" in msgs
    assert "roi.windw_px: unknown key 'windw_px' (did you mean 'window_px'?)" in msgs


def test_wrong_type_and_range_name_the_full_key_path(tmp_path):
    data = base(tmp_path)
    data["roi"] = {"size": "big"}
    data["features"]["deep"]["batch_size"] = 0
    data["experiments"][0]["select"]["k"] = -3
    msgs = "\n".join(problems(data, tmp_path))
    assert "roi.size: Input should be a valid integer" in msgs and "'big'" in msgs
    assert "features.deep.batch_size: Input should be greater than or equal to 1" in msgs
    assert "experiments[0].select.k" in msgs


def test_every_problem_is_listed_at_once(tmp_path):
    data = base(tmp_path)
    data["roi"] = {"crop": "square", "plane": "oblique"}
    data["evaluation"] = {"scheme": "bootstrap"}
    msgs = problems(data, tmp_path)
    assert any(m.startswith("roi.crop:") for m in msgs)
    assert any(m.startswith("roi.plane:") for m in msgs)
    assert any(m.startswith("evaluation.scheme:") for m in msgs)


def test_missing_files_name_the_path_tried(tmp_path):
    data = base(tmp_path)
    data["cohort"]["manifest"] = "nowhere/cohort.csv"
    data["features"]["handcrafted"] = {"params": "params.yaml"}
    data["features"]["deep"]["weights"] = "weights/alexnet.pth"
    msgs = problems(data, tmp_path)
    assert f"cohort.manifest: file not found: {tmp_path.resolve() / 'nowhere/cohort.csv'}" in msgs
    assert f"features.handcrafted.params: file not found: {tmp_path.resolve() / 'params.yaml'}" in msgs
    assert f"features.deep.weights: file not found: {tmp_path.resolve() / 'weights/alexnet.pth'}" in msgs


def test_cross_section_checks(tmp_path):
    data = base(tmp_path)
    data["experiments"].append({"name": "e2", "features": ["handcrafted"], "classifier": "svm_rbf"})
    data["experiments"].append({"name": "e1", "features": ["deep"], "classifier": "naive_bayes"})
    msgs = "\n".join(problems(data, tmp_path))
    assert "experiment names must be unique; repeated: ['e1']" in msgs
    data["experiments"] = data["experiments"][:2]
    msgs = "\n".join(problems(data, tmp_path))
    assert "experiments[1] (e2) uses route 'handcrafted', but features.handcrafted is not configured" in msgs


def test_unknown_classifier_and_preset_suggest(tmp_path):
    data = base(tmp_path)
    data["experiments"][0]["classifier"] = "random_forrest"
    data["roi"] = {"intensity": {"window": "mediastinun"}}
    msgs = "\n".join(problems(data, tmp_path))
    assert "unknown classifier 'random_forrest' (did you mean 'random_forest'?)" in msgs
    assert "unknown CT window preset 'mediastinun' (did you mean 'mediastinum'?)" in msgs


def test_ct_window_as_level_and_width(tmp_path):
    data = base(tmp_path)
    data["roi"] = {"intensity": {"window": {"level": 40, "width": 400},
                                 "windows": ["lung", {"level": 50, "width": 350}, [-160, 240]]}}
    cfg = parse_config(data, base_dir=tmp_path)
    assert cfg.roi.intensity.window == (-160.0, 240.0)
    assert cfg.roi.intensity.windows == ["lung", (-125.0, 225.0), (-160.0, 240.0)]
    data["roi"] = {"intensity": {"window": {"level": 40, "widht": 400}}}
    assert any("roi.intensity.window: " in m and "exactly the keys 'level' and 'width'" in m
               for m in problems(data, tmp_path))
    data["roi"] = {"intensity": {"window": {"level": 40, "width": -1}}}
    assert any("window width must be positive, got -1" in m for m in problems(data, tmp_path))


def test_classifier_keyword_arguments_pass_through(tmp_path):
    data = base(tmp_path)
    data["experiments"][0]["classifier"] = {"name": "random_forest", "n_estimators": 50}
    cfg = parse_config(data, base_dir=tmp_path)
    assert cfg.experiments[0].classifier.params == {"n_estimators": 50}


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text("cohort: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_load_config_from_file_and_missing_file(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(base(tmp_path)), encoding="utf-8")
    assert load_config(p).base_dir == tmp_path.resolve()
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_settings_hash_is_stable_and_order_free():
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_resolved_config_paths_are_relative_to_its_folder_and_reload_identically(tmp_path):
    """config.resolved.yaml: every path relative to the folder it is written to, so it validates
    and reruns from any working directory (paths used to be resolved against the wrong folder)."""
    import yaml

    from radiodeep.config import load_config

    study = tmp_path / "study"
    (study / "params").mkdir(parents=True)
    (study / "cohort.csv").write_text("case_id,image,mask,label\n", encoding="utf-8")
    (study / "params" / "p.yaml").write_text("setting:\n  binWidth: 25\n", encoding="utf-8")
    (study / "w.pth").write_bytes(b"")
    (study / "study.yaml").write_text(
        "cohort: {manifest: cohort.csv, positive_label: short}\n"
        "features:\n  handcrafted: {params: params/p.yaml}\n  deep: {weights: w.pth}\n"
        "output: out/run1\nexecution: {cache_dir: shared-cache}\n", encoding="utf-8")
    cfg = load_config(study / "study.yaml")
    out = cfg.output_dir
    out.mkdir(parents=True)
    (out / "config.resolved.yaml").write_text(cfg.resolved_yaml(out), encoding="utf-8")
    data = yaml.safe_load((out / "config.resolved.yaml").read_text(encoding="utf-8"))
    assert data["cohort"]["manifest"] == "../../cohort.csv" and data["output"] == "."
    assert data["features"]["handcrafted"]["params"] == "../../params/p.yaml"
    assert data["features"]["deep"]["weights"] == "../../w.pth"
    assert data["execution"]["cache_dir"] == "../../shared-cache"
    again = load_config(out / "config.resolved.yaml")
    assert again.output_dir == cfg.output_dir and again.cache_dir == cfg.cache_dir
    assert again.resolve(again.cohort.manifest) == cfg.resolve(cfg.cohort.manifest)
    assert again.to_dict() | {"output": None, "cohort": None, "features": None, "execution": None} == \
        cfg.to_dict() | {"output": None, "cohort": None, "features": None, "execution": None}


def test_a_misspelt_learned_classifier_is_named_with_the_image_route():
    from radiodeep.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"cohort": {"manifest": "m.csv"}, "features": {"handcrafted": {}},
                      "experiments": [{"name": "a", "features": ["handcrafted"], "classifier": "cnn_finetun"}]})
    text = str(err.value)
    assert "did you mean 'cnn_finetune'?" in text and "with features: [image]" in text
