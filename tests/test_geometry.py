"""Crop-window rule: hand-worked examples and properties over many random boxes."""

from __future__ import annotations

import random

import pytest

from corgigan.geometry import CropWindow, clip_box, crop_window, too_small, window_side


def test_too_small_uses_the_short_side():
    assert too_small(799, 2000, 800)
    assert too_small(2000, 799, 800)
    assert not too_small(800, 800, 800)


def test_centred_dog_in_a_large_photo():
    # 1600x1200, box 400x300 centred at (800, 600): S = max(800, 400) = 800, window at (400, 200).
    w = crop_window(1600, 1200, (600, 450, 1000, 750), min_crop=800)
    assert w == CropWindow(x0=400, y0=200, side=800, cover=pytest.approx(400 * 300 / 800**2),
                           center_shift_x=0.0, center_shift_y=0.0, partial=False)
    assert w.box == (400, 200, 1200, 1000)


def test_big_dog_sets_the_side():
    # box 1000x500: S = max(800, 1000) = 1000 (<= short side 1200), cover = 1000*500 / 1000^2.
    w = crop_window(1600, 1200, (300, 350, 1300, 850), min_crop=800)
    assert (w.x0, w.y0, w.side) == (300, 100, 1000)
    assert w.cover == pytest.approx(0.5)
    assert not w.partial


def test_dog_larger_than_the_short_side_is_partial_and_never_padded():
    # box 1400 wide in a 1600x1000 image: S = min(1400, 1000) = 1000; cover = 1000*400/1000^2.
    w = crop_window(1600, 1000, (100, 300, 1500, 700), min_crop=800)
    assert w.side == 1000 and w.partial
    assert (w.x0, w.y0) == (300, 0)
    assert w.cover == pytest.approx(0.4)
    # the window is centred horizontally; vertically it is the whole image (slid by 0: centre 500)
    assert w.center_shift_x == 0.0 and w.center_shift_y == 0.0


def test_border_slide_shifts_the_centre():
    # dog in the top-left corner: box (0, 0, 200, 100) in 1600x1200, S = 800.
    # Centred window would start at (100-400, 50-400) = (-300, -350): slid to (0, 0).
    # Window centre (400, 400), box centre (100, 50): shift = (300/1600, 350/1200).
    w = crop_window(1600, 1200, (0, 0, 200, 100), min_crop=800)
    assert (w.x0, w.y0, w.side) == (0, 0, 800)
    assert w.center_shift_x == pytest.approx(300 / 1600)
    assert w.center_shift_y == pytest.approx(350 / 1200)
    assert w.cover == pytest.approx(200 * 100 / 800**2)


def test_slide_at_the_far_border_is_negative():
    # box centre (1550, 600) in 1600x1200: window x0 = 1550-400 = 1150 > 1600-800 = 800, slid to 800.
    w = crop_window(1600, 1200, (1500, 550, 1600, 650), min_crop=800)
    assert w.x0 == 800
    assert w.center_shift_x == pytest.approx((1200 - 1550) / 1600)


def test_fractional_box_rounds_half_up_and_side_ceils():
    # box 100.5 wide: S = max(50, ceil(100.5)) = 101; centre 60.25 -> x0 = 9.75 -> 10.
    w = crop_window(400, 300, (10.0, 10.0, 110.5, 60.0), min_crop=50)
    assert w.side == 101
    assert w.x0 == 10
    assert not w.partial


def test_box_overshooting_the_image_is_clipped():
    assert clip_box((-5.0, -2.0, 105.0, 50.0), 100, 80) == (0.0, 0.0, 100.0, 50.0)
    w = crop_window(100, 80, (-5.0, -2.0, 105.0, 50.0), min_crop=40)
    assert w.side == 80 and w.partial            # clipped box is 100 wide > short side 80
    assert 0 <= w.x0 <= 20 and w.y0 == 0


def test_window_side_bounds():
    assert window_side(1000, 900, 10, 10, 800) == 800
    assert window_side(1000, 900, 850, 10, 800) == 850
    assert window_side(1000, 900, 950, 10, 800) == 900


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError):
        crop_window(0, 10, (0, 0, 1, 1), 1)
    with pytest.raises(ValueError):
        crop_window(10, 10, (0, 0, 1, 1), 0)


def _random_case(rng: random.Random) -> tuple[int, int, tuple[float, float, float, float], int]:
    width, height = rng.randint(1, 3000), rng.randint(1, 3000)
    x0, x1 = sorted(rng.uniform(-20, width + 20) for _ in range(2))
    y0, y1 = sorted(rng.uniform(-20, height + 20) for _ in range(2))
    return width, height, (x0, y0, x1, y1), rng.randint(1, 1200)


def test_properties_over_random_boxes():
    rng = random.Random(0)
    for _ in range(5000):
        width, height, box, min_crop = _random_case(rng)
        w = crop_window(width, height, box, min_crop)
        bx0, by0, bx1, by1 = clip_box(box, width, height)
        bw, bh = bx1 - bx0, by1 - by0
        short = min(width, height)
        # window inside the image, side within [min(min_crop, short), short]
        assert w.x0 >= 0 and w.x0 + w.side <= width
        assert w.y0 >= 0 and w.y0 + w.side <= height
        assert min(min_crop, short) <= w.side <= short
        assert w.side >= min(max(bw, bh), short) - 1e-9
        # cover in [0, 1] and equal to the rule's formula (box inside the image after clipping)
        assert 0.0 <= w.cover <= 1.0
        assert w.cover == pytest.approx(min(bw, w.side) * min(bh, w.side) / w.side**2, abs=1e-9)
        assert w.partial == (w.side < bw or w.side < bh)
        # the shift is zero exactly when the centred window did not have to slide
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        if w.side / 2 <= cx <= width - w.side / 2:
            assert w.center_shift_x == 0.0
        else:
            assert w.center_shift_x != 0.0
        if w.side / 2 <= cy <= height - w.side / 2:
            assert w.center_shift_y == 0.0
        else:
            assert w.center_shift_y != 0.0
        assert abs(w.center_shift_x) <= 0.5 and abs(w.center_shift_y) <= 0.5
        # the integer window is the exact window rounded: within half a pixel of the shifted centre
        assert abs(w.x0 + w.side / 2 - (cx + w.center_shift_x * width)) <= 0.5 + 1e-9
        assert abs(w.y0 + w.side / 2 - (cy + w.center_shift_y * height)) <= 0.5 + 1e-9


def test_box_wholly_outside_collapses_to_the_border():
    # Left of / above the image: both edges clip to 0, a zero-width (zero-height) box at the border.
    assert clip_box((-10.0, 5.0, -5.0, 9.0), 100, 80) == (0.0, 5.0, 0.0, 9.0)
    assert clip_box((5.0, -10.0, 9.0, -5.0), 100, 80) == (5.0, 0.0, 9.0, 0.0)
    assert clip_box((0.25, 0.25, 0.75, 0.5), 100, 80) == (0.25, 0.25, 0.75, 0.5)   # under a pixel: kept


def test_one_pixel_images_are_valid_and_bad_sizes_say_which():
    assert crop_window(10, 1, (2.0, 0.0, 3.0, 1.0), 1) == CropWindow(
        x0=2, y0=0, side=1, cover=1.0, center_shift_x=0.0, center_shift_y=0.0, partial=False)
    assert crop_window(1, 10, (0.0, 2.0, 1.0, 3.0), 1).box == (0, 2, 1, 3)
    with pytest.raises(ValueError, match=r"^image size must be positive, got 10x0$"):
        crop_window(10, 0, (0, 0, 1, 1), 1)
    with pytest.raises(ValueError, match=r"^min_crop must be >= 1, got 0$"):
        crop_window(10, 10, (0, 0, 1, 1), 0)
