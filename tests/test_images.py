"""The one image decoder: odd but valid encodings decode to the right RGB picture; bad bytes get a status."""

from __future__ import annotations

import io
import resource
import zipfile

import numpy as np
import pytest
from PIL import Image

from corgigan import images
from corgigan.data.scenes import draw_scene
from corgigan.data.sources.synthetic import bomb_png, encode_jpeg
from corgigan.images import DecodeError, decode, decode_with_format
from corgigan.tables import DECODE_STATUSES

MAX = 50_000_000


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    img, _ = draw_scene(np.random.default_rng(3), 160, 120, 1)
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def test_plain_jpeg_and_png(scene: Image.Image) -> None:
    img, fmt = decode_with_format(encode_jpeg(scene, 95), MAX)
    assert (img.mode, img.size, fmt) == ("RGB", scene.size, "JPEG")
    assert _diff(img, scene) < 4
    img, fmt = decode_with_format(_png(scene), MAX)
    assert fmt == "PNG" and _diff(img, scene) == 0


def test_cmyk_jpeg_keeps_colours(scene: Image.Image) -> None:
    img = decode(encode_jpeg(scene.convert("CMYK"), 95), MAX)
    assert img.mode == "RGB" and _diff(img, scene) < 6      # not inverted, not shifted


def test_grayscale_jpeg(scene: Image.Image) -> None:
    img = decode(encode_jpeg(scene.convert("L"), 95), MAX)
    arr = np.asarray(img)
    assert img.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert _diff(img, scene.convert("L").convert("RGB")) < 3


def test_palette_png(scene: Image.Image) -> None:
    pal = scene.quantize(64)
    img = decode(_png(pal), MAX)
    assert img.mode == "RGB" and _diff(img, pal.convert("RGB")) == 0


def test_palette_png_with_transparency_goes_on_white() -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    arr = np.asarray(decode(buf.getvalue(), MAX))
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[5, 5]) == (255, 255, 255)


def test_rgba_png_composited_over_white(scene: Image.Image) -> None:
    rgba = scene.copy()
    alpha = np.full((scene.height, scene.width), 255, np.uint8)
    alpha[:, : scene.width // 2] = 0                 # left half fully transparent
    alpha[:, scene.width // 2: scene.width * 3 // 4] = 128
    rgba.putalpha(Image.fromarray(alpha, "L"))
    arr = np.asarray(decode(_png(rgba), MAX), np.int32)
    src = np.asarray(scene, np.int32)
    assert (arr[:, : scene.width // 2] == 255).all()
    assert (arr[:, scene.width * 3 // 4:] == src[:, scene.width * 3 // 4:]).all()
    half = slice(scene.width // 2, scene.width * 3 // 4)
    expected = (src[:, half] * 128 + 255 * 127) / 255
    assert np.abs(arr[:, half] - expected).max() <= 2


def test_16bit_png(scene: Image.Image) -> None:
    gray = np.asarray(scene.convert("L"), np.uint16)
    data = _png(Image.fromarray(gray * 257))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")       # really 16-bit on disk
    arr = np.asarray(decode(data, MAX))
    assert np.abs(arr[..., 0].astype(int) - gray).max() <= 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(scene: Image.Image, orientation: int) -> None:
    # Store pixels such that the orientation tag turns them back into `scene`.
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_jpeg(scene.transpose(undo[orientation]), 95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size != scene.size or orientation == 3
    img = decode(data, MAX)
    assert img.size == scene.size and _diff(img, scene) < 4


def test_animated_gif_first_frame(scene: Image.Image) -> None:
    frames = [scene, Image.new("RGB", scene.size, (0, 0, 255)), Image.new("RGB", scene.size, (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img, fmt = decode_with_format(buf.getvalue(), MAX)
    assert fmt == "GIF" and img.mode == "RGB" and _diff(img, scene) < 12


def test_decompression_bomb_rejected_without_allocating() -> None:
    data = bomb_png(20000, 20000)                      # 400 Mpx, a few tens of KB
    assert len(data) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DecodeError) as e:
        decode(data, 100_000_000)
    assert e.value.status == "too_large"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000                          # 400 MB of pixels were never allocated


def test_max_pixels_param_checked_on_header() -> None:
    data = bomb_png(3000, 2000)
    with pytest.raises(DecodeError) as e:
        decode(data, 5_000_000)
    assert e.value.status == "too_large" and "images.max_pixels=5000000" in e.value.detail
    assert decode(data, 6_000_000).size == (3000, 2000)


def test_max_pixels_above_pillows_own_limit_is_honoured(monkeypatch) -> None:
    # Pillow refuses images above twice its MAX_IMAGE_PIXELS: with a limit below images.max_pixels, the
    # param must still decide (and a refusal must quote the param, not Pillow's number).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = bomb_png(100, 50)                                 # 5000 px: over 2 x 1000
    assert decode(data, 6000).size == (100, 50)
    with pytest.raises(DecodeError) as e:
        decode(data, 4000)
    assert e.value.status == "too_large" and "images.max_pixels=4000" in e.value.detail
    assert Image.MAX_IMAGE_PIXELS == 1000                    # Pillow's own setting is left as it was


@pytest.mark.parametrize(("make", "statuses"), [
    (lambda j: b"", {"empty"}),
    (lambda j: b"<html>429 Too Many Requests</html>", {"not_image"}),
    (lambda j: j[: len(j) // 2], {"truncated"}),
    (lambda j: j[:2] + bytes(200), {"not_image", "corrupt"}),          # JPEG magic, garbage after
    (lambda j: j[:300] + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
     {"truncated", "corrupt"}),
])
def test_bad_bytes_get_a_status(scene: Image.Image, make, statuses: set[str]) -> None:
    with pytest.raises(DecodeError) as e:
        decode(make(encode_jpeg(scene, 90)), MAX)
    assert e.value.status in statuses and e.value.status in DECODE_STATUSES


def test_truncated_png(scene: Image.Image) -> None:
    data = _png(scene)
    with pytest.raises(DecodeError) as e:
        decode(data[: len(data) * 2 // 3], MAX)
    assert e.value.status in ("truncated", "corrupt")


def test_shards_round_trip_and_are_byte_identical(tmp_path) -> None:
    blobs = {f"{i:016x}": bytes([i]) * (i + 1) for i in range(5)}
    for run in ("a", "b"):
        with images.ShardWriter(tmp_path / run, 2) as w:
            names = [w.add(k, v, ".bin") for k, v in blobs.items()]
        assert names == ["shard-00000.zip"] * 2 + ["shard-00001.zip"] * 2 + ["shard-00002.zip"]
    got = {k: v for _, k, v in images.iter_shards(tmp_path / "a")}
    assert got == blobs
    for a in images.list_shards(tmp_path / "a"):
        assert a.read_bytes() == (tmp_path / "b" / a.name).read_bytes()
        assert zipfile.ZipFile(a).testzip() is None


def test_not_image_stays_not_image_after_ultralytics_patches_pillow(tmp_path, monkeypatch):
    """ultralytics wraps PIL.Image.open on import; unknown bytes must still be not_image, not corrupt."""
    monkeypatch.setenv("CORGIGAN_CACHE", str(tmp_path))
    from corgigan.detector.detection import setup_ultralytics

    setup_ultralytics()
    import ultralytics.utils.patches  # noqa: F401  (replaces PIL.Image.open)

    with pytest.raises(images.DecodeError) as err:
        images.decode(b"plain text, not an image", 10**8)
    assert err.value.status == "not_image"
