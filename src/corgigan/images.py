"""Safe image decoding and the shard store.

`decode` is the project's one image decoder: any bytes in, an RGB image the right way up out, or a
DecodeError whose `status` is one of tables.DECODE_STATUSES. Images are stored in zip shards (stored,
not compressed: the bytes are already compressed images) with fixed member timestamps, so the same
images give byte-identical shards. `image_id` addresses an image; its shard is recorded in a table, and
its member in the shard is `<image_id><ext>` (`member_image_id` reads it back). `zip_member` makes every
deterministic zip member the project writes: these shards and the dataset zip.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from corgigan.stylegan2.atomic import commit, make_temp

ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # fixed member time (the earliest a zip can hold): byte-identical zips
# filter.resize_filter's names -> Pillow's filters: the square crops of the filter stage and of photos.
RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


class DecodeError(Exception):
    """Bytes that do not decode to a usable image; `status` says why."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data uses 0..65535; a 32-bit "I" image may hold anything, so scale by its own range.
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def sniff_format(data: bytes) -> str | None:
    """The image format that `data`'s magic number announces, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes into an EXIF-oriented RGB image (first frame of animations).

    Raises DecodeError with status empty, not_image, too_large, truncated or corrupt.
    """
    return decode_with_format(data, max_pixels)[0]


def _open(data: bytes) -> Image.Image:
    """Pillow's open on bytes.

    ultralytics replaces PIL.Image.open with a wrapper that, on bytes Pillow cannot identify, tries to
    load a HEIF plugin; offline that fails with ImportError. It is still an unidentified image.
    """
    try:
        return Image.open(io.BytesIO(data))
    except ImportError as e:
        raise UnidentifiedImageError(f"unidentified ({e})") from e


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow open images up to `max_pixels` (Pillow raises above twice its MAX_IMAGE_PIXELS)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(before or 0, max_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def decode_with_format(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Like `decode`, and also return the Pillow format name of the bytes (JPEG, PNG, GIF, ...)."""
    if len(data) == 0:
        raise DecodeError("empty", "zero bytes")
    try:
        with warnings.catch_warnings(), _pillow_pixel_limit(max_pixels):
            # images.max_pixels is applied below, on the header; Pillow's own bomb check, with its own
            # limit, would otherwise cap the param silently and quote its own number.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(data)
            fmt = img.format or "unknown"
            w, h = img.size
            # Checked on the header, before any pixel is allocated.
            if w * h > max_pixels:
                raise DecodeError("too_large", f"{w}x{h} pixels > images.max_pixels={max_pixels}")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img), fmt
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)) from e
    except UnidentifiedImageError as e:
        fmt = sniff_format(data)
        if fmt:    # the magic number says image, but the header is broken
            raise DecodeError("corrupt", f"{fmt} signature but unreadable header") from e
        raise DecodeError("not_image", "not a recognised image format") from e
    except OSError as e:
        status = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "corrupt"
        raise DecodeError(status, str(e)) from e
    except MemoryError as e:
        raise DecodeError("too_large", "out of memory while decoding") from e
    except Exception as e:
        # Untrusted bytes reach deep into codec plugins, whose failures take many exception types;
        # any of them means these bytes are not a usable image, and must not stop the stage.
        raise DecodeError("corrupt", f"{type(e).__name__}: {e}") from e


def sha256(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding the pixels; ValueError if not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def encode_png(img: Image.Image) -> bytes:
    """Encode an image as PNG; the same pixels always give the same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def crop_square(img: Image.Image, box: tuple[int, int, int, int], resolution: int,
                resize_filter: str) -> Image.Image:
    """Cut the square `box` (PIL's crop box: xyxy, right and bottom exclusive) out of `img` and resize it to
    resolution x resolution with the named filter (a key of RESAMPLE); the filter stage's crop."""
    # One resize with box=, not crop() then resize(): the filter then reads the pixels just outside the box
    # too, so the two differ along the edges, and every crop of the dataset was made this way.
    return img.resize((resolution, resolution), RESAMPLE[resize_filter], box=box)


def zip_member(name: str) -> zipfile.ZipInfo:
    """The header of a deterministic zip member `name`: stored (the bytes are already compressed images),
    dated ZIP_DATE, mode 0644. The same members in the same order give the same zip bytes."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


class ShardWriter:
    """Write (image_id, bytes) pairs into numbered zip shards of at most `shard_size` images.

    Each shard is written to a temporary file and renamed when full or on `close`, so a shard file
    that exists is complete. Use as a context manager.
    """

    def __init__(self, directory: str | Path, shard_size: int, prefix: str = "shard") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.prefix = prefix
        self._index = 0
        self._count = 0
        self._zip: zipfile.ZipFile | None = None
        self._tmp: Path | None = None

    @property
    def current_name(self) -> str:
        return f"{self.prefix}-{self._index:05d}.zip"

    def add(self, image_id: str, data: bytes, ext: str) -> str:
        """Store one image as `<image_id><ext>`; return the name of the shard that holds it."""
        if self._zip is None:
            self._tmp = make_temp(self.directory / self.current_name)
            self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        self._zip.writestr(zip_member(f"{image_id}{ext}"), data)
        name = self.current_name
        self._count += 1
        if self._count == self.shard_size:
            self._finish()
        return name

    def _finish(self) -> None:
        if self._zip is None:
            return
        self._zip.close()
        assert self._tmp is not None
        commit(self._tmp, self.directory / self.current_name)   # the project's one fsync-then-rename
        self._zip, self._tmp = None, None
        self._index += 1
        self._count = 0

    def close(self) -> None:
        """Finish the last, partly filled shard."""
        self._finish()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        elif self._zip is not None:
            self._zip.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)


def member_image_id(member: str) -> str:
    """The image_id of a shard member: its name without the extension (`ShardWriter.add`'s naming)."""
    return member.rsplit(".", 1)[0] if "." in member else member


def members_by_id(zf: zipfile.ZipFile) -> dict[str, str]:
    """image_id -> member name for every member of an open shard (to read chosen images only)."""
    return {member_image_id(n): n for n in zf.namelist()}


def iter_shard(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield (image_id, bytes) for every image in one shard, in stored order."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            yield member_image_id(info.filename), zf.read(info)


def list_shards(directory: str | Path, prefix: str = "shard") -> list[Path]:
    """The complete shard files in `directory`, in order."""
    return sorted(Path(directory).glob(f"{prefix}-*.zip"))


def iter_shards(directory: str | Path, prefix: str = "shard") -> Iterator[tuple[str, str, bytes]]:
    """Yield (shard name, image_id, bytes) over every shard in `directory`, in order."""
    for path in list_shards(directory, prefix):
        for image_id, data in iter_shard(path):
            yield path.name, image_id, data
