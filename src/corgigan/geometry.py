"""Crop-window math: where the square crop around one dog goes, and how good it is.

The rule reconstructs the crop of the original "Did Somebody Say Corgi?" dataset:

- an image whose short side is below ``min_side`` is too small;
- the side is ``S = max(min_crop, longest side of the box)``, then ``S = min(S, short side)``: the
  window never leaves the image and is never padded, so a dog larger than the short side is cut
  (``partial``);
- the window is centred on the box centre, then slid back inside the image at the borders;
- ``cover`` is the area of the box inside the window over ``S**2``;
- ``center_shift_x`` / ``_y`` is (window centre - box centre) / image width / height, signed. It is
  zero unless the border slide moved the window.

Decisions (cover, shift, partial) are taken on the exact window; the pixel window the crop uses is that
window rounded to whole pixels (half up), which stays inside the image because S is an integer.
Boxes are pixel xyxy in the (EXIF-oriented) image; they are clipped to the image first, since detectors
may return boxes that overshoot the border by a fraction of a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CropWindow:
    """A square crop window in an image and the measures the filter judges it by."""

    x0: int                 # left column of the window, pixels
    y0: int                 # top row of the window, pixels
    side: int               # S, pixels; the window is [x0, x0 + side) x [y0, y0 + side)
    cover: float            # box area inside the window / side**2, in [0, 1]
    center_shift_x: float   # (window centre x - box centre x) / image width, signed
    center_shift_y: float   # (window centre y - box centre y) / image height, signed
    partial: bool           # the box is wider or taller than the window

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The window as integer xyxy (right and bottom exclusive), as PIL's crop box wants it."""
        return self.x0, self.y0, self.x0 + self.side, self.y0 + self.side


def too_small(width: int, height: int, min_side: int) -> bool:
    """True when the image's short side is below `min_side`."""
    return min(width, height) < min_side


def clip_box(box: tuple[float, float, float, float], width: int, height: int
             ) -> tuple[float, float, float, float]:
    """Clip an xyxy box to the image; a box outside the image collapses to zero width or height.

    The project's one box clip (detect's rows, the YOLO labels, the drawn scenes' truth and the crop
    window all use it). Returns floats whatever the input types.
    """
    x0, y0, x1, y1 = box
    x0, x1 = float(min(max(x0, 0.0), width)), float(min(max(x1, 0.0), width))
    y0, y1 = float(min(max(y0, 0.0), height)), float(min(max(y1, 0.0), height))
    return x0, y0, max(x0, x1), max(y0, y1)


def window_side(width: int, height: int, box_w: float, box_h: float, min_crop: int) -> int:
    """S = min(max(min_crop, ceil(longest box side)), short side of the image)."""
    return min(max(min_crop, math.ceil(max(box_w, box_h))), min(width, height))


def _slide(center: float, side: int, extent: int) -> float:
    """Start of a window of `side` centred on `center`, slid back inside [0, extent]."""
    return min(max(center - side / 2.0, 0.0), float(extent - side))


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even; a crop position should not depend on parity.
    return math.floor(x + 0.5)


def crop_window(width: int, height: int, box: tuple[float, float, float, float],
                min_crop: int) -> CropWindow:
    """The square crop window around `box` (xyxy pixels) in a `width` x `height` image.

    Callers check `too_small` first; `min_crop` larger than the short side is capped at the short side.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if min_crop < 1:
        raise ValueError(f"min_crop must be >= 1, got {min_crop}")
    bx0, by0, bx1, by1 = clip_box(box, width, height)
    box_w, box_h = bx1 - bx0, by1 - by0
    side = window_side(width, height, box_w, box_h, min_crop)
    cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
    wx0, wy0 = _slide(cx, side, width), _slide(cy, side, height)
    inside = _overlap(bx0, bx1, wx0, wx0 + side) * _overlap(by0, by1, wy0, wy0 + side)
    return CropWindow(
        x0=_round_half_up(wx0),
        y0=_round_half_up(wy0),
        side=side,
        cover=min(1.0, inside / float(side * side)),
        center_shift_x=(wx0 + side / 2.0 - cx) / width,
        center_shift_y=(wy0 + side / 2.0 - cy) / height,
        partial=side < box_w or side < box_h,
    )
