"""The per-case feature cache and CSV export."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from radiodeep.features.store import FeatureStore, export_csv, file_fingerprint


def test_roundtrip_keeps_names_order_and_values(tmp_path):
    store = FeatureStore(tmp_path, "deep", {"layer": "fc7"})
    row = {f"alexnet_fc7_r_{i:04d}": float(v) for i, v in enumerate(np.linspace(-1, 1, 7))}
    store.save("p/01 a", row, fingerprint="abc", diagnostics={"slice": 3})
    assert store.load("p/01 a") == row
    assert list(store.load("p/01 a", "abc")) == list(row)
    assert store.load_entry("p/01 a").diagnostics == {"slice": 3}
    assert store.load("p/01 a", "other-inputs") is None  # edited inputs are recomputed
    assert store.path("p/01 a").parent == store.dir  # ids with odd characters stay inside


def test_settings_key_separates_entries_and_is_recorded(tmp_path):
    a = FeatureStore(tmp_path, "handcrafted", {"binWidth": 25})
    b = FeatureStore(tmp_path, "handcrafted", {"binWidth": 10})
    a.save("c1", {"f": 1.0})
    assert a.dir != b.dir and b.load("c1") is None
    assert json.loads((a.dir / "settings.json").read_text(encoding="utf-8")) == {"binWidth": 25}


def test_damaged_entry_is_recomputed_not_fatal(tmp_path):
    store = FeatureStore(tmp_path, "deep", {})
    store.save("c1", {"f": 1.0})
    store.path("c1").write_bytes(b"truncated")
    assert store.load("c1") is None
    assert store.damaged == ["c1"]
    assert not any(p.suffix == ".tmp" for p in store.dir.iterdir())


def _rewrite(path, **changes):
    """Rewrite a cache entry with some arrays changed, keeping it a well-formed .npz."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_edited_but_well_formed_entry_fails_its_checksum_and_is_counted(tmp_path, caplog):
    store = FeatureStore(tmp_path, "handcrafted", {})
    store.save("c1", {"f": 1.5, "g": -2.0}, fingerprint="fp", diagnostics={"d": "x"})
    store.save("c2", {"f": 3.0, "g": 4.0}, fingerprint="fp")
    with np.load(store.path("c1")) as z:
        doubled = z["values"] * 2
    _rewrite(store.path("c1"), values=doubled)  # same fingerprint, same names: only values edited
    _rewrite(store.path("c2"), diagnostics=np.array('{"d": "forged"}'))
    with caplog.at_level("WARNING"):
        assert store.load("c1", "fp") is None
        assert store.load_entry("c2", "fp") is None
    assert store.damaged == ["c1", "c2"]
    assert "case c1" in caplog.text and "checksum" in caplog.text
    store.save("c1", {"f": 1.5, "g": -2.0}, fingerprint="fp")
    assert store.load("c1", "fp") == {"f": 1.5, "g": -2.0}


def test_fingerprint_follows_the_file(tmp_path):
    f = tmp_path / "img.nrrd"
    f.write_bytes(b"1234")
    fp = file_fingerprint(f)
    os.utime(f, ns=(1, 1))
    assert file_fingerprint(f) != fp


def test_export_csv_writes_provenance(tmp_path):
    df = pd.DataFrame({"f": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="case_id"))
    p = export_csv(df, tmp_path / "features_deep.csv", {"backbone": "alexnet"})
    back = pd.read_csv(p, index_col="case_id")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    prov = json.loads((tmp_path / "features_deep.provenance.json").read_text(encoding="utf-8"))
    assert prov == {"backbone": "alexnet", "n_cases": 2, "n_features": 1}


def test_export_csv_reads_back_bit_for_bit(tmp_path):
    """Shortest-repr CSV: every float64 (ties between features included) survives the round trip."""
    from radiodeep.features.store import read_features

    rng = np.random.default_rng(0)
    a = rng.normal(size=50) * 10.0 ** rng.integers(-30, 30, 50)
    join = rng.normal(size=50) * 1234.567891234
    df = pd.DataFrame({"JointAverage": join, "SumAverage": 2 * join, "tiny": a,
                       "edge": [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0] * 10},
                      index=pd.Index([f"c{i:02d}" for i in range(50)], name="case_id"))
    back = read_features(export_csv(df, tmp_path / "features_handcrafted.csv", {}))
    assert back.columns.tolist() == df.columns.tolist() and back.index.tolist() == df.index.tolist()
    assert np.array_equal(back.to_numpy().view(np.int64), df.to_numpy().view(np.int64))
    assert (back["SumAverage"] == 2 * back["JointAverage"]).all()
