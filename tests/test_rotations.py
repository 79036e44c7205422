"""The published augmentation grid: 24 rotations x 3 flips, rotate a larger crop, cut the centre."""

from __future__ import annotations

import numpy as np
import pytest

from radiodeep.config import RoiConfig
from radiodeep.learned.rotations import (apply, augment, centre_cut, larger_roi, rotation_crop_side,
                                         transforms)


def test_grid_is_72_transforms():
    grid = transforms(15, ["horizontal", "vertical"])
    assert len(grid) == 72 and len(set(grid)) == 72
    assert {a for a, _ in grid} == {15.0 * i for i in range(24)}
    with pytest.raises(ValueError, match="divide 360"):
        transforms(7)


def test_crop_side_covers_every_rotation():
    for size in (16, 20, 64, 100, 101):
        side = rotation_crop_side(size)
        assert (side - size) % 2 == 0 and side >= size * np.sqrt(2)
        assert (side - 1) / 2 >= (size - 1) / 2 * np.sqrt(2)  # the rotated corner stays inside


def test_right_angles_and_flips_are_exact():
    rng = np.random.default_rng(0)
    size = 20
    X = rng.random((3, 2, rotation_crop_side(size), rotation_crop_side(size))).astype(np.float32)
    c = centre_cut(X, size)
    np.testing.assert_array_equal(apply(X, 0, "none", size), c)
    np.testing.assert_allclose(apply(X, 90, "none", size), np.rot90(c, 1, axes=(-2, -1)), atol=1e-5)
    np.testing.assert_allclose(apply(X, 180, "horizontal", size), np.rot90(c, 2, axes=(-2, -1))[..., ::-1], atol=1e-5)
    np.testing.assert_array_equal(apply(X, 0, "vertical", size), c[..., ::-1, :])


def test_rotation_never_samples_outside_the_larger_crop():
    """A crop with a NaN frame: if any rotation read the frame, NaN would show up."""
    size = 16
    side = rotation_crop_side(size)
    X = np.full((1, 1, side + 2, side + 2), np.nan, np.float32)
    X[..., 1:-1, 1:-1] = 1.0
    Xa, ya, notes = augment(X, np.array([1]), size)
    assert Xa.shape == (72, 1, size, size) and np.isfinite(Xa).all() and not notes
    assert np.allclose(Xa, 1.0)
    # the same crop without the margin: the corners come from outside; said in the notes
    _, _, notes = augment(np.ones((1, 1, size, size), np.float32), np.array([1]), size)
    assert notes and "corners" in notes[0]


def test_random_mode_is_seeded_and_draws_from_the_grid():
    rng = np.random.default_rng(1)
    size = 16
    X = rng.random((4, 2, rotation_crop_side(size), rotation_crop_side(size))).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    a, ya, _ = augment(X, y, size, mode="random", copies=5, seed=3)
    b, _, _ = augment(X, y, size, mode="random", copies=5, seed=3)
    c, _, _ = augment(X, y, size, mode="random", copies=5, seed=4)
    assert a.shape == (20, 2, size, size) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert list(ya) == list(y) * 5
    full, _, _ = augment(X, y, size)  # every random image is one of the grid's images of its case
    for k in range(len(a)):
        case = k % 4
        assert np.abs(full[case::4] - a[k]).reshape(72, -1).max(axis=1).min() < 1e-6


def test_larger_roi_keeps_pixel_scale():
    roi = RoiConfig(crop="window", window_px=50, size=100)
    big, side = larger_roi(roi)
    assert side == 142 and big.size == 142 and big.window_px == 71
    assert big.window_px / big.size == pytest.approx(roi.window_px / roi.size, rel=0.01)
    exact = RoiConfig(crop="exact", size=64)
    assert larger_roi(exact) == (exact, 64)
