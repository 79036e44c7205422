"""The deep route end to end on tiny real files: names, cache and resume, channels, pooling, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import tiny_case, write_manifest
from radiodeep import roi
from radiodeep.cohort import read_manifest
from radiodeep.config import parse_config
from radiodeep.features.backbones import WeightsNotFound, feature_extractor, load_backbone, make_normaliser
from radiodeep.features.deep import deep_settings, extract_deep, feature_names
from radiodeep.features.store import export_csv
from radiodeep.imageio import read_case_images

N_CASES = 3


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deep")
    rows = []
    for i in range(N_CASES):
        ip, mp = tiny_case(tmp / "data", f"c{i}", seed=i)
        rows.append({"case_id": f"c{i}", "image": str(ip), "mask": str(mp), "label": "ab"[i % 2]})
    ip, mp = tiny_case(tmp / "data", "empty", empty=True)
    bad = rows + [{"case_id": "empty", "image": str(ip), "mask": str(mp), "label": "a"}]
    return write_manifest(tmp / "cohort.csv", rows), write_manifest(tmp / "with_bad.csv", bad)


def _setup(tmp_path, manifest, roi_cfg=None, execution=None, **deep):
    """Config and cohort; alexnet fc7 with random weights unless told otherwise."""
    data = {
        "cohort": {"manifest": str(manifest), "positive_label": "b"},
        "roi": {"size": 64, "window_px": 16, **(roi_cfg or {})},
        "features": {"deep": {"backbone": "alexnet", "weights": None, "device": "cpu", "batch_size": 8, **deep}},
        "output": str(tmp_path / "out"),
        "execution": execution or {},
    }
    config = parse_config(data, base_dir=tmp_path)
    cohort, problems = read_manifest(manifest, positive_label="b")
    return config, cohort


def _views(config, cohort, case_id):
    case = next(c for c in cohort.cases if c.case_id == case_id)
    image, mask = read_case_images(case)
    return roi.prepare_case(image, mask, config.roi, config.features.deep.channels, case_id)


# the mechanics (cache, pooling, batching, failures) run on resnet18, cheaper to build than alexnet
FAST = {"backbone": "resnet18", "layer": "penultimate"}


def _direct(crops: np.ndarray, backbone="alexnet", layer="fc7", activation="post_relu"):
    """Features of crops (n, 3, S, S) in [0, 1] fed straight to the (seeded random) network."""
    model, _ = load_backbone(backbone, None)
    x = make_normaliser(model, backbone)(torch.from_numpy(np.array(crops, dtype=np.float32)))
    return feature_extractor(model, backbone, layer, activation)(x).numpy().astype(np.float64)


def test_table_names_index_and_provenance(tmp_path, cohort_files):
    config, cohort = _setup(tmp_path, cohort_files[0])
    res = extract_deep(cohort, config, progress=False)
    assert res.route == "deep" and not res.failures
    assert list(res.features.index) == ["c0", "c1", "c2"] and res.features.index.name == "case_id"
    assert res.features.shape == (3, 4096)
    assert res.features.columns[0] == "alexnet_fc7_r_0000"
    assert res.features.columns[-1] == "alexnet_fc7_r_4095"
    assert np.isfinite(res.features.to_numpy()).all() and (res.features.to_numpy() >= 0).all()
    prov = res.provenance
    assert prov["backbone"] == "alexnet" and prov["layer"] == "fc7" and prov["module"] == "classifier.4"
    assert prov["activation"] == "post_relu" and prov["channels"] == "r"
    assert prov["weights"]["kind"] == "random"
    assert prov["roi"]["crop"] == "window" and prov["roi"]["window_px"] == 16 and prov["roi"]["size"] == 64
    assert prov["normalisation"]["scheme"] == "imagenet"
    assert prov["cache"]["computed"] == 3 and prov["cache"]["cached"] == 0
    out = export_csv(res.features, tmp_path / "features_deep.csv", prov)
    written = json.loads(out.with_suffix(".provenance.json").read_text(encoding="utf-8"))
    assert written["backbone"] == "alexnet" and written["weights"]["kind"] == "random"
    assert written["n_features"] == 4096


def test_outputs_identical_across_runs_and_cache_resumes(tmp_path, cohort_files, monkeypatch):
    config, cohort = _setup(tmp_path / "a", cohort_files[0])
    first = extract_deep(cohort, config, progress=False)
    other, _ = _setup(tmp_path / "b", cohort_files[0])  # a fresh cache: computed again
    second = extract_deep(cohort, other, progress=False)
    assert other.cache_dir != config.cache_dir
    assert np.array_equal(first.features.to_numpy(), second.features.to_numpy())

    calls = []
    original = roi.prepare_case
    monkeypatch.setattr(roi, "prepare_case", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    cached = extract_deep(cohort, config, progress=False)
    assert calls == [] and cached.provenance["cache"] == {**cached.provenance["cache"], "cached": 3, "computed": 0}
    assert np.array_equal(cached.features.to_numpy(), first.features.to_numpy())

    # an interrupted run: one case's entry is missing -> only that case is computed again
    store_dir = config.cache_dir / "deep" / first.provenance["cache"]["key"]
    (store_dir / "c1.npz").unlink()
    resumed = extract_deep(cohort, config, progress=False)
    assert calls == ["c1"]
    assert resumed.provenance["cache"]["computed"] == 1 and resumed.provenance["cache"]["cached"] == 2
    np.testing.assert_allclose(resumed.features.to_numpy(), first.features.to_numpy(), rtol=1e-5, atol=1e-7)


def test_r_strategy_equals_feeding_x_0_0(tmp_path, cohort_files):
    config, cohort = _setup(tmp_path, cohort_files[0])
    res = extract_deep(cohort, config, progress=False)
    views = _views(config, cohort, "c2")
    grey = views.grey  # (n_slices, S, S) in [0, 1]
    crops = np.zeros((grey.shape[0], 3) + grey.shape[1:], np.float32)
    crops[:, 0] = grey
    np.testing.assert_array_equal(views.views["r"], crops)
    expect = _direct(crops).mean(axis=0)
    np.testing.assert_allclose(res.features.loc["c2"].to_numpy(), expect, rtol=1e-4, atol=1e-6)


def test_each_gives_three_sets_named_by_channel(tmp_path, cohort_files):
    config, cohort = _setup(tmp_path, cohort_files[0], channels="each", layer="fc6", activation="pre_relu")
    res = extract_deep(cohort, config, progress=False)
    assert res.features.shape == (3, 3 * 4096)
    for tag in "rgb":
        assert f"alexnet_fc6_{tag}_0000" in res.features.columns
        assert f"alexnet_fc6_{tag}_4095" in res.features.columns
    assert (res.features.to_numpy() < 0).any()  # pre-ReLU values
    r_only, _ = _setup(tmp_path / "r", cohort_files[0], channels="r", layer="fc6", activation="pre_relu")
    r_res = extract_deep(cohort, r_only, progress=False)
    r_cols = [c for c in res.features.columns if c.startswith("alexnet_fc6_r_")]
    np.testing.assert_allclose(res.features[r_cols].to_numpy(), r_res.features.to_numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(res.features[r_cols].to_numpy(),
                           res.features[[c.replace("_r_", "_g_") for c in r_cols]].to_numpy())


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_slices_are_pooled_per_case(tmp_path, cohort_files, pooling):
    config, cohort = _setup(tmp_path, cohort_files[0], roi_cfg={"slice": "all"}, slice_pooling=pooling,
                            batch_size=3, **FAST)  # batches cut across cases
    res = extract_deep(cohort, config, progress=False)
    views = _views(config, cohort, "c1")
    assert views.n_slices == 4
    per_slice = _direct(views.views["r"], **FAST)
    expect = per_slice.mean(axis=0) if pooling == "mean" else per_slice.max(axis=0)
    np.testing.assert_allclose(res.features.loc["c1"].to_numpy(), expect, rtol=1e-4, atol=1e-6)
    assert res.diagnostics.loc["c1", "deep_slices"] == ";".join(str(s) for s in views.slice_indices)


def test_batch_size_does_not_change_the_values(tmp_path, cohort_files):
    one, cohort = _setup(tmp_path / "1", cohort_files[0], batch_size=1, **FAST)
    many, _ = _setup(tmp_path / "64", cohort_files[0], batch_size=64, **FAST)
    assert deep_settings(one) == deep_settings(many)  # same cache key
    a = extract_deep(cohort, one, progress=False).features.to_numpy()
    b = extract_deep(cohort, many, progress=False).features.to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_cases_values_do_not_depend_on_the_other_cases_or_the_workers(tmp_path, cohort_files):
    """A case's crops go through the network in batches of their own: its values are the same
    bits alone, beside other cases (whose crops once shared its batches), from cache-less worker
    processes finishing in any order."""
    from radiodeep.cohort import Cohort

    deep = dict(roi_cfg={"slice": "all"}, batch_size=3, threads=1)  # 4 slices a case: 3 + 1
    config, cohort = _setup(tmp_path / "all", cohort_files[0], **deep)
    together = extract_deep(cohort, config, progress=False).features
    alone_cfg, _ = _setup(tmp_path / "alone", cohort_files[0], **deep)
    alone = extract_deep(Cohort([c for c in cohort.cases if c.case_id == "c1"]), alone_cfg,
                         progress=False).features
    assert together.loc[["c1"]].to_numpy().tobytes() == alone.to_numpy().tobytes()
    workers_cfg, _ = _setup(tmp_path / "workers", cohort_files[0], execution={"n_jobs": 2}, **deep)
    workers = extract_deep(cohort, workers_cfg, progress=False).features
    assert together.to_numpy().tobytes() == workers.to_numpy().tobytes()


def test_a_worker_that_reads_other_weights_fails_its_cases(tmp_path, cohort_files):
    """On a Dask worker the network is loaded from the worker's own view of the weights file:
    when that is not the file the client keyed, the case fails instead of computing other values."""
    import dataclasses

    from radiodeep.features.deep import _case_on_worker, _networks, _worker_network, settings_from_config

    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    settings = settings_from_config(config)
    case = cohort.cases[0]
    out = _case_on_worker(case, settings)
    assert out.error is None and out.device == "cpu" and out.pooled["r"].shape == (512,)
    assert out.loaded["kind"] == "random"  # every case says which weights it ran on
    before = list(_networks.values())
    net = _worker_network(settings)  # loaded once per worker thread (CPU), by the first case
    assert any(net is n for n in before) and _worker_network(settings) is net
    again = _case_on_worker(case, settings)
    assert again.pooled["r"].tobytes() == out.pooled["r"].tobytes()
    # a worker's task threads each run their own CPU network, side by side, with the same values
    import threading

    got, both = {}, threading.Barrier(2)

    def task(i):
        both.wait()  # both threads alive at once: two threads, two networks
        got[i] = (_worker_network(settings), _case_on_worker(case, settings).pooled["r"].tobytes())
        both.wait()

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0][0] is not got[1][0] and got[0][1] == got[1][1] == out.pooled["r"].tobytes()
    other = dataclasses.replace(settings, weights={**settings.weights, "seed": 1})
    failed = _case_on_worker(case, other, previews=frozenset({case.case_id}))
    assert failed.pooled is None and "the workers must see the same files" in failed.error
    assert failed.preview  # the case's crop still shows on the contact sheet
    preview_only = _case_on_worker(case, settings, cached=frozenset({case.case_id}),
                                   previews=frozenset({case.case_id}))
    assert preview_only.pooled is None and [label for label, _ in preview_only.preview] == [case.case_id]


def test_a_worker_finds_installed_weights_in_its_own_environment(tmp_path, cohort_files):
    """Installed (or hub-cache) weights at another path on the worker (its own virtual environment)
    are looked up there by name and checked by sha256: the same features as the client's file."""
    import dataclasses

    from radiodeep.features.deep import (_Network, _case_on_worker, _networks, _prepare_views, pick_device,
                                         settings_from_config)

    config, cohort = _setup(tmp_path, cohort_files[0], backbone="efficientnet_lite0", layer="penultimate",
                            weights="IMAGENET1K_V1", threads=1)
    settings = settings_from_config(config)
    assert settings.weights_source.kind == "packaged"
    elsewhere = dataclasses.replace(settings, weights_source=dataclasses.replace(
        settings.weights_source, path=tmp_path / "client-venv" / settings.weights_source.path.name))
    _networks.clear()
    out = _case_on_worker(cohort.cases[0], elsewhere)
    assert out.loaded["sha256"] == settings.weights["sha256"]
    views = _prepare_views(cohort.cases[0], settings)
    expect = _Network(settings, pick_device("cpu")).case_features("c0", views.views)
    assert out.pooled["r"].tobytes() == expect["r"].tobytes()



def test_a_large_cohorts_contact_sheet_shows_an_even_spread_and_rereads_only_those(tmp_path, cohort_files,
                                                                                   monkeypatch):
    """Above qc.SHEET_MAX_CASES cases the sheet shows that many, evenly spread (first and last
    included); a rerun reads again only those cached cases, not the whole cohort."""
    from radiodeep import qc
    from radiodeep.features import deep as deep_route
    from radiodeep.qc import sheet_cases

    assert sheet_cases([f"c{i}" for i in range(10)], 4) == ["c0", "c3", "c6", "c9"]
    assert sheet_cases(["a", "b"], 4) == ["a", "b"]
    monkeypatch.setattr(qc, "SHEET_MAX_CASES", 2)
    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    first = extract_deep(cohort, config, progress=False, previews=True)
    assert [label for label, _ in first.previews] == ["c0", "c2"] and len(first.features) == 3
    assert first.provenance["contact_sheet"] == {"cases": 2, "of": 3}
    opened = []
    original = deep_route._prepare_views
    monkeypatch.setattr(deep_route, "_prepare_views",
                        lambda case, settings: opened.append(case.case_id) or original(case, settings))
    again = extract_deep(cohort, config, progress=False, previews=True)
    assert sorted(opened) == ["c0", "c2"] and again.provenance["cache"]["cached"] == 3
    assert [label for label, _ in again.previews] == ["c0", "c2"]


def test_failed_case_is_reported_and_the_rest_goes_on(tmp_path, cohort_files):
    config, cohort = _setup(tmp_path, cohort_files[1], **FAST)
    res = extract_deep(cohort, config, progress=False, previews=True)
    qc = res.previews
    assert list(res.features.index) == ["c0", "c1", "c2"]
    assert len(res.failures) == 1
    f = res.failures[0]
    assert f.case_id == "empty" and f.stage == "deep" and "empty" in f.reason
    assert [c for c, _ in qc] == ["c0", "c1", "c2"]
    assert all(g.shape == (64, 64) for _, g in qc)
    again = extract_deep(cohort, config, progress=False, previews=True)  # cached cases still give previews
    qc2 = again.previews
    assert again.provenance["cache"]["cached"] == 3 and [c for c, _ in qc2] == ["c0", "c1", "c2"]
    assert len(again.failures) == 1


def test_qc_shows_what_the_network_sees(tmp_path, cohort_files):
    """Composite strategies show their RGB input; 'all' slices show every slice, labelled."""
    config, cohort = _setup(tmp_path / "w", cohort_files[0], channels="ct_windows", **FAST,
                            roi_cfg={"intensity": {"windows": ["lung", "mediastinum", "bone"]}})
    qc = extract_deep(cohort, config, progress=False, previews=True).previews
    views = _views(config, cohort, "c1")
    assert [c for c, _ in qc] == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(dict(qc)["c1"], views.views["ct_windows"][0])  # (3, 64, 64) RGB
    config, cohort = _setup(tmp_path / "a", cohort_files[0], roi_cfg={"slice": "all"}, **FAST)
    qc = extract_deep(cohort, config, progress=False, previews=True).previews
    views = _views(config, cohort, "c1")
    assert len(views.slice_indices) > 1
    labels = [c for c, _ in qc if c.startswith("c1 ")]
    assert labels == [f"c1 [{k}]" for k in views.slice_indices]
    np.testing.assert_array_equal(dict(qc)[labels[-1]], views.grey[-1])  # 64 px: no subsampling needed


def test_preparation_in_worker_processes_gives_the_same_table(tmp_path, cohort_files):
    serial, cohort = _setup(tmp_path / "1", cohort_files[1], **FAST)
    workers, _ = _setup(tmp_path / "2", cohort_files[1], execution={"n_jobs": 2}, **FAST)
    a = extract_deep(cohort, serial, progress=False, previews=True)
    b = extract_deep(cohort, workers, progress=False, previews=True)
    qc1, qc2 = a.previews, b.previews
    assert list(b.features.index) == ["c0", "c1", "c2"]  # cohort order, whatever the completion order
    np.testing.assert_allclose(a.features.to_numpy(), b.features.to_numpy(), rtol=1e-5, atol=1e-7)
    assert [(f.case_id, f.stage, f.reason) for f in a.failures] == [(f.case_id, f.stage, f.reason) for f in b.failures]
    assert [c for c, _ in qc2] == ["c0", "c1", "c2"]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(qc1, qc2))


def test_non_finite_features_fail_the_case(tmp_path, cohort_files, monkeypatch):
    original = roi.prepare_case

    def poisoned(image, mask, roi_cfg, channels, case_id, **kw):
        views = original(image, mask, roi_cfg, channels, case_id, **kw)
        if case_id == "c1":
            views.views["r"][:] = np.nan
        return views

    monkeypatch.setattr(roi, "prepare_case", poisoned)
    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    res = extract_deep(cohort, config, progress=False)
    assert list(res.features.index) == ["c0", "c2"]
    assert [(f.case_id, f.stage) for f in res.failures] == [("c1", "deep")]
    assert "not finite" in res.failures[0].reason


def test_settings_key_tracks_what_changes_the_values(tmp_path, cohort_files):
    base, _ = _setup(tmp_path, cohort_files[0])
    key = deep_settings(base)
    for roi_cfg, deep in (({"size": 96}, {}), ({}, {"layer": "fc6"}), ({}, {"activation": "pre_relu"}),
                          ({}, {"channels": "grey3"}), ({}, {"slice_pooling": "max"})):
        other, _ = _setup(tmp_path, cohort_files[0], roi_cfg=roi_cfg, **deep)
        assert deep_settings(other) != key, (roi_cfg, deep)
    same, _ = _setup(tmp_path, cohort_files[0], threads=1, batch_size=3)
    assert deep_settings(same) == key


def test_missing_weights_fail_before_any_case(tmp_path, cohort_files, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    config, cohort = _setup(tmp_path, cohort_files[0], weights="IMAGENET1K_V1")
    with pytest.raises(WeightsNotFound, match="alexnet-owt-7be5be79.pth"):
        extract_deep(cohort, config, progress=False)
    assert not (tmp_path / "out").exists()


def test_cnn_f_needs_its_input_size(tmp_path, cohort_files):
    from test_backbones import write_fake_cnn_f

    write_fake_cnn_f(tmp_path / "imagenet-vgg-f.mat")
    config, cohort = _setup(tmp_path, cohort_files[0], backbone="cnn_f", weights="imagenet-vgg-f.mat")
    with pytest.raises(ValueError, match="roi.size"):
        extract_deep(cohort, config, progress=False)
    config, cohort = _setup(tmp_path, cohort_files[0], roi_cfg={"size": 224}, backbone="cnn_f",
                            weights="imagenet-vgg-f.mat")
    res = extract_deep(cohort, config, progress=False)
    assert res.features.shape == (3, 16) and res.features.columns[0] == "cnn_f_fc7_r_0000"
    assert res.provenance["weights"]["kind"] == "matconvnet"
    assert res.provenance["normalisation"]["scheme"] == "matconvnet"


def test_feature_names_are_stable():
    assert feature_names("vgg16", "fc7", "g", 3) == ["vgg16_fc7_g_0000", "vgg16_fc7_g_0001", "vgg16_fc7_g_0002"]
    assert feature_names("alexnet", "features.10", "r", 43264)[-1] == "alexnet_features-10_r_43263"


def test_device_choice():
    from radiodeep.features.deep import pick_device

    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device is 'cuda' but torch sees no CUDA device"):
            pick_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_is_checked_where_the_network_runs(tmp_path, cohort_files):
    """Locally the run is refused up front; on Dask the workers' GPUs count (a client without one
    may drive GPU workers), and a worker without CUDA fails its cases, by case id."""
    from radiodeep.features.deep import _case_on_worker, check_deep_config, settings_from_config

    local, cohort = _setup(tmp_path, cohort_files[0], device="cuda", **FAST)
    assert any(p.startswith("features.deep.device") and "no CUDA" in p for p in check_deep_config(local))
    remote, _ = _setup(tmp_path, cohort_files[0], device="cuda",
                       execution={"backend": "dask", "address": "tcp://127.0.0.1:1"}, **FAST)
    assert check_deep_config(remote) == []
    out = _case_on_worker(cohort.cases[0], settings_from_config(remote))
    assert out.pooled is None and "device is 'cuda' but torch sees no CUDA device" in out.error


def test_an_unexpected_error_in_one_case_fails_that_case_only(tmp_path, cohort_files, monkeypatch):
    """One failure policy for both routes: the deep route used to abort on a non-CaseError."""
    original = roi.prepare_case

    def breaks_on_c1(image, mask, roi_cfg, channels, case_id, **kw):
        if case_id == "c1":
            raise ZeroDivisionError("something nobody foresaw")
        return original(image, mask, roi_cfg, channels, case_id, **kw)

    monkeypatch.setattr(roi, "prepare_case", breaks_on_c1)
    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    res = extract_deep(cohort, config, progress=False)
    assert list(res.features.index) == ["c0", "c2"]
    assert [(f.case_id, f.stage, f.reason) for f in res.failures] == [
        ("c1", "deep", "ZeroDivisionError: something nobody foresaw")]


def test_edited_cache_entry_is_recomputed_and_counted(tmp_path, cohort_files, caplog):
    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    first = extract_deep(cohort, config, progress=False)
    entry = config.cache_dir / "deep" / first.provenance["cache"]["key"] / "c2.npz"
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["values"] = arrays["values"] * 2  # well-formed, same fingerprint: only the values edited
    with open(entry, "wb") as fh:
        np.savez(fh, **arrays)
    with caplog.at_level("WARNING"):
        again = extract_deep(cohort, config, progress=False)
    assert again.provenance["cache"] == {**again.provenance["cache"], "cached": 2, "computed": 1, "damaged": 1}
    assert "1 damaged cache entry recomputed: c2" in caplog.text
    # recomputed, not doubled (a batch of one case rounds differently from a batch of three)
    np.testing.assert_allclose(again.features.to_numpy(), first.features.to_numpy(), rtol=1e-4, atol=1e-6)


def test_the_route_receives_only_its_settings_slice(tmp_path, cohort_files):
    """What the route reads is its settings object; what does not change values is not keyed."""
    from radiodeep.features import deep
    from radiodeep.features.routes import RunContext

    config, cohort = _setup(tmp_path, cohort_files[0], **FAST)
    settings = deep.settings_from_config(config)
    key = settings.key_dict()
    assert "batch_size" not in key and "device" not in key and "weights_source" not in key
    assert key["geometry"] == {"tolerance": config.cohort.geometry_tolerance, "resample_mask": False}
    context = RunContext(tmp_path / "cache", progress=False, previews=True)
    res = deep.extract(cohort, settings, context)
    assert len(res.previews) == 3 and res.provenance["cache"]["key"] == settings.cache_key()
    assert res.provenance["roi_label"] == {"label": 1, "source": "default", "cases_with_own_label": {}}
