"""The phantom cohort: deterministic, varied acquisition, two overlapping classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk

from radiodeep.synth import POSITIVE, make_case, make_cohort


def test_cohort_files_manifest_and_determinism(tmp_path):
    m1 = make_cohort(tmp_path / "a", n_cases=6, seed=3)
    m2 = make_cohort(tmp_path / "b", n_cases=6, seed=3)
    df = pd.read_csv(m1)
    assert list(df.columns[:4]) == ["case_id", "image", "mask", "label"]
    assert sorted(df.label.value_counts().tolist()) == [3, 3]
    for rel in df.image:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(m1.parent / rel)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(m2.parent / rel)))
        assert np.array_equal(a, b)
    img = sitk.ReadImage(str(m1.parent / df.image[0]))
    mask = sitk.ReadImage(str(m1.parent / df["mask"][0]))
    assert img.GetSpacing() == mask.GetSpacing() and img.GetSize() == mask.GetSize()


def test_a_case_does_not_depend_on_cohort_size(tmp_path):
    """Case i of a 3-case cohort is case i of a 6-case cohort: files, label and geometry."""
    small = pd.read_csv(make_cohort(tmp_path / "small", n_cases=3, seed=1))
    large = pd.read_csv(make_cohort(tmp_path / "large", n_cases=6, seed=1))
    pd.testing.assert_frame_equal(small, large.iloc[:3])
    for rel in list(small.image) + list(small["mask"]):
        a = sitk.ReadImage(str(tmp_path / "small" / rel))
        b = sitk.ReadImage(str(tmp_path / "large" / rel))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert (a.GetSpacing(), a.GetOrigin()) == (b.GetSpacing(), b.GetOrigin())
    assert not np.array_equal(make_case(4, seed=1).mask, make_case(4, seed=2).mask)  # the seed matters


def test_acquisition_varies_and_ct_is_in_hu():
    cases = [make_case(i, seed=0) for i in range(8)]
    assert len({c.spacing for c in cases}) == 8
    for c in cases:
        assert c.image.min() < -900  # air
        assert c.mask.sum() > 50
        assert -200 < float(np.median(c.image[c.mask > 0])) < 200  # soft-tissue lesion


def test_classes_differ_on_average_but_overlap():
    het = {True: [], False: []}
    for i in range(40):
        c = make_case(i, seed=0)
        # heterogeneity: lesion std after removing the acquisition noise floor is not known,
        # so compare the raw lesion std between classes
        het[c.label == POSITIVE].append(float(c.image[c.mask > 0].std()))
    pos, neg = np.array(het[True]), np.array(het[False])
    assert pos.mean() > neg.mean()
    assert pos.min() < neg.max()  # overlap: the task is not trivial


def test_mr_has_three_sequences_and_split(tmp_path):
    m = make_cohort(tmp_path, n_cases=8, seed=0, modality="mr", split=True)
    df = pd.read_csv(m)
    assert {"t2", "flair", "split"} <= set(df.columns)
    assert set(df.split) == {"train", "test"}
    for split in ("train", "test"):
        assert df[df.split == split].label.nunique() == 2


def test_acquisition_options_change_the_scan_not_the_defaults(tmp_path):
    import hashlib

    from radiodeep.synth import ACQUISITIONS, Acquisition, make_case, make_cohort_pair

    a = make_case(2, seed=4)
    b = make_case(2, seed=4, acquisition=Acquisition())
    assert hashlib.sha1(a.image.tobytes()).digest() == hashlib.sha1(b.image.tobytes()).digest()
    c1 = make_case(2, seed=4, acquisition=ACQUISITIONS["cohort1"])
    c2 = make_case(2, seed=4, acquisition=ACQUISITIONS["cohort2"])
    assert c1.label == c2.label == a.label
    assert 0.6 <= c1.spacing[0] <= 0.8 and 0.9 <= c2.spacing[0] <= 1.1
    assert c1.spacing[2] <= 1.5 and c2.spacing[2] >= 2.5

    def noise(img):  # high-frequency energy inside the air: noise and kernel
        air = img[:, :6, :6]
        return np.abs(np.diff(air, axis=-1)).mean()

    assert noise(c1.image) > 3 * noise(c2.image)
    manifest = make_cohort_pair(tmp_path / "pair", n_train=4, n_test=4, seed=3)
    df = pd.read_csv(manifest)
    assert list(df.split) == ["train"] * 4 + ["test"] * 4
    assert df.case_id.is_unique and df.case_id.str[:3].tolist() == ["c1_"] * 4 + ["c2_"] * 4
    assert all((manifest.parent / p).is_file() for p in df.image)
    assert sorted(df.query("split == 'test'").label) == ["long", "long", "short", "short"]


def test_synth_pair_command(tmp_path, capsys):
    from radiodeep.cli import main

    assert main(["synth", str(tmp_path / "p"), "--pair", "--cases", "2", "--seed", "1"]) == 0
    assert "split: train = cohort 1" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "p" / "manifest.csv")
    assert list(df.split) == ["train", "train", "test", "test"]
