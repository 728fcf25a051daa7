"""Built-in synthetic photos: drawn corgi scenes (scenes.py) as "photos", plus planted cases with known truth.

Same params, same bytes: every image's generator is seeded by (seed, case number, index).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageChops

from corgigan.data.scenes import Box, background_scene, draw_scene, paste_dog
from corgigan.data.sources import SourceItem
from corgigan.geometry import clip_box
from corgigan.params import SyntheticParams

# ---------------------------------------------------------------------------------------------------
# The synthetic source: ordinary photos plus planted cases with known truth

# Planted cases, in the order they are generated after the ordinary photos. Appending a case keeps
# earlier images identical: each image's generator is seeded by (seed, case number, index).
CASES: tuple[str, ...] = (
    "multiple_dogs", "tiny_dog", "cut_by_border", "too_small", "no_dog",
    "near_duplicate", "exact_duplicate",
    "truncated_jpeg", "empty_file", "not_image",
    "cmyk_jpeg", "grayscale_jpeg", "palette_png", "rgba_png", "png16", "exif_rotated",
    "animated_gif", "decompression_bomb",
)
_PAIRED = ("near_duplicate", "exact_duplicate")   # these yield an original and a copy
_BOMB_SIDE = 20000                                # 400 Mpx of 1-bit pixels: a few KB as PNG

Made = tuple[str, bytes, list[Box], str | None]   # (source_id, bytes, true boxes, duplicate_of)


def photo_size(rng: np.random.Generator, min_short: int, max_short: int) -> tuple[int, int]:
    """A photo-like (width, height): short side in [min_short, max_short], aspect 3:4 to 16:9."""
    short = int(rng.integers(min_short, max_short + 1))
    aspect = float(rng.uniform(3 / 4, 16 / 9))      # width / height
    if aspect >= 1:
        return round(short * aspect), short
    return short, round(short / aspect)


def encode_jpeg(img: Image.Image, quality: int, **kwargs: object) -> bytes:
    """JPEG bytes of `img` (deterministic for the same pixels and settings)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels, built without allocating the image.

    All-zero rows compress about 1000:1, so 20000x20000 pixels take a few tens of KB: the shape of
    a decompression bomb, which the decoder must reject from the header alone.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"\0" * (1 + (width + 7) // 8) * 500      # 500 rows of filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    full, rest = divmod(height, 500)
    parts = [comp.compress(rows) for _ in range(full)]
    parts.append(comp.compress(rows[: len(rows) // 500 * rest]))
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)   # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _scale_box(b: Box, s: float) -> Box:
    return (b[0] * s, b[1] * s, b[2] * s, b[3] * s)


def _shift_box(b: Box, dx: int, dy: int, w: int, h: int) -> Box:
    return clip_box((b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy), w, h)


class SyntheticSource:
    """Drawn corgi photos with known truth: `num_images` ordinary one-dog JPEGs plus planted cases.

    Planted cases (`planted_per_case` of each, see CASES) exercise every later decision: several dogs,
    a tiny dog, a dog cut by the border, a too-small image, no dog, near and exact duplicates,
    broken files, and decoder cases (CMYK, grayscale, palette, alpha, 16-bit, EXIF rotation,
    animation, a decompression bomb). Same params, same bytes.
    """

    name = "synthetic"

    def __init__(self, p: SyntheticParams) -> None:
        self.p = p
        self._truth: list[dict[str, object]] | None = None

    @property
    def total(self) -> int:
        """How many items `items` yields."""
        per_case = sum(2 if c in _PAIRED else 1 for c in CASES)
        return self.p.num_images + self.p.planted_per_case * per_case

    def items(self) -> Iterator[SourceItem]:
        """Yield every image, ordinary photos first, then each planted case in CASES order."""
        truth: list[dict[str, object]] = []
        for case_no, case in enumerate(("ordinary", *CASES)):
            count = self.p.num_images if case == "ordinary" else self.p.planted_per_case
            for i in range(count):
                rng = np.random.default_rng([self.p.seed, case_no, i])
                for source_id, data, boxes, dup_of in self._make(case, rng, f"{case}/{i:05d}"):
                    truth.extend(_truth_rows(source_id, case, boxes, dup_of))
                    yield SourceItem(source_id=source_id, data=data, url=f"synthetic://{source_id}")
        self._truth = truth

    def truth(self) -> list[dict[str, object]]:
        """Truth rows (source_id, case, num_dogs, dog_index, x0..y1, duplicate_of as a source_id).

        Collected while `items` runs; computed by a full pass if `items` was not consumed.
        """
        if self._truth is None:
            for _ in self.items():
                pass
        assert self._truth is not None
        return list(self._truth)

    # -- cases -------------------------------------------------------------------------------------

    def _size(self, rng: np.random.Generator) -> tuple[int, int]:
        return photo_size(rng, self.p.min_short_side, self.p.max_short_side)

    def _photo(self, rng: np.random.Generator, num_dogs: int = 1,
               scale: tuple[float, float] = (0.3, 0.7)) -> tuple[Image.Image, list[Box]]:
        w, h = self._size(rng)
        return draw_scene(rng, w, h, num_dogs, scale)

    def _make(self, case: str, rng: np.random.Generator, sid: str) -> list[Made]:
        quality = int(rng.integers(80, 96))
        if case == "ordinary":
            img, boxes = self._photo(rng)
            return [(sid, encode_jpeg(img, quality), boxes, None)]
        if case == "multiple_dogs":
            img, boxes = self._photo(rng, int(rng.integers(2, 5)), (0.2, 0.45))
            return [(sid, encode_jpeg(img, quality), boxes, None)]
        if case == "tiny_dog":
            img, boxes = self._photo(rng, 1, (0.04, 0.08))
            return [(sid, encode_jpeg(img, quality), boxes, None)]
        if case == "cut_by_border":
            return [(sid, *self._cut_by_border(rng, quality), None)]
        if case == "too_small":
            lo = max(16, self.p.min_short_side // 4)
            w, h = photo_size(rng, lo, max(lo, self.p.min_short_side * 3 // 4))
            img, boxes = draw_scene(rng, w, h, 1)
            return [(sid, encode_jpeg(img, quality), boxes, None)]
        if case == "no_dog":
            return [(sid, encode_jpeg(background_scene(rng, *self._size(rng)), quality), [], None)]
        if case == "near_duplicate":
            return self._near_duplicate(rng, sid, quality)
        if case == "exact_duplicate":
            img, boxes = self._photo(rng)
            data = encode_jpeg(img, quality)
            return [(sid, data, boxes, None), (f"{sid}-copy", data, boxes, sid)]
        if case == "truncated_jpeg":
            img, boxes = self._photo(rng)
            data = encode_jpeg(img, quality)
            return [(sid, data[: int(len(data) * rng.uniform(0.3, 0.8))], boxes, None)]
        if case == "empty_file":
            return [(sid, b"", [], None)]
        if case == "not_image":
            text = f"<html><body>429 Too Many Requests ({sid})</body></html>\n"
            return [(sid, text.encode(), [], None)]
        if case == "decompression_bomb":
            return [(sid, bomb_png(_BOMB_SIDE + int(rng.integers(0, 64)), _BOMB_SIDE), [], None)]
        return [(sid, *self._decoder_case(case, rng, quality), None)]

    def _cut_by_border(self, rng: np.random.Generator, quality: int) -> tuple[bytes, list[Box]]:
        """One dog whose centre lies near an edge, so a good part of it is outside the picture."""
        w, h = self._size(rng)
        img = background_scene(rng, w, h)
        side = float(rng.uniform(0.4, 0.6)) * min(w, h)
        edge = int(rng.integers(3))           # left, right or bottom
        off = float(rng.uniform(0.0, 0.25)) * side
        along = float(rng.uniform(0.3, 0.7))
        center = [(off, along * h), (w - off, along * h), (along * w, h - off)][edge]
        box = paste_dog(img, rng, side, center=center)
        return encode_jpeg(img, quality), [box] if box else []

    def _near_duplicate(self, rng: np.random.Generator, sid: str, quality: int) -> list[Made]:
        """An original and a copy re-encoded at another quality, resized, or shifted a few pixels."""
        img, boxes = self._photo(rng)
        original = encode_jpeg(img, quality)
        variant = int(rng.integers(3))
        if variant == 0:
            copy, copy_boxes = encode_jpeg(img, int(rng.integers(40, 70))), boxes
        elif variant == 1:
            s = float(rng.uniform(0.7, 0.9))
            small = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BICUBIC)
            copy, copy_boxes = encode_jpeg(small, quality), [_scale_box(b, s) for b in boxes]
        else:
            dx, dy = (int(v) for v in rng.integers(2, 7, size=2))
            shifted = img.crop((dx, dy, img.width, img.height))
            copy = encode_jpeg(shifted, quality)
            copy_boxes = [_shift_box(b, dx, dy, shifted.width, shifted.height) for b in boxes]
        return [(sid, original, boxes, None), (f"{sid}-copy", copy, copy_boxes, sid)]

    def _decoder_case(self, case: str, rng: np.random.Generator,
                      quality: int) -> tuple[bytes, list[Box]]:
        """Odd but valid encodings; the decoder must give the same RGB picture, right way up."""
        if case == "exif_rotated":
            img, boxes = self._photo(rng)     # drawn as displayed: the truth is in this frame
            orientation = 6 if rng.random() < 0.5 else 8
            # Store the pixels so that applying the EXIF orientation gives back `img`.
            undo = Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270
            stored = img.transpose(undo)
            exif = Image.Exif()
            exif[0x0112] = orientation
            return encode_jpeg(stored, quality, exif=exif.tobytes()), boxes
        img, boxes = self._photo(rng)
        if case == "cmyk_jpeg":
            return encode_jpeg(img.convert("CMYK"), quality), boxes
        if case == "grayscale_jpeg":
            return encode_jpeg(img.convert("L"), quality), boxes
        if case == "palette_png":
            return _png(img.quantize(colors=int(rng.integers(32, 257)))), boxes
        if case == "rgba_png":
            # Opaque dogs on a background whose opacity fades from 40% to 100% (composited on white).
            alpha = np.linspace(100, 255, img.height, dtype=np.float32)[:, None].repeat(img.width, 1)
            for x0, y0, x1, y1 in boxes:
                alpha[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 255
            rgba = img.copy()
            rgba.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
            return _png(rgba), boxes
        if case == "png16":
            gray16 = np.asarray(img.convert("L"), dtype=np.uint16) * 257
            return _png(Image.fromarray(gray16)), boxes
        if case == "animated_gif":
            frames = [img] + [ImageChops.offset(img, int(rng.integers(-20, 21)), 0) for _ in range(2)]
            buf = io.BytesIO()
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
            return buf.getvalue(), boxes       # the first frame is the one decoded
        raise ValueError(f"unknown synthetic case {case!r}")


def _truth_rows(source_id: str, case: str, boxes: list[Box],
                duplicate_of: str | None) -> list[dict[str, object]]:
    """One row per true box, or one row with a null box when the image has no dog."""
    base = {"source_id": source_id, "case": case, "num_dogs": len(boxes), "duplicate_of": duplicate_of}
    if not boxes:
        return [{**base, "dog_index": None, "x0": None, "y0": None, "x1": None, "y1": None}]
    return [{**base, "dog_index": k, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
            for k, b in enumerate(boxes)]
