"""A cohort of RTSTRUCT and DICOM-SEG cases driven through the command line as a user
would: per-case ROI names, a misspelt name (did-you-mean), a corrupt file that fails its
case alone; and no identifying header value reaching any output, log or report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dicom_helpers import PHI_STRINGS, circle, slice_points, write_ct_series, write_rtstruct, write_seg


def _cohort(tmp_path: Path) -> Path:
    rows = []
    shape, spacing = (6, 32, 32), (1.0, 1.0, 2.0)
    for i in range(6):
        cid = f"p{i}"
        folder = tmp_path / cid
        series = write_ct_series(folder / "ct", shape=shape, spacing=spacing, seed=i)
        r = 6.0 + i
        if i == 1:  # a DICOM-SEG case
            lab = np.zeros(shape, np.uint8)
            lab[2:4, 10:10 + i + 8, 8:20] = 1
            lab[1, 0:4, 0:4] = 2
            mask, roi = write_seg(folder / "seg.dcm", folder / "ct", lab), "1"
        else:
            contours = [(slice_points(series, k, circle(15.5, 15.5, r)), k) for k in (2, 3)]
            body = [(slice_points(series, k, circle(15.5, 15.5, 15.0)), k) for k in range(6)]
            mask = write_rtstruct(folder / "RS.dcm", series, {"GTV_Mass": contours, "Body": body})
            roi = "(?i)^gtv"
        if i == 3:
            roi = "GVT_Mass"  # misspelt: neither the exact name nor a regex that matches
        if i == 4:
            data = mask.read_bytes()
            mask.write_bytes(data[: len(data) // 2])  # a corrupt (truncated) RTSTRUCT
        rows.append({"case_id": cid, "image": f"{cid}/ct", "mask": str(mask.relative_to(tmp_path)),
                     "label": "ab"[i % 2], "roi_name": roi})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "setting": {"binWidth": 25, "label": 1}, "imageType": {"Original": {}},
        "featureClass": {"firstorder": ["Mean"], "shape": ["VoxelVolume"]}}), encoding="utf-8")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "cohort.csv", "positive_label": "b", "on_invalid": "skip"},
        "features": {"handcrafted": {"params": "params.yaml", "mode": "3d"}},
        "output": "results"}), encoding="utf-8")
    return study


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radiodeep.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=600)


def test_rtstruct_and_seg_cohort_through_the_cli_without_phi(tmp_path):
    study = _cohort(tmp_path)
    for f in ("p0/RS.dcm", "p1/seg.dcm", "p0/ct/slice000.dcm"):  # the inputs do carry the values
        assert all(s.encode("utf-8") in (tmp_path / f).read_bytes() for s in ("Zyxqvist", "PHIID-774411"))
    val = _cli("validate", str(study))
    assert val.returncode == 1, val.stderr
    err = val.stderr
    assert "note: case p0: ROI 'GTV_Mass' taken (roi_name '(?i)^gtv' matched 1 of 2: 'GTV_Mass', 'Body')" in err
    assert "note: case p1: segment 1 ('Lesion 1') taken (roi_name 1)" in err
    assert ("case p3: no structure in the RTSTRUCT matches roi_name 'GVT_Mass' (names available: 'GTV_Mass', "
            "'Body'); did you mean 'GTV_Mass'?") in err
    assert "case p4:" in err and "RS.dcm" in err
    assert not any(f"case {c}:" in line for c in ("p0", "p1", "p2", "p5") for line in err.splitlines()
                   if not line.startswith("note:"))
    run = _cli("run", str(study), "--only", "extract")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "results"
    feats = pd.read_csv(out / "features_handcrafted.csv", index_col="case_id")
    assert sorted(feats.index) == ["p0", "p1", "p2", "p5"]
    # the GTV is two slices of a disc of radius 6 + i mm (1 mm pixels, 2 mm slices), not the body
    for i in (0, 2, 5):
        disc = np.pi * (6.0 + i) ** 2 * 2 * 2.0
        assert abs(feats.loc[f"p{i}", "original_shape_VoxelVolume"] - disc) / disc < 0.05  # pixelised disc
    assert feats.loc["p1", "original_shape_VoxelVolume"] == 2 * 9 * 12 * 2.0
    failures = pd.read_csv(out / "failures.csv")
    assert sorted(failures["case_id"]) == ["p3", "p4"]
    # no identifying value from any header anywhere: stdout, stderr, every file written
    texts = [val.stdout, val.stderr, run.stdout, run.stderr]
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert len(blobs) >= 5 and any(p.suffix == ".npz" for p in out.rglob("*"))
    for s in PHI_STRINGS:
        assert not any(s in t for t in texts), s
        assert not any(s.encode("utf-8") in b for b in blobs), s
    # compressed files (the mask cache) are checked on their content too
    for p in out.rglob("*.npz"):
        with np.load(p) as z:
            for key in z.files:
                assert not any(s in str(z[key].tolist()) for s in PHI_STRINGS)


def _gtv_body_cohort(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        folder = tmp_path / f"q{i}"
        series = write_ct_series(folder / "ct", shape=(4, 24, 24), seed=i)
        gtv = [(slice_points(series, k, circle(11.5, 11.5, 4.0 + i)), k) for k in (1, 2)]
        body = [(slice_points(series, k, circle(11.5, 11.5, 10.0)), k) for k in range(4)]
        rs = write_rtstruct(folder / "RS.dcm", series, {"GTV": gtv, "Body": body})
        rows.append({"case_id": f"q{i}", "image": f"q{i}/ct", "mask": str(rs.relative_to(tmp_path)),
                     "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "setting": {"binWidth": 25}, "imageType": {"Original": {}},
        "featureClass": {"shape": ["VoxelVolume"]}}), encoding="utf-8")


def test_changing_roi_name_recomputes_the_features(tmp_path, capsys):
    """The feature cache knows which structure was the ROI: GTV, then Body, then GTV again."""
    from radiodeep.cli import main

    _gtv_body_cohort(tmp_path)
    volumes = []
    for roi in ("GTV", "Body", "GTV"):
        study = tmp_path / "study.yaml"
        study.write_text(yaml.safe_dump({
            "cohort": {"manifest": "cohort.csv", "positive_label": "b", "roi_name": roi},
            "features": {"handcrafted": {"params": "params.yaml", "mode": "3d"}},
            "output": "results"}), encoding="utf-8")
        assert main(["run", str(study), "--only", "extract"]) == 0
        feats = pd.read_csv(tmp_path / "results" / "features_handcrafted.csv", index_col="case_id")
        volumes.append(feats["original_shape_VoxelVolume"].to_numpy())
    assert (volumes[1] > 2 * volumes[0]).all()  # the body, not the cached GTV
    assert (volumes[2] == volumes[0]).all()


def test_deep_route_reads_rtstruct_masks(tmp_path, capsys):
    """The deep route crops around the RTSTRUCT's ROI like around any mask (random weights: tests only)."""
    from radiodeep.cli import main

    _gtv_body_cohort(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "cohort": {"manifest": "cohort.csv", "positive_label": "b", "roi_name": "GTV"},
        "roi": {"crop": "exact", "size": 64},
        "features": {"deep": {"backbone": "alexnet", "weights": None, "layer": "fc6", "device": "cpu"}},
        "output": "results", "execution": {"progress": False}}), encoding="utf-8")
    assert main(["run", str(study), "--only", "extract"]) == 0
    feats = pd.read_csv(tmp_path / "results" / "features_deep.csv", index_col="case_id")
    assert sorted(feats.index) == ["q0", "q1", "q2", "q3"] and feats.shape[1] == 4096
    assert np.isfinite(feats.to_numpy()).all() and feats.std(axis=0).max() > 0
