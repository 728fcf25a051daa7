"""Drawn scenes: procedurally drawn corgi-like dogs among non-dog clutter on varied backgrounds.

`draw_scene` draws one picture and returns the exact box of every dog in it. Two stages use it, for
different ends: the detector stage trains on such scenes (yolo_data.synthetic_samples) and the synthetic
scrape source turns them into "photos" with planted cases (sources/synthetic.py). It is its own module so
that each of those stages depends only on the drawing, not on the other's code. Drawing uses only PIL
ImageDraw and numpy, driven by one numpy Generator, so the same generator state gives the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from corgigan.geometry import clip_box

Box = tuple[float, float, float, float]
Color = tuple[int, int, int]

_SUPERSAMPLE = 2            # dogs are drawn at 2x and reduced: smooth edges at little cost
_DOG_ASPECT = 0.86          # canvas height / length of a dog seen from the side


# ---------------------------------------------------------------------------------------------------
# Backgrounds


def _jitter(rng: np.random.Generator, color: Color, amount: int) -> Color:
    c = np.asarray(color) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _vertical_gradient(h: int, top: Color, bottom: Color) -> np.ndarray:
    """[h, 1, 3] float32 column going from `top` to `bottom`."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]                 # [h, 1, 1]
    return (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)


def _two_zone(rng: np.random.Generator, h: int, upper: tuple[Color, Color],
              lower: tuple[Color, Color]) -> np.ndarray:
    """[h, 1, 3] column: an upper zone (sky, wall) over a lower one (grass, floor, sand)."""
    horizon = int(h * rng.uniform(0.25, 0.6))
    return np.concatenate([_vertical_gradient(horizon, *upper), _vertical_gradient(h - horizon, *lower)])


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A sky/grass, wall/floor, beach or studio backdrop with a low-frequency noise texture."""
    kind = rng.integers(4)
    if kind == 0:      # park: sky over grass
        col = _two_zone(rng, height,
                        (_jitter(rng, (110, 160, 225), 25), _jitter(rng, (200, 220, 240), 15)),
                        (_jitter(rng, (90, 150, 60), 25), _jitter(rng, (50, 100, 35), 20)))
    elif kind == 1:    # room: wall over a wooden or tiled floor
        wall = _jitter(rng, (215, 205, 185), 35)
        floor = _jitter(rng, (150, 105, 70), 40) if rng.random() < 0.6 else _jitter(rng, (170, 170, 165), 30)
        floor_near: Color = tuple(max(0, c - 40) for c in floor)  # type: ignore[assignment]
        col = _two_zone(rng, height, (wall, wall), (floor, floor_near))
    elif kind == 2:    # beach: sky over sand
        col = _two_zone(rng, height,
                        (_jitter(rng, (120, 175, 230), 20), _jitter(rng, (215, 230, 245), 10)),
                        (_jitter(rng, (230, 210, 160), 20), _jitter(rng, (200, 180, 130), 20)))
    else:              # studio: a plain gradient in any colour
        col = _vertical_gradient(height, _jitter(rng, (128, 128, 128), 120),
                                 _jitter(rng, (128, 128, 128), 120))
    base = Image.fromarray(np.clip(col + 0.5, 0, 255).astype(np.uint8), "RGB") \
        .resize((width, height), Image.Resampling.NEAREST)
    # Texture: coarse noise upsampled (cheap; reads as grass, carpet or sensor noise).
    cell = int(rng.integers(3, 12))
    small = rng.normal(128.0, rng.uniform(4.0, 14.0), size=(max(1, height // cell), max(1, width // cell)))
    noise = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "L") \
        .resize((width, height), Image.Resampling.BILINEAR)
    return ImageChops.add(base, Image.merge("RGB", (noise, noise, noise)), 1.0, -128)


# ---------------------------------------------------------------------------------------------------
# Clutter: shapes that are not dogs, some in dog-like colours, so a detector must learn the shape


def _clutter(rng: np.random.Generator, img: Image.Image, count: int) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    short = min(w, h)
    for _ in range(count):
        kind = rng.integers(6)
        s = short * rng.uniform(0.04, 0.3)
        x, y = rng.uniform(-0.1 * w, 1.0 * w), rng.uniform(0.0, 1.0 * h)
        color = _jitter(rng, (128, 128, 128), 127)
        if rng.random() < 0.3:    # coat-coloured decoys
            color = _jitter(rng, (205, 125, 55), 30)
        if kind == 0:             # ball
            draw.ellipse((x, y, x + s, y + s), fill=color, outline=_jitter(rng, color, 40))
        elif kind == 1:           # box or cushion
            draw.rectangle((x, y, x + s * rng.uniform(0.6, 1.8), y + s * rng.uniform(0.5, 1.2)), fill=color)
        elif kind == 2:           # tree or bush: trunk and crown
            draw.rectangle((x + 0.4 * s, y, x + 0.6 * s, y + 1.5 * s), fill=_jitter(rng, (100, 70, 40), 20))
            draw.ellipse((x - 0.2 * s, y - 0.9 * s, x + 1.2 * s, y + 0.3 * s),
                         fill=_jitter(rng, (50, 120, 50), 30))
        elif kind == 3:           # flower bed or toy: small blobs
            for _ in range(int(rng.integers(3, 9))):
                dx, dy, r = rng.uniform(0, s), rng.uniform(0, s * 0.5), s * rng.uniform(0.05, 0.15)
                draw.ellipse((x + dx - r, y + dy - r, x + dx + r, y + dy + r), fill=_jitter(rng, color, 60))
        elif kind == 4:           # stick, leash or fence rail
            x2, y2 = x + rng.uniform(-1.5, 1.5) * s, y + rng.uniform(-1.0, 1.0) * s
            draw.line((x, y, x2, y2), fill=color, width=max(1, int(s * rng.uniform(0.03, 0.12))))
        else:                     # triangle: a cone, a tent, a kite
            pts = [(x + rng.uniform(0, s), y + rng.uniform(0, s)) for _ in range(3)]
            draw.polygon(pts, fill=color)


# ---------------------------------------------------------------------------------------------------
# The dog


def _coat(rng: np.random.Generator) -> dict[str, Color]:
    """Colours of one dog: red/sable with white points, or tricolour (black saddle, tan face)."""
    white = _jitter(rng, (245, 240, 230), 10)
    if rng.random() < 0.7:
        main = _jitter(rng, (200, 118, 48), 30)
        return {"main": main, "head": main, "saddle": main, "white": white,
                "back_leg": tuple(max(0, c - 30) for c in main)}  # type: ignore[dict-item]
    black = _jitter(rng, (35, 30, 30), 10)
    tan = _jitter(rng, (185, 115, 55), 20)
    return {"main": tan, "head": tan, "saddle": black, "white": white,
            "back_leg": tuple(max(0, c - 30) for c in tan)}  # type: ignore[dict-item]


def _draw_dog(rng: np.random.Generator, length: int) -> Image.Image:
    """An RGBA dog seen from the side, facing right, about `length` px long (alpha marks the dog)."""
    W = max(8, int(length)) * _SUPERSAMPLE
    H = int(W * _DOG_ASPECT)
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    coat = _coat(rng)
    leg = rng.uniform(0.74, 0.84)        # leg end: short legs, a little variation
    head_y = rng.uniform(-0.03, 0.04)    # head carriage
    ear = rng.uniform(0.85, 1.15)        # ear size

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * W, y0 * H / _DOG_ASPECT, x1 * W, y1 * H / _DOG_ASPECT)

    def pts(*xy: tuple[float, float]) -> list[tuple[float, float]]:
        return [(x * W, y * H / _DOG_ASPECT) for x, y in xy]

    # far legs first (darker), then body, near legs, chest, head
    for x in (0.17, 0.61):
        d.rounded_rectangle(box(x, 0.5, x + 0.07, leg), radius=0.02 * W, fill=coat["back_leg"])
    d.ellipse(box(0.02, 0.31, 0.16, 0.43), fill=coat["main"])                       # tail stub
    d.rounded_rectangle(box(0.06, 0.3, 0.8, 0.66), radius=0.14 * W, fill=coat["main"])  # long body
    if coat["saddle"] != coat["main"]:
        d.ellipse(box(0.1, 0.28, 0.66, 0.5), fill=coat["saddle"])
    d.ellipse(box(0.26, 0.5, 0.7, 0.67), fill=coat["white"])                          # belly
    for x in (0.1, 0.68):
        d.rounded_rectangle(box(x, 0.52, x + 0.08, leg + 0.02), radius=0.02 * W, fill=coat["main"])
        d.rounded_rectangle(box(x - 0.005, leg - 0.03, x + 0.09, leg + 0.02), radius=0.02 * W,
                            fill=coat["white"])                                       # paws
    d.ellipse(box(0.62, 0.3 + head_y, 0.84, 0.64), fill=coat["white"])                # chest
    hy = head_y
    e0, e1 = 0.16 - 0.16 * ear, 0.16 - 0.16 * ear   # ear tips rise with ear size
    for base_x, tip_x in ((0.66, 0.69), (0.77, 0.83)):                                  # big pointed ears
        d.polygon(pts((base_x, 0.2 + hy), (tip_x, max(0.0, e0 + hy + 0.005)), (base_x + 0.1, 0.16 + hy)),
                  fill=coat["head"])
        d.polygon(pts((base_x + 0.025, 0.18 + hy), (tip_x + 0.005, max(0.0, e1 + hy + 0.05)),
                      (base_x + 0.075, 0.16 + hy)), fill=(225, 160, 150))
    d.ellipse(box(0.64, 0.1 + hy, 0.92, 0.42 + hy), fill=coat["head"])               # head
    d.ellipse(box(0.8, 0.14 + hy, 0.84, 0.38 + hy), fill=coat["white"])               # blaze
    d.ellipse(box(0.82, 0.25 + hy, 0.995, 0.41 + hy), fill=coat["white"])             # muzzle
    d.ellipse(box(0.955, 0.25 + hy, 0.995, 0.3 + hy), fill=(20, 15, 15))              # nose
    d.ellipse(box(0.845, 0.2 + hy, 0.87, 0.235 + hy), fill=(20, 15, 15))              # eye
    d.line(pts((0.9, 0.37 + hy), (0.96, 0.36 + hy)), fill=(90, 50, 40), width=max(1, W // 120))  # mouth
    return layer.reduce(_SUPERSAMPLE)


def _pose(rng: np.random.Generator, dog: Image.Image) -> Image.Image:
    """Face left or right and tilt a little."""
    if rng.random() < 0.5:
        dog = dog.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-12, 12))
    return dog.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paste_dog(img: Image.Image, rng: np.random.Generator, side: float,
              center: tuple[float, float] | None = None, avoid: list[Box] | None = None) -> Box | None:
    """Draw one dog whose box has longest side about `side` px onto `img`, in place.

    `center` fixes the dog's centre (it may lie near or past the border: the dog is then cut);
    otherwise a position inside the image is drawn, overlapping boxes in `avoid` little.
    Returns the dog's tight pixel xyxy box clipped to the image, or None if no part of it is visible.
    """
    dog = _pose(rng, _draw_dog(rng, max(8, round(side))))
    alpha = dog.getchannel("A")
    bx = alpha.getbbox()
    if bx is None:
        return None
    dog, alpha = dog.crop(bx), alpha.crop(bx)   # tight: the layer is exactly the dog's box
    dw, dh = dog.size
    w, h = img.size
    for _ in range(20):
        if center is not None:
            cx, cy = center
        else:
            cx = rng.uniform(dw / 2, max(dw / 2, w - dw / 2))
            cy = rng.uniform(dh / 2, max(dh / 2, h - dh / 2))
        x0, y0 = round(cx - dw / 2), round(cy - dh / 2)
        full = (float(x0), float(y0), float(x0 + dw), float(y0 + dh))
        if center is not None or not avoid or max(_iou(full, b) for b in avoid) < 0.15:
            break
    img.paste(dog.convert("RGB"), (x0, y0), alpha)
    clipped = clip_box(full, w, h)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None
    return clipped


def background_scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A backdrop with clutter shapes and no dog."""
    img = _background(rng, width, height)
    _clutter(rng, img, int(rng.integers(2, 9)))
    return img


def draw_scene(rng: np.random.Generator, width: int, height: int, num_dogs: int,
               dog_scale: tuple[float, float] = (0.3, 0.7)) -> tuple[Image.Image, list[Box]]:
    """Draw a `width` x `height` RGB scene with `num_dogs` corgi-like dogs among non-dog clutter.

    `dog_scale` bounds each dog box's longest side as a fraction of the image's short side.
    Returns the image and one pixel xyxy box per dog, tight around the drawn dog and clipped to the image.
    """
    if width < 8 or height < 8:
        raise ValueError(f"scene {width}x{height} is too small (min 8x8)")
    lo, hi = dog_scale
    if not 0 < lo <= hi:
        raise ValueError(f"dog_scale {dog_scale} must satisfy 0 < low <= high")
    img = background_scene(rng, width, height)
    short = min(width, height)
    boxes: list[Box] = []
    for _ in range(num_dogs):
        side = min(rng.uniform(lo, hi) * short, 0.98 * short)
        box = paste_dog(img, rng, side, avoid=boxes)
        if box is not None:
            boxes.append(box)
    if rng.random() < 0.3:   # some softness: real photos are rarely pixel-sharp
        img = img.filter(ImageFilter.BoxBlur(1))
    return img, boxes
