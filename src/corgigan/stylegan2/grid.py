"""The project's one image tiler: equal-sized uint8 images into one grid array.

The training loop's sample grids, generate's pictures and the dataset's contact sheet all tile through
`tile`; each caller keeps only its own conversion to uint8 and its own labels. It lives in stylegan2 (numpy
only) so that the loop can use it without importing the rest of corgigan.
"""

from __future__ import annotations

import numpy as np


def tile(images: np.ndarray, cols: int, *, rows: int | None = None, pad: int = 0,
         fill: int = 0) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] row-major into rows of `cols`; return [H', W', C] uint8.

    `rows` defaults to as many as the images need; `pad` pixels of `fill` separate the tiles and frame
    the grid (none by default), so H' = rows * (H + pad) + pad and W' = cols * (W + pad) + pad. Cells
    without an image (the end of the last row) are `fill`.
    """
    n, h, w, c = images.shape
    rows = -(-n // cols) if rows is None else rows
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit {rows} rows of {cols}")
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid
