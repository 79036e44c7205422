"""ROI preparation (radiodeep.roi) and the QC contact sheet (radiodeep.qc).

Expected values are computed independently from the arrays (numpy slicing,
explicit loops), never taken from the module under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from skimage.transform import resize

from radiodeep.config import CT_PRESETS, RoiConfig
from radiodeep.errors import CaseError
from radiodeep.qc import contact_sheet, network_view_items, views_items
from radiodeep.roi import (
    RoiViews,
    apply_window,
    choose_slices,
    largest_slice,
    normalise_mr,
    plane_axis,
    prepare_case,
    slice_mask,
    view_tags,
    window_bounds,
)

STRATEGIES = ["r", "g", "b", "grey3", "each", "ct_windows", "slices", "sequences"]


# --------------------------------------------------------------------------- helpers
def to_img(arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=None) -> sitk.Image:
    """sitk image from a (z, y, x) or (y, x) array; spacing in sitk (x, y, z) order."""
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(tuple(float(s) for s in spacing[: arr.ndim]))
    if origin is not None:
        im.SetOrigin(origin)
    return im


def cfg(**kw) -> RoiConfig:
    return RoiConfig(**kw)


def ct_case(shape=(5, 64, 64), seed=0):
    """A textured CT volume (lung-like background, soft-tissue ROI blob) and its mask."""
    rng = np.random.default_rng(seed)
    img = rng.normal(-800.0, 60.0, size=shape).astype(np.int16)
    z, y, x = np.indices(shape)
    cz, cy, cx = shape[0] // 2, shape[1] * 0.45, shape[2] * 0.6
    mask = ((y - cy) ** 2 / 36.0 + (x - cx) ** 2 / 64.0 + (z - cz) ** 2 / 2.0) <= 1.0
    img[mask] = rng.normal(30.0, 40.0, size=int(mask.sum())).astype(np.int16)
    return img, mask.astype(np.uint8)


def ct_map(raw: np.ndarray, window="lung") -> np.ndarray:
    """Independent CT window mapping: preset (level, width) -> [0, 1]."""
    if isinstance(window, str):
        level, width = CT_PRESETS[window]
        lo, hi = level - width / 2, level + width / 2
    else:
        lo, hi = window
    return np.clip((raw.astype(np.float64) - lo) / (hi - lo), 0, 1)


def crop_raw(plane: np.ndarray, box) -> np.ndarray:
    r0, r1, c0, c1 = box
    assert r0 >= 0 and c0 >= 0 and r1 <= plane.shape[0] and c1 <= plane.shape[1]
    return plane[r0:r1, c0:c1]


def centroid(mask2d: np.ndarray) -> tuple[float, float]:
    rr, cc = np.nonzero(mask2d)
    return float(rr.mean()), float(cc.mean())


def check_views(v: RoiViews, channels: str, size: int, n: int):
    assert set(v.views) == set(view_tags(channels))
    for tag, a in v.views.items():
        assert a.shape == (n, 3, size, size), tag
        assert a.dtype == np.float32
        assert np.all(np.isfinite(a))
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert v.grey.shape == (n, size, size) and v.grey.dtype == np.float32
    assert v.grey.min() >= 0.0 and v.grey.max() <= 1.0
    assert len(v.slice_indices) == n == len(v.boxes)


# --------------------------------------------------------------------------- small functions
def test_plane_axis():
    assert (plane_axis("axial"), plane_axis("coronal"), plane_axis("sagittal")) == (0, 1, 2)
    with pytest.raises(ValueError, match="unknown plane"):
        plane_axis("oblique")


@pytest.mark.parametrize("seed", range(4))
def test_largest_slice_matches_loop(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((7, 9, 11)) < rng.uniform(0.05, 0.4)
    for axis in range(3):
        counts = [int(np.sum(np.take(m, i, axis=axis))) for i in range(m.shape[axis])]
        best = max(counts)
        assert largest_slice(m, axis) == counts.index(best)  # first of the ties
        held = tuple(i for i, c in enumerate(counts) if c > 0)
        assert choose_slices(m, axis, "all") == held
        assert choose_slices(m, axis, "largest") == (counts.index(best),)


def test_largest_slice_empty_and_bad_shape():
    with pytest.raises(ValueError, match="empty"):
        largest_slice(np.zeros((3, 4, 4), bool), 0)
    with pytest.raises(ValueError, match="3D"):
        largest_slice(np.ones((4, 4), bool), 0)


def test_centre_slice_nearest_held():
    m = np.zeros((9, 5, 5), bool)
    m[[1, 2, 6], 2, 2] = True  # extent 1..6, middle 3 is empty -> nearest held is 2
    assert choose_slices(m, 0, "centre") == (2,)
    m2 = np.zeros((9, 5, 5), bool)
    m2[2:7, 1, 1] = True  # extent 2..6 -> 4
    assert choose_slices(m2, 0, "centre") == (4,)


def test_window_bounds_and_mapping():
    for name, (level, width) in CT_PRESETS.items():
        assert window_bounds(name) == (level - width / 2, level + width / 2)
    assert window_bounds(None) == window_bounds("lung")
    assert window_bounds((-100, 300)) == (-100.0, 300.0)
    with pytest.raises(ValueError):
        window_bounds((10, 10))
    x = np.linspace(-2000, 2000, 101)
    np.testing.assert_allclose(apply_window(x, -100, 300), np.clip((x + 100) / 400, 0, 1), atol=1e-6)


def test_normalise_mr_independent():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 100.0, size=(40, 40))
    lo, hi = np.percentile(x, (2, 98))
    np.testing.assert_allclose(normalise_mr(x, percentiles=(2, 98), method="minmax"),
                               np.clip((np.clip(x, lo, hi) - lo) / (hi - lo), 0, 1), atol=1e-6)
    ref = x[10:20, 10:20]
    lo, hi = np.percentile(ref, (1, 99))
    c = np.clip(ref, lo, hi)
    z = (np.clip(x, lo, hi) - c.mean()) / c.std()
    np.testing.assert_allclose(normalise_mr(x, ref, (1, 99), "zscore"), np.clip((z + 3) / 6, 0, 1), atol=1e-5)
    assert not normalise_mr(np.full((4, 4), 7.0)).any()  # constant -> zeros


# --------------------------------------------------------------------------- crops
def test_exact_contains_whole_roi_and_margin():
    img, mask = ct_case()
    v = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", size=32), "r", "c1")
    k = v.slice_indices[0]
    rr, cc = np.nonzero(mask[k])
    assert v.boxes[0] == (rr.min(), rr.max() + 1, cc.min(), cc.max() + 1)
    vm = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", margin_px=3, size=32), "r", "c1")
    assert vm.boxes[0] == (rr.min() - 3, rr.max() + 4, cc.min() - 3, cc.max() + 4)


def test_exact_rectangle_fills_output_and_aspect():
    img = np.full((3, 60, 60), -1000, np.int16)
    mask = np.zeros_like(img, np.uint8)
    mask[1, 20:30, 10:40] = 1  # 10 x 30 rectangle
    img[mask == 1] = 0
    roi = dict(crop="exact", size=48, intensity={"window": (-1000.0, 1000.0)})
    stretch = prepare_case(to_img(img), to_img(mask), cfg(aspect="stretch", **roi), "grey3", "rect")
    np.testing.assert_allclose(stretch.grey, 0.5, atol=1e-6)  # only ROI pixels: whole output is ROI
    pad = prepare_case(to_img(img), to_img(mask), cfg(aspect="pad", **roi), "grey3", "rect")
    rows_roi = np.isclose(pad.grey[0], 0.5, atol=1e-3).all(axis=1)
    rows_pad = np.isclose(pad.grey[0], 0.0, atol=1e-6).all(axis=1)
    assert rows_roi.sum() + rows_pad.sum() >= 48 - 4  # at most two blended rows per edge (x1.6)
    assert abs(rows_roi.mean() - 10 / 30) < 0.06
    # padding is centred: as many pad rows above as below (within one)
    first, last = np.flatnonzero(rows_roi)[[0, -1]]
    assert abs(first - (47 - last)) <= 1


def test_window_centred_on_centroid():
    img, mask = ct_case(shape=(5, 80, 80), seed=1)
    for side in (16, 17, 24):
        v = prepare_case(to_img(img), to_img(mask), cfg(crop="window", window_px=side, size=32), "r", "w")
        k = v.slice_indices[0]
        cy, cx = centroid(mask[k])
        r0, r1, c0, c1 = v.boxes[0]
        assert (r1 - r0, c1 - c0) == (side, side)
        assert abs(r0 + (side - 1) / 2 - cy) <= 0.5 and abs(c0 + (side - 1) / 2 - cx) <= 0.5


def test_window_output_centred_bright_roi():
    img = np.full((3, 70, 70), -1000, np.int16)
    mask = np.zeros_like(img, np.uint8)
    yy, xx = np.indices((70, 70))
    mask[1] = ((yy - 23.0) ** 2 + (xx - 41.0) ** 2) <= 16
    img[mask == 1] = 500
    for size in (25, 64):
        v = prepare_case(to_img(img), to_img(mask),
                         cfg(crop="window", window_px=25, size=size, aspect="stretch",
                             intensity={"window": (-1000.0, 500.0)}), "r", "bright")
        g = v.grey[0].astype(np.float64)
        gy, gx = np.indices(g.shape)
        cy, cx = (g * gy).sum() / g.sum(), (g * gx).sum() / g.sum()
        tol = 0.5 * size / 25 + 0.05
        assert abs(cy - (size - 1) / 2) <= tol and abs(cx - (size - 1) / 2) <= tol


def test_window_mm_and_spacing():
    img, mask = ct_case(shape=(3, 120, 120), seed=2)
    sp = (0.5, 0.5, 2.0)
    v = prepare_case(to_img(img, sp), to_img(mask, sp), cfg(crop="window", window_mm=20.0, size=32), "r", "mm")
    r0, r1, c0, c1 = v.boxes[0]
    assert (r1 - r0, c1 - c0) == (40, 40) and v.pixel_spacing == (0.5, 0.5)
    v2 = prepare_case(to_img(img, sp), to_img(mask, sp),
                      cfg(crop="window", window_mm=20.0, window_px=7, spacing_mm=1.0, size=32), "r", "mm")
    r0, r1, c0, c1 = v2.boxes[0]
    assert (r1 - r0, c1 - c0) == (20, 20) and v2.pixel_spacing == (1.0, 1.0)
    v3 = prepare_case(to_img(img, sp), to_img(mask, sp), cfg(crop="window", window_px=30, spacing_mm=1.0,
                                                             size=32), "r", "mm")
    assert v3.boxes[0][1] - v3.boxes[0][0] == 30  # px are resampled pixels


def test_resampling_is_physical():
    """The same disc imaged at 0.5 mm and 1 mm looks the same after resampling to 1 mm."""
    outs = []
    for s, n in ((0.5, 128), (1.0, 64)):
        c = (np.arange(n) + 0.5) * s  # pixel centres in mm
        yy, xx = np.meshgrid(c, c, indexing="ij")
        disc = ((yy - 30.0) ** 2 + (xx - 34.0) ** 2) <= 8.0 ** 2
        img = np.where(disc, 100, -900)[None].repeat(3, axis=0).astype(np.int16)
        mask = np.zeros_like(img, np.uint8)
        mask[1] = disc
        v = prepare_case(to_img(img, (s, s, 3.0)), to_img(mask, (s, s, 3.0)),
                         cfg(crop="window", window_mm=40.0, spacing_mm=1.0, size=40, aspect="stretch",
                             intensity={"window": (-1000.0, 200.0)}), "r", f"disc{s}")
        assert v.pixel_spacing == (1.0, 1.0)
        outs.append(v.grey[0])
        # the ROI's physical extent is inside the box (within half a target pixel)
        rr, cc = np.nonzero(disc)
        r0, r1, c0, c1 = v.boxes[0]
        assert r0 * 1.0 <= rr.min() * s + 0.5 and r1 * 1.0 >= (rr.max() + 1) * s - 0.5
    assert np.mean(np.abs(outs[0] - outs[1])) < 0.03


def test_masked_background_outside_roi():
    img, _ = ct_case(shape=(3, 40, 40), seed=4)
    yy, xx = np.indices((40, 40))
    mask = np.zeros_like(img, np.uint8)
    mask[1] = ((yy - 19.5) ** 2 + (xx - 17.5) ** 2) <= 8.0 ** 2  # bbox 16 x 16
    rr, cc = np.nonzero(mask[1])
    assert (np.ptp(rr) + 1, np.ptp(cc) + 1) == (16, 16)
    roi = dict(size=16, aspect="stretch", background=0.25)
    ex = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", **roi), "grey3", "m")
    ms = prepare_case(to_img(img), to_img(mask), cfg(crop="masked", **roi), "grey3", "m")
    inside = mask[1, rr.min():rr.max() + 1, cc.min():cc.max() + 1].astype(bool)
    np.testing.assert_array_equal(ms.grey[0][~inside], np.float32(0.25))
    np.testing.assert_array_equal(ms.grey[0][inside], ex.grey[0][inside])
    np.testing.assert_allclose(ex.grey[0], ct_map(crop_raw(img[1], ex.boxes[0])), atol=1e-6)
    assert np.all(ms.views["grey3"][0][:, ~inside] == np.float32(0.25))


# --------------------------------------------------------------------------- channel strategies
@pytest.mark.parametrize("channels", STRATEGIES)
@pytest.mark.parametrize("crop", ["exact", "window", "masked"])
def test_every_strategy_shape_dtype_range(channels, crop):
    img, mask = ct_case()
    modality = "MR" if channels == "sequences" else "CT"
    seqs = None
    if channels == "sequences":
        rng = np.random.default_rng(5)
        seqs = [to_img(rng.gamma(2.0, 50.0 * (i + 1), size=img.shape).astype(np.float32)) for i in range(3)]
        img = np.abs(img).astype(np.int16)
    v = prepare_case(to_img(img), to_img(mask), cfg(crop=crop, slice="all", size=24, intensity={"modality": modality}),
                     channels, "every", sequences=seqs)
    n = len({int(z) for z in np.nonzero(mask)[0]})
    check_views(v, channels, 24, n)
    assert v.slice_indices == tuple(sorted({int(z) for z in np.nonzero(mask)[0]}))


def test_single_channel_strategies():
    img, mask = ct_case()
    roi = cfg(crop="window", size=32)
    for tag, c in (("r", 0), ("g", 1), ("b", 2)):
        v = prepare_case(to_img(img), to_img(mask), roi, tag, "rgb").views[tag]
        others = [i for i in range(3) if i != c]
        assert not v[:, others].any(), f"{tag}: the other channels must be zero"
        assert v[:, c].any()
    each = prepare_case(to_img(img), to_img(mask), roi, "each", "rgb")
    assert each.tags == ("r", "g", "b")
    for tag, c in (("r", 0), ("g", 1), ("b", 2)):
        np.testing.assert_array_equal(each.views[tag][:, c], each.grey)
        assert not np.delete(each.views[tag], c, axis=1).any()
    g3 = prepare_case(to_img(img), to_img(mask), roi, "grey3", "rgb")
    for c in range(3):
        np.testing.assert_array_equal(g3.views["grey3"][:, c], g3.grey)


def test_ct_windows_channels_independent():
    img, mask = ct_case(seed=6)
    img[2, 10:20, 10:20] = 900  # bone-like patch so every window has contrast
    for windows in (None, ["soft_tissue", (-200.0, 200.0), "brain"]):
        roi = cfg(crop="window", window_px=24, size=24, intensity={"windows": windows, "window": "mediastinum"})
        v = prepare_case(to_img(img), to_img(mask), roi, "ct_windows", "ctw")
        k = v.slice_indices[0]
        raw = crop_raw(img[k], v.boxes[0])
        for c, w in enumerate(windows or ["lung", "mediastinum", "bone"]):
            np.testing.assert_allclose(v.views["ct_windows"][0, c], ct_map(raw, w), atol=1e-6)
        np.testing.assert_allclose(v.grey[0], ct_map(raw, "mediastinum"), atol=1e-6)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_slices_neighbours_and_edge_padding(where):
    rng = np.random.default_rng(7)
    nz = 6
    img = (rng.normal(-400, 80, size=(nz, 40, 40)) + 120.0 * np.arange(nz)[:, None, None]).astype(np.int16)
    k = {"first": 0, "middle": 3, "last": nz - 1}[where]
    mask = np.zeros_like(img, np.uint8)
    mask[k, 15:22, 18:26] = 1
    v = prepare_case(to_img(img), to_img(mask), cfg(crop="window", window_px=20, size=20), "slices", "nb")
    assert v.slice_indices == (k,)
    box = v.boxes[0]
    out = v.views["slices"][0]
    expect = [ct_map(crop_raw(img[min(max(j, 0), nz - 1)], box)) for j in (k - 1, k, k + 1)]
    for c in range(3):
        np.testing.assert_allclose(out[c], expect[c], atol=1e-6)
    if where == "first":
        np.testing.assert_array_equal(out[0], out[1])  # z-1 repeats the edge slice
        assert not np.array_equal(out[1], out[2])
    if where == "last":
        np.testing.assert_array_equal(out[2], out[1])
        assert not np.array_equal(out[0], out[1])


def test_slices_all_each_gets_own_neighbours():
    rng = np.random.default_rng(8)
    img = rng.normal(-300, 200, size=(5, 30, 30)).astype(np.int16)
    mask = np.zeros_like(img, np.uint8)
    mask[1:4, 10:18, 10:18] = 1
    v = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", slice="all", size=16, aspect="stretch"),
                     "slices", "nb")
    assert v.slice_indices == (1, 2, 3)
    for i, k in enumerate(v.slice_indices):
        assert v.boxes[i] == (10, 18, 10, 18)
        for c, j in enumerate((k - 1, k, k + 1)):
            mapped = ct_map(img[j, 10:18, 10:18])
            np.testing.assert_allclose(v.views["slices"][i, c], resize(mapped, (16, 16), order=1, mode="edge"),
                                       atol=1e-5)


def test_slices_mr_uses_centre_statistics():
    rng = np.random.default_rng(9)
    img = (rng.gamma(3.0, 60.0, size=(4, 32, 32)) * np.array([1.0, 1.5, 0.7, 2.0])[:, None, None]).astype(np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[2, 8:20, 10:22] = 1
    roi = cfg(crop="window", window_px=20, size=20, intensity={"modality": "MR", "region": "slice"})
    v = prepare_case(to_img(img), to_img(mask), roi, "slices", "mr")
    box = v.boxes[0]
    lo, hi = np.percentile(img[2], (1, 99))
    for c, j in enumerate((1, 2, 3)):
        expect = np.clip((np.clip(crop_raw(img[j], box), lo, hi) - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(v.views["slices"][0, c], expect, atol=1e-5)


@pytest.mark.parametrize("region", ["slice", "roi"])
@pytest.mark.parametrize("method", ["minmax", "zscore"])
def test_mr_normalisation_region(region, method):
    rng = np.random.default_rng(10)
    img = rng.gamma(2.0, 80.0, size=(3, 36, 36)).astype(np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[1, 10:22, 12:26] = 1
    img[mask == 1] += 300
    roi = cfg(crop="window", window_px=24, size=24,
              intensity={"modality": "MR", "region": region, "normalise": method, "percentiles": (2, 98)})
    v = prepare_case(to_img(img), to_img(mask), roi, "grey3", "mr")
    ref = img[1][mask[1] == 1] if region == "roi" else img[1]
    lo, hi = np.percentile(ref, (2, 98))
    x = np.clip(crop_raw(img[1], v.boxes[0]).astype(np.float64), lo, hi)
    if method == "minmax":
        expect = (x - lo) / (hi - lo)
    else:
        c = np.clip(ref, lo, hi)
        expect = ((x - c.mean()) / c.std() + 3.0) / 6.0
    np.testing.assert_allclose(v.grey[0], np.clip(expect, 0, 1), atol=1e-5)


def test_sequences_each_normalised():
    rng = np.random.default_rng(11)
    shape = (3, 32, 32)
    mask = np.zeros(shape, np.uint8)
    mask[1, 9:19, 11:23] = 1
    seq = [rng.gamma(2.0, s, size=shape).astype(np.float32) for s in (10.0, 200.0, 3000.0)]
    roi = cfg(crop="window", window_px=20, size=20, intensity={"modality": "MR"})
    v = prepare_case(to_img(seq[0]), to_img(mask), roi, "sequences", "seq", sequences=[to_img(s) for s in seq])
    box = v.boxes[0]
    for c in range(3):
        lo, hi = np.percentile(seq[c][1], (1, 99))
        expect = np.clip((np.clip(crop_raw(seq[c][1], box), lo, hi) - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(v.views["sequences"][0, c], expect, atol=1e-5)
    with pytest.raises(CaseError, match="case seq: .*three sequence images, got 2"):
        prepare_case(to_img(seq[0]), to_img(mask), roi, "sequences", "seq", sequences=[to_img(s) for s in seq[:2]])
    with pytest.raises(CaseError, match="case seq: .*three sequence images, got none"):
        prepare_case(to_img(seq[0]), to_img(mask), roi, "sequences", "seq")
    bad = [to_img(seq[0]), to_img(seq[1][:, :30]), to_img(seq[2])]
    with pytest.raises(CaseError, match="case seq: sequence 2 of 3 does not share"):
        prepare_case(to_img(seq[0]), to_img(mask), roi, "sequences", "seq", sequences=bad)
    shifted = to_img(seq[2])
    shifted.SetOrigin((0.0, 50.0, 0.0))  # same size and spacing, 50 mm away: not the same anatomy
    with pytest.raises(CaseError, match=r"case seq: sequence 3 of 3 does not share the image's grid "
                                        r"\(origin differs: image \(0.0, 0.0, 0.0\), sequence 3 \(0.0, 50.0, 0.0\)"):
        prepare_case(to_img(seq[0]), to_img(mask), roi, "sequences", "seq",
                     sequences=[to_img(seq[0]), to_img(seq[1]), shifted])


def test_coronal_and_sagittal_planes_oriented_z_up():
    img = (np.arange(8)[:, None, None] * 200 - 1000 + np.zeros((8, 30, 30))).astype(np.int16)
    mask = np.zeros_like(img, np.uint8)
    mask[2:6, 10:14, 12:20] = 1
    mask[3, 12, 12:20] = 0  # coronal index 12 has fewer voxels than 10, 11, 13
    roi = dict(crop="window", window_px=16, size=16, intensity={"window": (-1000.0, 600.0)})
    cor = prepare_case(to_img(img), to_img(mask), cfg(plane="coronal", **roi), "r", "cor")
    assert cor.slice_indices == (largest_slice(mask, 1),) == (10,)
    r0 = cor.boxes[0][0]
    assert r0 < 0  # 8 z rows in a 16-row window: padded above and below
    col = cor.grey[0][-r0:-r0 + 8, 8]  # the rows inside the slice
    np.testing.assert_allclose(col, ct_map(img[::-1, 10, 12], (-1000.0, 600.0)), atol=1e-6)
    assert np.all(np.diff(col) < 0)  # higher z is up
    sag = prepare_case(to_img(img), to_img(mask), cfg(plane="sagittal", **roi), "r", "sag")
    assert sag.slice_indices == (largest_slice(mask, 2),)


def test_preparation_reads_voxels_not_position_and_leaves_its_inputs_alone():
    """The crops depend on the voxels and spacing only (not on where the volume sits in space),
    and the input images are not modified (the same objects feed the handcrafted route)."""
    img, mask = ct_case(seed=12)
    roi = cfg(crop="exact", margin_px=2, spacing_mm=0.7, size=40)
    image, mask_img = to_img(img), to_img(mask)
    a = prepare_case(image, mask_img, roi, "ct_windows", "d")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), img)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask_img), mask)
    assert image.GetSpacing() == (1.0, 1.0, 1.0)
    elsewhere = (120.0, -75.5, 33.0)
    b = prepare_case(to_img(img, origin=elsewhere), to_img(mask, origin=elsewhere), roi, "ct_windows", "d")
    np.testing.assert_array_equal(a.views["ct_windows"], b.views["ct_windows"])
    assert a.views["ct_windows"].std() > 0  # a real crop, not a blank one


# --------------------------------------------------------------------------- bad input
def test_roi_touching_border_is_padded_not_wrapped():
    img = np.full((3, 40, 40), -1000, np.int16)
    img[:, -3:, :] = 1000  # bright stripe on the opposite borders: wrapping would show it
    img[:, :, -3:] = 1000
    mask = np.zeros_like(img, np.uint8)
    mask[1, 0:4, 0:4] = 1
    img[mask == 1] = 0
    v = prepare_case(to_img(img), to_img(mask), cfg(crop="window", window_px=16, size=16), "r", "edge")
    r0, r1, c0, c1 = v.boxes[0]
    assert r0 < 0 and c0 < 0
    g = v.grey[0]
    air = np.float32(ct_map(np.array(img[1].min())))  # padded with the slice's darkest value (air)
    assert np.all(g[:-r0, :] == air) and np.all(g[:, :-c0] == air)
    np.testing.assert_allclose(g[-r0:, -c0:], ct_map(img[1, 0:r1, 0:c1]), atol=1e-6)
    ex = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", margin_px=2, size=16), "r", "edge")
    assert ex.boxes[0] == (-2, 6, -2, 6)


def test_one_voxel_roi():
    img, _ = ct_case(shape=(3, 40, 40), seed=13)
    mask = np.zeros_like(img, np.uint8)
    mask[2, 9, 13] = 1
    ex = prepare_case(to_img(img), to_img(mask), cfg(crop="exact", size=16), "r", "tiny")
    assert ex.slice_indices == (2,) and ex.boxes[0] == (9, 10, 13, 14)
    np.testing.assert_allclose(ex.grey[0], ct_map(np.array(img[2, 9, 13])), atol=1e-6)  # uniform
    win = prepare_case(to_img(img), to_img(mask), cfg(crop="window", window_px=17, size=17), "r", "tiny")
    assert win.boxes[0] == (9 - 8, 9 + 9, 13 - 8, 13 + 9)
    # coarsening 0.5 mm -> 2 mm: the voxel falls between new pixel centres but is kept
    sp = (0.5, 0.5, 2.0)
    co = prepare_case(to_img(img, sp), to_img(mask, sp), cfg(crop="masked", spacing_mm=2.0, size=16), "r", "tiny")
    assert any("smaller than one" in n for n in co.notes)
    assert co.boxes[0] == (9 // 4, 9 // 4 + 1, 13 // 4, 13 // 4 + 1)
    check_views(co, "r", 16, 1)


def test_mask_with_several_labels():
    img, _ = ct_case(shape=(5, 30, 30), seed=14)
    mask = np.zeros_like(img, np.uint8)
    mask[1, 5:7, 5:7] = 1
    mask[3, 10:20, 10:20] = 2
    roi = cfg(crop="exact", size=16)
    with pytest.raises(CaseError, match=r"case ml: mask holds several labels \[1, 2\]") as e:
        prepare_case(to_img(img), to_img(mask), roi, "r", "ml")
    assert e.value.stage == "roi" and e.value.case_id == "ml"
    v1 = prepare_case(to_img(img), to_img(mask), roi, "r", "ml", mask_label=1)
    assert v1.slice_indices == (1,) and v1.boxes[0] == (5, 7, 5, 7)
    assert any("labels [1, 2]; used label 1" in n for n in v1.notes)
    v2 = prepare_case(to_img(img), to_img(mask), roi, "r", "ml", mask_label=2)
    assert v2.slice_indices == (3,) and v2.boxes[0] == (10, 20, 10, 20)
    with pytest.raises(CaseError, match=r"case ml: mask has no voxel with label 5 \(labels present: \[1, 2\]\)"):
        prepare_case(to_img(img), to_img(mask), roi, "r", "ml", mask_label=5)
    sm, k = slice_mask(to_img(img), to_img(mask), roi, "ml", mask_label=2)
    assert k == 3 and set(np.unique(sitk.GetArrayFromImage(sm))) == {0, 1}
    # a single non-1 label is used as the ROI, and said so
    only = (mask == 2).astype(np.uint8) * 7
    v7 = prepare_case(to_img(img), to_img(only), roi, "r", "ml")
    assert v7.slice_indices == (3,) and any("single label 7" in n for n in v7.notes)


def test_strongly_anisotropic_voxels():
    sp = (0.5, 0.5, 5.0)  # x, y, z mm
    nz, ny, nx = 12, 80, 80
    zc = (np.arange(nz) + 0.5) * sp[2]
    yc = (np.arange(ny) + 0.5) * sp[1]
    xc = (np.arange(nx) + 0.5) * sp[0]
    Z, Y, X = np.meshgrid(zc, yc, xc, indexing="ij")
    ball = ((Z - 30.0) ** 2 + (Y - 20.0) ** 2 + (X - 20.0) ** 2) <= 12.0 ** 2
    img = np.where(ball, 50, -900).astype(np.int16)
    mask = ball.astype(np.uint8)
    v = prepare_case(to_img(img, sp), to_img(mask, sp), cfg(plane="sagittal", crop="exact", size=32), "r", "aniso")
    assert any("anisotropic" in n for n in v.notes) and v.pixel_spacing == (0.5, 0.5)
    r0, r1, c0, c1 = v.boxes[0]
    h_mm, w_mm = (r1 - r0) * 0.5, (c1 - c0) * 0.5
    assert abs(h_mm - w_mm) <= 5.0 + 1e-9  # a ball looks round, not squashed (within one slice)
    check_views(v, "r", 32, 1)
    ax = prepare_case(to_img(img, sp), to_img(mask, sp), cfg(plane="axial", crop="exact", size=32), "r", "aniso")
    assert not ax.notes and ax.pixel_spacing == (0.5, 0.5)


def test_single_slice_images():
    rng = np.random.default_rng(15)
    img2 = rng.normal(-500, 200, size=(30, 30)).astype(np.int16)
    mask2 = np.zeros_like(img2, np.uint8)
    mask2[10:15, 12:20] = 1
    v = prepare_case(to_img(img2), to_img(mask2), cfg(crop="exact", size=16), "grey3", "flat")
    assert v.slice_indices == (0,) and v.boxes[0] == (10, 15, 12, 20)
    check_views(v, "grey3", 16, 1)
    with pytest.raises(CaseError, match="case flat: image is 2D.*'sagittal'"):
        prepare_case(to_img(img2), to_img(mask2), cfg(plane="sagittal"), "r", "flat")
    with pytest.raises(CaseError, match="case flat: channel strategy 'slices' needs neighbouring slices"):
        prepare_case(to_img(img2), to_img(mask2), cfg(), "slices", "flat")
    # a 3D image holding one slice
    img3, mask3 = img2[None], mask2[None]
    with pytest.raises(CaseError, match="case one: channel strategy 'slices'.*single slice along the axial"):
        prepare_case(to_img(img3), to_img(mask3), cfg(), "slices", "one")
    with pytest.raises(CaseError, match="case one: the coronal slices .* a line"):
        prepare_case(to_img(img3), to_img(mask3), cfg(plane="coronal"), "r", "one")
    check_views(prepare_case(to_img(img3), to_img(mask3), cfg(size=16), "r", "one"), "r", 16, 1)
    sm, k = slice_mask(to_img(img2), to_img(mask2), cfg(), "flat")
    assert k == 0 and sm.GetDimension() == 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sm), mask2)


def test_other_bad_inputs_name_the_case():
    img, mask = ct_case(shape=(3, 20, 20))
    with pytest.raises(CaseError, match="case e1: mask is empty") as e:
        prepare_case(to_img(img), to_img(np.zeros_like(mask)), cfg(), "r", "e1")
    assert e.value.stage == "roi"
    with pytest.raises(CaseError, match="case e2: mask does not share the image's grid"):
        prepare_case(to_img(img), to_img(mask[:, :, :18]), cfg(), "r", "e2")
    with pytest.raises(CaseError, match="case e2: mask does not share the image's grid"):
        prepare_case(to_img(img), to_img(mask, (1.0, 1.0, 2.0)), cfg(), "r", "e2")
    moved = to_img(mask)
    moved.SetOrigin((30.0, 0.0, 0.0))
    with pytest.raises(CaseError, match="case e2: mask does not share the image's grid .origin differs"):
        prepare_case(to_img(img), moved, cfg(), "r", "e2")
    bad = img.astype(np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(CaseError, match="case e3: image holds non-finite"):
        prepare_case(to_img(bad), to_img(mask), cfg(), "r", "e3")
    with pytest.raises(CaseError, match="case e4: image has 3 components"):
        prepare_case(sitk.Compose([to_img(img)] * 3), to_img(mask), cfg(), "r", "e4")


def test_bad_settings_raise_value_error():
    img, mask = ct_case(shape=(3, 20, 20))
    with pytest.raises(ValueError, match="unknown channel strategy"):
        prepare_case(to_img(img), to_img(mask), cfg(), "rgb", "s")
    with pytest.raises(ValueError, match="less than or equal to 1"):  # refused by the config schema
        prepare_case(to_img(img), to_img(mask), cfg(crop="masked", background=2.0), "r", "s")
    with pytest.raises(ValueError, match="ct_windows"):
        prepare_case(to_img(img), to_img(mask), cfg(intensity={"modality": "MR"}), "ct_windows", "s")
    with pytest.raises(ValueError, match="window_px or roi.window_mm"):
        prepare_case(to_img(img), to_img(mask), cfg(crop="window", window_px=None), "r", "s")


# --------------------------------------------------------------------------- slice_mask
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("how", ["largest", "all", "centre"])
def test_slice_mask(plane, how):
    img, mask = ct_case(shape=(6, 24, 28), seed=16)
    im = to_img(img, (0.7, 0.8, 2.5), origin=(3.0, -4.0, 10.0))
    mk = to_img(mask, (0.7, 0.8, 2.5), origin=(3.0, -4.0, 10.0))
    out, k = slice_mask(im, mk, cfg(plane=plane, slice=how), "sm")
    axis = plane_axis(plane)
    counts = [int(np.take(mask, i, axis=axis).sum()) for i in range(mask.shape[axis])]
    if how == "centre":
        held = [i for i, c in enumerate(counts) if c]
        assert k == held[int(np.argmin([abs(h - (held[0] + held[-1]) // 2) for h in held]))]
    else:
        assert k == counts.index(max(counts))
    assert out.GetSize() == mk.GetSize() and out.GetSpacing() == mk.GetSpacing()
    assert out.GetOrigin() == mk.GetOrigin() and out.GetDirection() == mk.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8
    arr = sitk.GetArrayFromImage(out)
    expect = np.zeros_like(mask)
    idx = [slice(None)] * 3
    idx[axis] = k
    expect[tuple(idx)] = mask[tuple(idx)]
    np.testing.assert_array_equal(arr, expect)


# --------------------------------------------------------------------------- real cases
def _read(shared_cases, name):
    im = sitk.ReadImage(str(shared_cases / f"{name}_image.nrrd"))
    mk = sitk.ReadImage(str(shared_cases / f"{name}_label.nrrd"))
    return im, sitk.Cast(mk == 1, sitk.sitkUInt8)


def test_real_lung1_ct(shared_cases, tmp_path):
    im, mk = _read(shared_cases, "lung1")
    m = sitk.GetArrayFromImage(mk)
    counts = [int(m[z].sum()) for z in range(m.shape[0])]
    k = counts.index(max(counts))
    ex = prepare_case(im, mk, cfg(crop="exact", margin_px=4, size=64), "r", "lung1")
    assert ex.slice_indices == (k,) == (largest_slice(m, 0),)
    rr, cc = np.nonzero(m[k])
    r0, r1, c0, c1 = ex.boxes[0]
    assert r0 <= rr.min() and r1 > rr.max() and c0 <= cc.min() and c1 > cc.max()
    check_views(ex, "r", 64, 1)
    assert not ex.views["r"][:, 1:].any()
    win = prepare_case(im, mk, cfg(crop="window", window_px=56, size=56), "ct_windows", "lung1")
    cy, cx = centroid(m[k])
    r0, r1, c0, c1 = win.boxes[0]
    assert abs(r0 + 27.5 - cy) <= 0.5 and abs(c0 + 27.5 - cx) <= 0.5
    raw = sitk.GetArrayFromImage(im)[k, r0:r1, c0:c1]
    np.testing.assert_allclose(win.views["ct_windows"][0, 1], ct_map(raw, "mediastinum"), atol=1e-6)
    sl = prepare_case(im, mk, cfg(crop="masked", slice="all", spacing_mm=1.0, size=32), "slices", "lung1")
    assert sl.slice_indices == tuple(i for i, c in enumerate(counts) if c)
    check_views(sl, "slices", 32, len(sl.slice_indices))
    sm, ks = slice_mask(im, mk, cfg(), "lung1")
    assert ks == k and int(sitk.GetArrayFromImage(sm).sum()) == counts[k]
    p = contact_sheet(views_items([ex, sl]), tmp_path / "qc" / "lung1.png")
    assert Image.open(p).size[0] > 0


def test_real_brain1_mr(shared_cases):
    im, mk = _read(shared_cases, "brain1")
    m = sitk.GetArrayFromImage(mk)
    a = sitk.GetArrayFromImage(im)
    roi = cfg(crop="window", window_px=40, size=40, intensity={"modality": "MR", "region": "roi",
                                                               "normalise": "zscore"})
    v = prepare_case(im, mk, roi, "grey3", "brain1")
    k = v.slice_indices[0]
    assert k == largest_slice(m, 0) == int(np.argmax([m[z].sum() for z in range(m.shape[0])]))
    check_views(v, "grey3", 40, 1)
    ref = a[k][m[k] == 1].astype(np.float64)
    lo, hi = np.percentile(ref, (1, 99))
    c = np.clip(ref, lo, hi)
    x = np.clip(crop_raw(a[k], v.boxes[0]).astype(np.float64), lo, hi)
    np.testing.assert_allclose(v.grey[0], np.clip(((x - c.mean()) / c.std() + 3) / 6, 0, 1), atol=1e-5)
    for plane in ("coronal", "sagittal"):
        vp = prepare_case(im, mk, cfg(plane=plane, crop="exact", size=32, intensity={"modality": "MR"}),
                          "each", "brain1")
        assert vp.slice_indices == (largest_slice(m, plane_axis(plane)),)
        assert any("anisotropic" in n for n in vp.notes)
        check_views(vp, "each", 32, 1)


# --------------------------------------------------------------------------- QC
def test_contact_sheet(tmp_path):
    rng = np.random.default_rng(17)
    grey = rng.random((20, 20))
    rgb = rng.random((3, 20, 20))
    small = np.full((10, 14), 2.0)  # clipped to 1
    p = contact_sheet([("case-A", grey), ("case-B", rgb), ("a-very-long-case-identifier-0001", small)],
                      tmp_path / "sub" / "sheet.png", columns=2)
    assert p.exists()
    sheet = np.asarray(Image.open(p).convert("RGB"))
    gap = 4
    # tile 0 at the top left, exact 8-bit rendering of the grey crop
    np.testing.assert_array_equal(sheet[gap:gap + 20, gap:gap + 20, 0], np.round(grey * 255).astype(np.uint8))
    np.testing.assert_array_equal(sheet[gap:gap + 20, gap:gap + 20, 1], np.round(grey * 255).astype(np.uint8))
    # tile 1 to its right, RGB channels in order
    x1 = gap + 20 + gap
    for c in range(3):
        np.testing.assert_array_equal(sheet[gap:gap + 20, x1:x1 + 20, c], np.round(rgb[c] * 255).astype(np.uint8))
    # two rows of (tile + label); a label is drawn under each tile
    assert sheet.shape[1] == 2 * 20 + 3 * gap
    label_h = (sheet.shape[0] - 3 * gap) // 2 - 20
    assert label_h > 5
    for x in (gap, x1):
        assert sheet[gap + 20:gap + 20 + label_h, x:x + 20].max() > 100
    y2 = gap + 20 + label_h + gap
    np.testing.assert_array_equal(sheet[y2:y2 + 10, gap:gap + 14], 255)
    assert sheet[y2 + 20:y2 + 20 + label_h, gap:gap + 20].max() > 100
    with pytest.raises(ValueError, match="case bad"):
        contact_sheet([("bad", np.zeros((2, 5, 5)))], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([], tmp_path / "x.png")


def test_views_items_labels():
    img, mask = ct_case()
    v = prepare_case(to_img(img), to_img(mask), cfg(slice="all", size=16), "ct_windows", "multi")
    one = prepare_case(to_img(img), to_img(mask), cfg(size=16), "r", "single")
    items = views_items([v, one])
    assert [i[0] for i in items] == [f"multi [{k}]" for k in v.slice_indices] + ["single"]
    assert all(a.shape == (16, 16) for _, a in items)
    rgb = views_items([v], tag="ct_windows")
    assert all(a.shape == (3, 16, 16) for _, a in rgb)


def test_network_view_items_show_the_input_and_keep_many_slices_small():
    img, mask = ct_case()
    many = prepare_case(to_img(img), to_img(mask), cfg(slice="all", size=224), "slices", "multi")
    assert len(many.slice_indices) > 1
    items = network_view_items(many, "slices", max_side=128)
    assert [label for label, _ in items] == [f"multi [{k}]" for k in many.slice_indices]
    assert all(a.shape == (3, 112, 112) for _, a in items)  # 224 subsampled by 2
    np.testing.assert_array_equal(items[0][1], many.views["slices"][0][:, ::2, ::2])
    one = prepare_case(to_img(img), to_img(mask), cfg(size=224), "r", "single")
    [(label, grey)] = network_view_items(one, "r")
    assert label == "single" and grey.shape == (224, 224)  # one slice: full size, grey (not red)
    np.testing.assert_array_equal(grey, one.grey[0])


def test_enlarging_resize_equals_skimage():
    """The fast path for enlarging crops samples exactly as skimage's bilinear resize."""
    from skimage.transform import resize

    from radiodeep.roi import _resize

    rng = np.random.default_rng(5)
    for c, h, w, size in ((3, 56, 56, 224), (1, 56, 56, 224), (3, 17, 40, 224), (1, 1, 5, 64), (3, 100, 223, 224)):
        a = rng.random((c, h, w)).astype(np.float32)
        ref = np.clip(resize(a, (c, size, size), order=1, mode="edge", anti_aliasing=False,
                             preserve_range=True), 0, 1).astype(np.float32)
        got = _resize(a, size)
        assert got.dtype == np.float32 and got.shape == (c, size, size)
        if h == w:
            np.testing.assert_array_equal(got, ref)  # square crops (aspect: pad): bit for bit
        else:
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-7)
