"""Real ImageNet features: the packaged EfficientNet-Lite weights, their key map, the weights
registry and workflow, bad weight files, the photo extractor and the random-weights warnings.

The top-5 tests would fail with random weights: a random network ranks the 1000 classes
arbitrarily, so the chance that a cat photo's top 5 holds three of the five cat classes is nil.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from radiodeep.cli import main
from radiodeep.features import backbones as bb
from radiodeep.features import weights as W
from radiodeep.features.backbones import WeightsError, efficientnet_lite_keys, load_backbone
from radiodeep.features.extract import extract_deep_features, photo_features

skdata = pytest.importorskip("skimage.data")

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.chelsea()).save(d / "chelsea.png")
    Image.fromarray(skdata.coffee()).save(d / "coffee.jpg", quality=95)
    return d


def _lite0_file() -> Path:
    return W.get_known("efficientnet_lite0").find()


# --------------------------------------------------------------------------- the weights are real
@pytest.mark.parametrize("name", LITES)
def test_imagenet_top5_on_photographs(name, photos, tmp_path):
    """Through radiodeep's own reading, resizing, normalisation and layer tap (extract-deep's code)."""
    table = extract_deep_features(photos, backbone=name, layer="logits", out=tmp_path / "logits.csv")
    assert list(table.index) == ["chelsea.png", "coffee.jpg"]
    assert table.shape[1] == 1000 and table.columns[0] == f"{name}_logits_rgb_0000"
    top5 = {cid: [int(c.rsplit("_", 1)[1]) for c in row.nlargest(5).index] for cid, row in table.iterrows()}
    assert top5["chelsea.png"][0] in CATS and len(CATS & set(top5["chelsea.png"])) >= 3, top5
    assert top5["coffee.jpg"][0] in COFFEE and COFFEE <= set(top5["coffee.jpg"]), top5
    prov = json.loads((tmp_path / "logits.provenance.json").read_text(encoding="utf-8"))
    assert prov["photos"]["weights"]["sha256"] == W.get_known(name).sha256
    assert "Apache-2.0" in prov["photos"]["weights"]["licence"]


def test_normalisation_is_the_one_the_weights_were_trained_with():
    """The stem's BatchNorm saw, in training, inputs whose statistics it stored: with the right input
    scaling, photographs give channel means near those running means; with ImageNet mean/std (about
    2.2 times larger inputs) they are further off. Random weights have no such statistics."""
    model, _ = load_backbone("efficientnet_lite0", "IMAGENET1K_V1")
    imgs = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket()]
    x = np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BILINEAR), np.float32) / 255 for i in imgs])
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    bn = model.bn1

    def mismatch(mean, std):
        seen = {}
        h = bn.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
        with torch.no_grad():
            model((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
        h.remove()
        s = seen["x"]
        sd = (bn.running_var + bn.eps).sqrt()
        return float(((s.std((0, 2, 3)) / sd).log().abs()).median())

    ours = mismatch(bb.INCEPTION_MEAN, bb.INCEPTION_STD)
    imagenet = mismatch(bb.IMAGENET_MEAN, bb.IMAGENET_STD)
    assert ours < 0.6 * imagenet, (ours, imagenet)
    assert bb.normalisation_provenance("efficientnet_lite0")["mean"] == [0.5, 0.5, 0.5]


# --------------------------------------------------------------------------- the key map
@pytest.mark.parametrize("name", LITES)
def test_key_map_is_one_to_one_in_order_and_shape(name):
    import timm

    path = W.get_known(name).find()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(bb.get_spec(name).arch, pretrained=False)
    mapped = efficientnet_lite_keys(sd, model)
    own = model.state_dict()
    assert list(mapped) == list(own)  # every key, once, in the model's order
    assert [tuple(v.shape) for v in mapped.values()] == [tuple(v.shape) for v in own.values()]
    assert all(mapped[k] is v for k, v in zip(mapped, sd.values()))  # tensor for tensor, in the file's order
    # spot checks of the written map
    assert torch.equal(mapped["classifier.weight"], sd["_fc.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], sd["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], sd["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], sd["_bn1.running_var"])


def test_layers_of_efficientnet_lite0(photos):
    kw = dict(backbone="efficientnet_lite0", ids=["cat"])
    pen, _, _ = photo_features([photos / "chelsea.png"], layer="penultimate", **kw)
    logits, _, _ = photo_features([photos / "chelsea.png"], layer="logits", **kw)
    head, _, _ = photo_features([photos / "chelsea.png"], layer="head", **kw)
    b3, _, _ = photo_features([photos / "chelsea.png"], layer="block3", **kw)
    assert pen.shape == (1, 1280) and (pen.values >= 0).all() and (pen.values <= 6).all()  # pooled ReLU6
    assert np.array_equal(logits.values, head.values)
    assert (logits.values < 0).any()  # raw class scores: no ReLU, whatever 'activation' says
    assert b3.shape == (1, 40)  # stage 3 of EfficientNet-Lite0: 40 channels, averaged over positions
    # the logits are the classifier applied to the penultimate features
    model, _ = load_backbone("efficientnet_lite0", "IMAGENET1K_V1")
    again = model.classifier(torch.tensor(pen.values, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(again, logits.values, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- bad weight files
@pytest.fixture
def bad_files(tmp_path):
    good = _lite0_file()
    out = {}
    wrong = torch.load(good, weights_only=True)
    wrong["_fc.bias"] = wrong["_fc.bias"] + 1
    out["wrong_hash"] = tmp_path / "h" / good.name  # the published name, other values
    out["wrong_hash"].parent.mkdir()
    torch.save(wrong, out["wrong_hash"])
    out["truncated"] = tmp_path / "t" / good.name
    out["truncated"].parent.mkdir()
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated_other_name"] = tmp_path / "lite0_half.pth"
    out["truncated_other_name"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["other_arch"] = W.get_known("efficientnet_lite1").find()
    out["other_arch_renamed"] = tmp_path / "mine.pth"
    shutil.copyfile(out["other_arch"], out["other_arch_renamed"])
    out["not_a_checkpoint"] = tmp_path / "notes.pth"
    out["not_a_checkpoint"].write_text("not a checkpoint", encoding="utf-8")
    return out


@pytest.mark.parametrize("kind,reason", [
    ("wrong_hash", "damaged or not the published file"),
    ("truncated", "truncated"),
    ("truncated_other_name", r"cannot read weights file .* with torch.load\(weights_only=True\)"),
    ("other_arch", "is the published file of efficientnet_lite1, not of efficientnet_lite0"),
    ("other_arch_renamed", r"does not fit .*tf_efficientnet_lite0: key '_blocks.16._expand_conv.weight'"),
    ("not_a_checkpoint", r"cannot read weights file .* with torch.load\(weights_only=True\)"),
])
def test_bad_weight_files_are_refused_with_the_file_named(bad_files, kind, reason, tmp_path):
    path = bad_files[kind]
    with pytest.raises(WeightsError, match=reason) as err:
        bb.check_weights_file("efficientnet_lite0", path)
    assert str(path) in str(err.value)
    # before any work: a study's route check (validate, and the start of a run) reports it
    from radiodeep.config import parse_config
    from radiodeep.features.deep import deep_config_errors

    (tmp_path / "m.csv").write_text("case_id,image,mask,label\n", encoding="utf-8")
    cfg = parse_config({"cohort": {"manifest": str(tmp_path / "m.csv")},
                        "features": {"deep": {"backbone": "efficientnet_lite0", "weights": str(path),
                                              "layer": "penultimate"}}}, base_dir=tmp_path)
    errors = deep_config_errors(cfg)
    assert [k for k, _ in errors] == ["features.deep.weights"] and str(path) in str(errors[0][1])


# --------------------------------------------------------------------------- the registry and workflow
def test_weights_list_shows_the_packaged_files_present(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("efficientnet_lite0 "))
    assert line.split()[-1] == "yes" and "efficientnet-lite0-57934424.pth" in line
    assert "Apache-2.0" in out
    rows = {r["name"]: r for r in W.listing()}
    assert rows["efficientnet_lite0"]["present"] == str(_lite0_file())
    assert rows["efficientnet_lite0"]["sha256"] == W.file_sha256(_lite0_file())
    assert rows["alexnet"]["sha256"] == "7be5be79" and rows["alexnet"]["file"] == "alexnet-owt-7be5be79.pth"


def test_verify_hashes_every_present_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["weights", "verify"]) == 0
    assert sum(s.startswith("ok") for s in capsys.readouterr().out.splitlines()) == 3
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"0" * 100)  # a damaged torchvision file
    assert main(["weights", "verify"]) == 1
    out = capsys.readouterr().out
    assert "FAIL resnet18" in out and "resnet18-f37072fd.pth" in out


def test_import_copies_a_known_file_and_refuses_others(tmp_path, monkeypatch, capsys, bad_files):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    usb = tmp_path / "usb" / "renamed.pth"
    usb.parent.mkdir()
    shutil.copyfile(_lite0_file(), usb)
    assert main(["weights", "import", str(usb)]) == 0
    dst = tmp_path / "th" / "hub" / "checkpoints" / "efficientnet-lite0-57934424.pth"
    assert dst.is_file() and W.file_sha256(dst) == W.get_known("efficientnet_lite0").sha256
    assert main(["weights", "import", str(bad_files["wrong_hash"])]) == 1
    err = capsys.readouterr().err
    assert str(bad_files["wrong_hash"]) in err and "damaged or not the published file" in err
    assert main(["weights", "import", str(bad_files["not_a_checkpoint"])]) == 1
    assert "matches no known weights file" in capsys.readouterr().err
    assert not (tmp_path / "th" / "hub" / "checkpoints" / "notes.pth").exists()


def test_fetch_downloads_checks_the_hash_and_fails_in_one_line_offline(tmp_path):
    src = _lite0_file()
    entry = W.KnownWeights("lite0_test", "efficientnet-lite0-57934424.pth", W.file_sha256(src), src.stat().st_size,
                           "test", url=src.as_uri())
    W._registry()[entry.name] = entry
    try:
        path = W.fetch(entry.name, progress=False, folder=tmp_path / "hub")  # a real download (file:// URL)
        assert path == tmp_path / "hub" / entry.file and W.downloaded_this_run(path)
        bad = W.KnownWeights("bad_test", "x.pth", "0" * 64, None, "test", url=src.as_uri())
        W._registry()[bad.name] = bad
        with pytest.raises(W.DownloadError, match="wrong sha256; nothing was kept"):
            W.fetch(bad.name, progress=False, folder=tmp_path / "hub2")
        assert not any((tmp_path / "hub2").iterdir())
        off = W.KnownWeights("off_test", "y.pth", "0" * 64, None, "test", url="http://127.0.0.1:9/y.pth")
        W._registry()[off.name] = off
        with pytest.raises(W.DownloadError) as err:
            W.fetch(off.name, progress=False, folder=tmp_path / "hub3")
        assert "\n" not in str(err.value) and "cannot download y.pth" in str(err.value)
    finally:
        for k in ("lite0_test", "bad_test", "off_test"):
            W._registry().pop(k, None)


def test_downloads_are_off_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_ALLOW, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not W.download_allowed()
    with pytest.raises(bb.WeightsNotFound, match="never downloads"):
        bb.resolve_weights("resnet18", "IMAGENET1K_V1")
    from radiodeep.cli_deep import apply_download_option

    apply_download_option(type("A", (), {"allow_download": True})())
    assert W.download_allowed()
    _, prov = load_backbone("efficientnet_lite0", "IMAGENET1K_V1")
    assert prov["allow_download"] is True and "downloaded_at_run_time" not in prov


def test_build_gives_a_trainable_imagenet_network():
    model = bb.build("efficientnet_lite0")
    assert model.training and all(p.requires_grad for p in model.parameters())
    sd = torch.load(_lite0_file(), weights_only=True)
    assert torch.equal(model.classifier.weight, sd["_fc.weight"])


# --------------------------------------------------------------------------- fallbacks and warnings
def test_fallback_replaces_only_absent_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    deep, note = W.fallback_deep_settings({"backbone": "alexnet", "weights": "IMAGENET1K_V1", "layer": "fc7"})
    assert deep["backbone"] == "efficientnet_lite0" and deep["layer"] == "penultimate"
    assert "alexnet weights IMAGENET1K_V1 are not on this machine" in note
    same, note = W.fallback_deep_settings({"backbone": "alexnet", "weights": None, "layer": "fc7"})
    assert same["backbone"] == "alexnet" and note is None  # random weights asked for: kept
    same, note = W.fallback_deep_settings({"backbone": "efficientnet_lite1", "weights": "IMAGENET1K_V1"})
    assert same["backbone"] == "efficientnet_lite1" and note is None


def test_random_weights_banner_and_console_line(tmp_path):
    from radiodeep.pipeline import RunResult
    from radiodeep.report import write_report

    empty = pd.DataFrame()
    kw = dict(title="t", metrics=empty, predictions=empty, selection=empty, delong=empty, failures=empty,
              experiment_errors={}, contact_sheet=None)
    random_prov = {"routes": {"deep": {"weights": {"kind": "random", "seed": 0}}, "handcrafted": {}}}
    html = write_report(tmp_path / "a", provenance=random_prov, **kw).read_text(encoding="utf-8")
    assert "NOT IMAGENET WEIGHTS" in html and html.index("NOT IMAGENET WEIGHTS") < html.index("<h1>")
    real = {"routes": {"deep": {"weights": {"kind": "packaged", "sha256": "57934424"}}}}
    html = write_report(tmp_path / "b", provenance=real, **kw).read_text(encoding="utf-8")
    assert "NOT IMAGENET WEIGHTS" not in html
    summary = RunResult(tmp_path, random_weights=["deep"]).summary()
    assert summary.splitlines()[-1].startswith("WARNING: route(s) deep used RANDOM network weights")
    assert "RANDOM" not in RunResult(tmp_path).summary()
    # a learned experiment fine-tuned from random weights gets the banner too; one trained from
    # scratch by design (no ImageNet start to miss) and one fine-tuned from ImageNet do not
    experiments = [{"name": "ft-random", "classifier": {"name": "cnn_finetune", "backbone": "resnet18", "weights": None}},
                   {"name": "ft-imagenet", "classifier": {"name": "cnn_finetune", "backbone": "resnet18",
                                                          "weights": "IMAGENET1K_V1"}},
                   {"name": "scratch", "classifier": {"name": "cnn_scratch", "architecture": "usf1"}},
                   {"name": "rf", "classifier": {"name": "random_forest"}}]
    html = write_report(tmp_path / "c", provenance={**real, "config": {"experiments": experiments}},
                        **kw).read_text(encoding="utf-8")
    assert "NOT IMAGENET WEIGHTS" in html
    banner = html[html.index("NOT IMAGENET WEIGHTS"):html.index("<h1>")]
    assert "ft-random" in banner and "ft-imagenet" not in banner and "scratch" not in banner
    line = RunResult(tmp_path, random_start=["ft-random"]).summary().splitlines()[-1]
    assert line.startswith("WARNING: experiment(s) ft-random fine-tuned a network from RANDOM weights")


# --------------------------------------------------------------------------- the command line
def test_extract_deep_command_on_pictures_and_volumes(tmp_path, photos):
    from radiodeep.synth import make_cohort

    out = tmp_path / "pics.csv"
    assert main(["extract-deep", str(photos), "--layer", "logits", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out, index_col="case_id")
    assert int(np.argmax(table.loc["coffee.jpg"].values)) in COFFEE
    manifest = make_cohort(tmp_path / "coh", n_cases=3, seed=2, modality="ct")
    plain = tmp_path / "coh" / "plain.csv"
    pd.read_csv(manifest)[["case_id", "image", "mask"]].to_csv(plain, index=False)  # no labels
    out = tmp_path / "vol.csv"
    assert main(["extract-deep", str(plain), "--out", str(out), "--roi-size", "64", "--modality", "CT",
                 "--window", "lung", "--no-progress"]) == 0
    vol = pd.read_csv(out, index_col="case_id")
    assert vol.shape == (3, 1280) and vol.columns[0] == "efficientnet_lite0_penultimate_r_0000"
    # the same as the deep route of a study with the same settings
    from radiodeep.config import parse_config
    from radiodeep.cohort import read_manifest
    from radiodeep.features.deep import extract_deep

    cfg = parse_config({"cohort": {"manifest": str(manifest), "positive_label": "short"},
                        "roi": {"size": 64, "intensity": {"modality": "CT", "window": "lung"}},
                        "features": {"deep": {"backbone": "efficientnet_lite0", "layer": "penultimate"}},
                        "output": str(tmp_path / "study")}, base_dir=tmp_path)
    cohort, _ = read_manifest(manifest, positive_label="short")
    study = extract_deep(cohort, cfg, progress=False).features
    np.testing.assert_allclose(vol.loc[study.index].values, study.values, rtol=1e-6, atol=1e-6)


def test_help_lists_the_new_commands():
    out = subprocess.run([sys.executable, "-m", "radiodeep.cli", "--help"], capture_output=True, text=True)
    assert "weights" in out.stdout and "extract-deep" in out.stdout


def test_demo_study_uses_imagenet_features_when_alexnet_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))  # no torchvision weights here
    from radiodeep.demo import demo_config
    from radiodeep.features.weights import fallback_deep_settings

    deep, note = fallback_deep_settings(demo_config()["features"]["deep"])
    assert deep["backbone"] == "efficientnet_lite0" and deep["weights"] == "IMAGENET1K_V1" and note
    study = yaml.safe_load(yaml.safe_dump(demo_config(deep=deep)))
    assert study["features"]["deep"]["backbone"] == "efficientnet_lite0"


def test_a_run_on_random_weights_says_so_at_the_end_and_in_the_report(tmp_path, capsys):
    from radiodeep.synth import make_cohort

    make_cohort(tmp_path / "c", n_cases=8, seed=3, modality="ct")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "c/manifest.csv", "positive_label": "short"},
        "roi": {"size": 32},
        "features": {"deep": {"backbone": "resnet18", "weights": None, "layer": "penultimate", "device": "cpu"}},
        "experiments": [{"name": "d", "features": ["deep"], "select": {"method": "su", "k": 3},
                         "classifier": "naive_bayes"}],
        "evaluation": {"scheme": "repeated_kfold", "folds": 2, "repeats": 1, "seed": 0},
        "execution": {"n_jobs": 1}}), encoding="utf-8")
    assert main(["run", str(study), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("WARNING: route(s) deep used RANDOM network weights")
    html = (tmp_path / "results" / "report.html").read_text(encoding="utf-8")
    assert html.index("NOT IMAGENET WEIGHTS") < html.index("<h1>")
