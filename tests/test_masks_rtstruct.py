"""RTSTRUCT -> mask on synthetic DICOM series the tests write themselves (pydicom):
volumes against analytic values, holes, islands, slice matching, any patient orientation,
and bad input (wrong frame of reference, empty ROI, corrupt files)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_helpers import circle, slice_points, write_ct_series, write_rtstruct
from radiodeep.cohort import Case
from radiodeep.errors import CaseError
from radiodeep.imageio import read_case_images, read_image
from radiodeep.masks import read_dicom_mask
from radiodeep.masks.rtstruct import fill_polygons


def _centred(shape, spacing, orientation="HFS"):
    """The origin that puts the volume's centre at (0, 0, 0) mm."""
    from dicom_helpers import ORIENTATIONS

    iop = np.asarray(ORIENTATIONS[orientation], float)
    normal = np.cross(iop[:3], iop[3:])
    nz, ny, nx = shape
    return tuple(-(iop[:3] * (nx - 1) * spacing[0] + iop[3:] * (ny - 1) * spacing[1]
                   + normal * (nz - 1) * spacing[2]) / 2)


def _mask(tmp_path, series, rois, roi=None, notes=None, **kw):
    rs = write_rtstruct(tmp_path / "RS.dcm", series, rois, **kw)
    case = Case("c1", tmp_path / "ct", rs, "a", roi_name=roi)
    image, mask = read_case_images(case, notes=notes)
    return image, sitk.GetArrayFromImage(mask)


def _square_px(series, k, c0, c1, r0, r1, ref=True):
    """A square whose vertices lie at pixel coordinates (columns c0..c1, rows r0..r1)."""
    sx, sy = series["spacing"][:2]
    xy = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1]], float) * [sx, sy]
    return slice_points(series, k, xy), (k if ref else None)


def test_fill_polygons_rule_on_pixel_centres():
    # vertices on pixel centres: left/top edges inside, right/bottom edges outside (half-open)
    sq = np.array([[2, 2], [6, 2], [6, 6], [2, 6]], float)
    out = fill_polygons([sq], 10, 10)
    assert out.sum() == 16 and out[2:6, 2:6].all()
    # the same square drawn the other way round gives the same pixels
    assert (fill_polygons([sq[::-1]], 10, 10) == out).all()
    # a square nested inside another cuts a hole (even-odd); vertex order does not matter
    inner = np.array([[3.5, 3.5], [4.5, 3.5], [4.5, 4.5], [3.5, 4.5]])
    holed = fill_polygons([sq, inner[::-1]], 10, 10)
    assert holed.sum() == 15 and holed[4, 4] == 0
    # a polygon partly outside the image is clipped, not wrapped
    assert fill_polygons([sq - 4], 10, 10).sum() == 4


def test_sphere_volume_close_to_analytic(tmp_path):
    shape, spacing, r = (36, 40, 40), (0.8, 0.8, 1.0), 12.0
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing, origin=_centred(shape, spacing))
    centre_k = (shape[0] - 1) / 2 + 0.3  # off the slice grid
    contours = []
    for k in range(shape[0]):
        dz = (k - centre_k) * spacing[2]
        if abs(dz) < r:
            contours.append((slice_points(series, k, circle(15.6, 15.6, np.sqrt(r * r - dz * dz), 256)), k))
    image, arr = _mask(tmp_path, series, {"Sphere": contours})
    volume = arr.sum() * np.prod(spacing)
    analytic = 4 / 3 * np.pi * r ** 3
    assert abs(volume - analytic) / analytic < 0.01, (volume, analytic)
    # the centre voxel of the sphere is inside, a corner voxel is not
    assert arr[int(round(centre_k)), 19:21, 19:21].all() and arr[0, 0, 0] == 0


def test_ring_with_a_hole_and_two_islands(tmp_path):
    shape, spacing = (3, 48, 48), (1.0, 1.0, 2.0)
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing, origin=_centred(shape, spacing))
    ring = [(slice_points(series, 1, circle(23.5, 23.5, 15.0, 400)), 1),
            (slice_points(series, 1, circle(23.5, 23.5, 7.0, 400)), 1)]
    islands = [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5), _square_px(series, 1, 40.5, 45.5, 40.5, 42.5)]
    _, arr = _mask(tmp_path, series, {"Ring": ring, "Islands": islands}, roi="Ring")
    area = arr[1].sum()
    assert abs(area - np.pi * (15 ** 2 - 7 ** 2)) / (np.pi * (15 ** 2 - 7 ** 2)) < 0.02
    assert arr[1, 23:25, 23:25].sum() == 0  # the hole is cut, not filled
    assert arr[1, 23, 23 + 11] == 1  # the ring itself
    assert arr[0].sum() == 0 and arr[2].sum() == 0
    _, isl = _mask(tmp_path, series, {"Ring": ring, "Islands": islands}, roi="Islands")
    assert isl[1].sum() == 4 * 4 + 5 * 2  # both islands, exactly their pixel centres
    assert isl[1, 3:7, 3:7].all() and isl[1, 41:43, 41:46].all()


def test_contour_without_slice_reference_is_placed_by_position(tmp_path):
    shape, spacing = (5, 20, 20), (1.0, 1.0, 2.5)
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing)
    with_ref = [_square_px(series, 2, 4.5, 9.5, 4.5, 9.5), _square_px(series, 3, 4.5, 9.5, 4.5, 9.5)]
    without = [_square_px(series, 2, 4.5, 9.5, 4.5, 9.5, ref=False),
               (_square_px(series, 3.3, 4.5, 9.5, 4.5, 9.5)[0], None)]  # 0.75 mm off slice 3: within half
    _, a = _mask(tmp_path, series, {"GTV": with_ref})
    notes: list[str] = []
    _, b = _mask(tmp_path, series, {"GTV": without}, notes=notes)
    assert a.sum() == 50 and (a == b).all()
    assert not any("skipped" in n for n in notes)


@pytest.mark.parametrize("orientation", ["HFS", "FFS", "HFP"])
def test_any_patient_orientation_puts_the_mask_where_the_contour_is(tmp_path, orientation):
    shape, spacing = (6, 24, 28), (0.9, 1.1, 2.0)
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing,
                             origin=_centred(shape, spacing, orientation), orientation=orientation)
    # an L-shaped polygon in PATIENT coordinates (x, y), on the slices at z = -5, -3, -1 mm
    lx = np.array([-8.0, 6.3, 6.3, -2.1, -2.1, -8.0])
    ly = np.array([-9.2, -9.2, -4.4, -4.4, 7.7, 7.7])
    zs = [-5.0, -3.0, -1.0]
    contours = [(np.stack([lx, ly, np.full(6, z)], axis=1), None) for z in zs]
    image, arr = _mask(tmp_path, series, {"L": contours})
    # independent truth: every voxel centre's physical point, through SimpleITK's own geometry
    from matplotlib.path import Path as MplPath

    poly = MplPath(np.stack([lx, ly], axis=1))
    expected = np.zeros_like(arr)
    for k in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            for i in range(arr.shape[2]):
                x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))
                if min(abs(z - zz) for zz in zs) < 1e-3 and poly.contains_point((x, y)):
                    expected[k, j, i] = 1
    assert expected.sum() > 100
    assert (arr == expected).all(), (arr.sum(), expected.sum())


def test_feet_first_series_gives_the_same_volume_as_head_first(tmp_path):
    sums = []
    for orientation in ("HFS", "FFS"):
        folder = tmp_path / orientation
        shape, spacing = (10, 30, 30), (1.0, 1.0, 2.0)
        series = write_ct_series(folder / "ct", shape=shape, spacing=spacing, orientation=orientation,
                                 origin=_centred(shape, spacing, orientation))
        contours = [(np.c_[circle(1.0, -2.0, 6.0), np.full(180, z)], None) for z in (-5.0, -3.0, -1.0, 1.0)]
        image, arr = _mask(folder, series, {"GTV": contours})
        sums.append(arr.sum())
        centre = image.TransformPhysicalPointToIndex((1.0, -2.0, -3.0))
        assert arr[centre[2], centre[1], centre[0]] == 1
    assert sums[0] == sums[1] > 0


def test_contours_between_slices_or_outside_are_reported_not_dropped_silently(tmp_path):
    shape, spacing = (6, 20, 20), (1.0, 1.0, 2.0)
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing)
    # remove slice 3: the series now has a 4 mm gap between slices 2 and 4
    (tmp_path / "ct" / "slice003.dcm").unlink()
    contours = [_square_px(series, 1, 4.5, 9.5, 4.5, 9.5, ref=False),
                _square_px(series, 3, 4.5, 9.5, 4.5, 9.5, ref=False),    # in the gap
                _square_px(series, 9, 4.5, 9.5, 4.5, 9.5, ref=False),    # beyond the last slice
                _square_px(series, 2, 40.5, 45.5, 4.5, 9.5, ref=False)]  # beside the image
    notes: list[str] = []
    _, arr = _mask(tmp_path, series, {"GTV": contours}, notes=notes)
    assert arr.sum() == 25
    text = " | ".join(notes)
    assert "1 of 4 contours fall between slices (skipped): #2 (2.0 mm from the nearest slice)" in text
    assert "1 of 4 contours lie outside the image's slice range (skipped): #3" in text
    assert "1 of 4 contours lie outside the image in-plane (skipped): #4" in text


def test_contour_far_from_the_slice_it_references_is_reported(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(6, 20, 20), spacing=(1.0, 1.0, 2.0))
    pts, _ = _square_px(series, 4, 4.5, 9.5, 4.5, 9.5)
    notes: list[str] = []
    _, arr = _mask(tmp_path, series, {"GTV": [(pts, 1)]}, notes=notes)
    assert arr[1].sum() == 25  # the reference wins
    assert any("more than half a slice from the slice they reference" in n and "(6.0 mm)" in n for n in notes)


def test_roi_selection_exact_regex_none_several(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    sq = [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]
    rois = {"GTV_Mass_CT": sq, "gtv_node": sq, "Body": sq}
    notes: list[str] = []
    _mask(tmp_path, series, rois, roi="(?i)^gtv_mass", notes=notes)
    assert "ROI 'GTV_Mass_CT' taken (roi_name '(?i)^gtv_mass' matched 1 of 3" in notes[0]
    with pytest.raises(CaseError, match=r"matches 2 structures in the RTSTRUCT \('GTV_Mass_CT', 'gtv_node'\)"):
        _mask(tmp_path, series, rois, roi="(?i)^gtv")
    with pytest.raises(CaseError, match=r"no structure in the RTSTRUCT matches roi_name 'GTV_Mass\$' \(names "
                                        r"available: 'GTV_Mass_CT', 'gtv_node', 'Body'\); did you mean 'GTV_Mass_CT'"):
        _mask(tmp_path, series, rois, roi="GTV_Mass$")  # as a regex it matches nothing
    with pytest.raises(CaseError, match="holds 3 structures .* name the ROI with cohort.roi_name"):
        _mask(tmp_path, series, rois, roi=None)


def test_frame_of_reference_mismatch_is_refused_with_both_uids(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    with pytest.raises(CaseError) as err:
        _mask(tmp_path, series, {"GTV": [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]}, frame_uid="1.2.3.4.5.6.7")
    assert "1.2.3.4.5.6.7" in err.value.reason and series["frame"] in err.value.reason


def test_roi_without_contour_is_invalid_naming_it(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    with pytest.raises(CaseError, match="ROI 'GTV_empty' has no contour on any slice"):
        _mask(tmp_path, series, {"GTV_empty": [], "Body": [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]},
              roi="GTV_empty")


def test_corrupt_rtstruct_fails_naming_the_file(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    rs = write_rtstruct(tmp_path / "RS.dcm", series, {"GTV": [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]})
    data = rs.read_bytes()
    for cut in (0.3, 0.5, 0.7, 0.9, 0.99):  # truncated anywhere: header, ROI list, contours
        rs.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(CaseError, match="RS.dcm"):
            read_case_images(Case("c1", tmp_path / "ct", rs, "a"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 50 + b"not dicom at all" * 20)
    with pytest.raises(CaseError, match="junk.dcm"):
        read_case_images(Case("c1", tmp_path / "ct", junk, "a"))


def test_corrupt_slice_in_the_image_series_fails_naming_the_file(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    rs = write_rtstruct(tmp_path / "RS.dcm", series, {"GTV": [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]})
    (tmp_path / "ct" / "slice999.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    with pytest.raises(CaseError, match="slice999.dcm"):
        read_case_images(Case("c1", tmp_path / "ct", rs, "a"))


def test_mask_is_cached_by_file_hash_and_rule(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    rs = write_rtstruct(tmp_path / "RS.dcm", series, {"GTV": [_square_px(series, 1, 2.5, 6.5, 2.5, 6.5)]})
    cache = tmp_path / "cache"
    image = read_image(tmp_path / "ct")
    first: list[str] = []
    m1 = read_dicom_mask("rtstruct", rs, tmp_path / "ct", image, "c1", cache_dir=cache, notes=first)
    entries = list(cache.glob("*.npz"))
    assert len(entries) == 1
    again: list[str] = []
    m2 = read_dicom_mask("rtstruct", rs, tmp_path / "ct", image, "c1", cache_dir=cache, notes=again)
    assert again == first and (sitk.GetArrayFromImage(m1) == sitk.GetArrayFromImage(m2)).all()
    assert m2.GetOrigin() == image.GetOrigin() and m2.GetDirection() == image.GetDirection()
    # a changed RTSTRUCT (another square) gets a new entry, not the stale mask
    write_rtstruct(rs, series, {"GTV": [_square_px(series, 1, 2.5, 8.5, 2.5, 6.5)]})
    m3 = read_dicom_mask("rtstruct", rs, tmp_path / "ct", image, "c1", cache_dir=cache)
    assert sitk.GetArrayFromImage(m3).sum() == 24 and len(list(cache.glob("*.npz"))) == 2


def test_oblique_series_contour_drawn_in_its_slice_plane(tmp_path):
    """An oblique MR-like series (rows rotated 30 deg about z, tilted 20 deg): the contour drawn
    on slice 2 lands on voxel centres whose own in-plane position lies inside it."""
    a, b = np.radians(30), np.radians(20)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    shape, spacing = (5, 26, 22), (1.1, 0.9, 3.0)
    series = write_ct_series(tmp_path / "ct", shape=shape, spacing=spacing, orientation=list(row) + list(col),
                             origin=(10.0, -20.0, 5.0))
    poly = np.array([[3.2, 2.1], [17.5, 4.4], [12.3, 19.8], [7.7, 11.1], [2.4, 15.6]])  # mm in the plane
    image, arr = _mask(tmp_path, series, {"GTV": [(slice_points(series, 2, poly), None)]})
    from matplotlib.path import Path as MplPath

    path = MplPath(poly)
    slice_origin = series["origin"] + 2 * spacing[2] * series["normal"]
    expected = np.zeros_like(arr)
    for j in range(shape[1]):
        for i in range(shape[2]):
            p = np.array(image.TransformIndexToPhysicalPoint((i, j, 2))) - slice_origin
            assert abs(p @ series["normal"]) < 1e-6
            expected[2, j, i] = path.contains_point((p @ row, p @ col))
    assert expected.sum() > 60 and (arr == expected).all()


def test_roi_whose_contours_all_miss_the_image_is_invalid_naming_it(tmp_path):
    series = write_ct_series(tmp_path / "ct", shape=(3, 16, 16))
    off = [_square_px(series, 7, 2.5, 6.5, 2.5, 6.5, ref=False), _square_px(series, -3, 2.5, 6.5, 2.5, 6.5, ref=False)]
    with pytest.raises(CaseError, match=r"ROI 'GTV': none of its 2 contours lies on an image slice \(all 2 contours "
                                        r"lie outside the image's slice range"):
        _mask(tmp_path, series, {"GTV": off})


def test_a_dicom_image_as_mask_still_reads_as_a_label_map(tmp_path):
    """Only RTSTRUCT and SEG files take the new route: a mask stored as a DICOM image does not."""
    values = np.zeros((1, 16, 16), np.uint16)
    values[0, 4:9, 5:12] = 1
    write_ct_series(tmp_path / "img", shape=(1, 16, 16))
    write_ct_series(tmp_path / "msk", shape=(1, 16, 16), values=values)
    image, mask = read_case_images(Case("c1", tmp_path / "img" / "slice000.dcm", tmp_path / "msk" / "slice000.dcm", "a"))
    assert sitk.GetArrayFromImage(mask).sum() == 35
