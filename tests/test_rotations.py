"""The published augmentation: every 15° rotation x {none, horizontal, vertical}, on a larger crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radiodeep.config import RoiConfig
from radiodeep.learned.augment import parse_augment
from radiodeep.learned.rotations import centre_cut, larger_roi, rotation_crop_side

PUBLISHED = {"mode": "circle", "rotate_deg": 15, "flip": ["horizontal", "vertical"]}


def test_circle_grid_is_72_images_per_image():
    aug = parse_augment(PUBLISHED)
    assert aug.angles() == [15.0 * i for i in range(24)]
    assert aug.flip_sets() == [(), ("horizontal",), ("vertical",)]  # alone, never both
    assert aug.grid_size() == 72
    x = torch.rand(3, 2, 24, 24)
    xa, ya = aug.expand(x, torch.tensor([0, 1, 0]))
    assert xa.shape == (216, 2, 24, 24) and ya.tolist() == [0, 1, 0] * 72
    torch.testing.assert_close(xa[:3], x)  # 0°, no flip first
    torch.testing.assert_close(xa[24 * 3:24 * 3 + 3], torch.flip(x, [-1]))  # 0°, horizontal
    torch.testing.assert_close(xa[6 * 3:6 * 3 + 3], torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)  # 90°
    with pytest.raises(ValueError, match="divides 360"):
        parse_augment({"mode": "circle", "rotate_deg": 7})


def test_crop_side_covers_every_rotation():
    for size in (16, 20, 64, 100, 101):
        side = rotation_crop_side(size)
        assert (side - size) % 2 == 0 and side >= size * np.sqrt(2)
    assert rotation_crop_side(100) == 142


def test_rotated_larger_crop_has_no_padding_in_its_centre():
    """NaN outside the disc the centre square can reach: no rotation may bring one into it."""
    size = 16
    side = rotation_crop_side(size)
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    x = np.where(np.hypot(yy, xx) > (size - 1) / 2 * np.sqrt(2) + 1.5, np.nan, 1.0).astype(np.float32)
    x = torch.from_numpy(np.broadcast_to(x, (1, 2, side, side)).copy())
    xa, _ = parse_augment(PUBLISHED).expand(x, torch.tensor([1]))
    centre = centre_cut(xa.numpy(), size)
    assert np.isfinite(centre).all() and np.allclose(centre, 1.0)
    assert np.isnan(xa.numpy()).any() or (xa.numpy() == 0).any()  # the corners were padding


def test_circle_random_draws_the_same_transforms_seeded():
    aug = parse_augment({**PUBLISHED, "mode": "circle_random"})
    x = torch.rand(6, 1, 12, 12)
    a = aug.random_batch(x, torch.Generator().manual_seed(3))
    b = aug.random_batch(x, torch.Generator().manual_seed(3))
    c = aug.random_batch(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    grid, _ = parse_augment(PUBLISHED).expand(x, torch.zeros(6, dtype=torch.long))
    grid = grid.view(72, 6, 1, 12, 12)
    for i in range(6):  # each drawn image is one of its own 72
        assert (grid[:, i] - a[i]).abs().flatten(1).max(1).values.min() < 1e-5


def test_larger_roi_keeps_pixel_scale():
    roi = RoiConfig(crop="window", window_px=50, size=100)
    big, side = larger_roi(roi)
    assert side == 142 and big.size == 142 and big.window_px == 71
    exact = RoiConfig(crop="exact", size=64)
    assert larger_roi(exact) == (exact, 64)
