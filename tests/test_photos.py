"""Photos into projection targets: the filter stage's crop around the detected dog, bad photos."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from corgigan import geometry
from corgigan.data import filter_rules
from corgigan.detector import detection
from corgigan.errors import StageError
from corgigan.play import photos
from tests.helpers import photo_bytes

RES = 16


class FakeDetector:
    """Stands in for detection.DogDetector: the same boxes in every image."""

    def __init__(self, boxes: list[detection.Detection]) -> None:
        self.boxes = boxes

    def predict(self, images: list[Image.Image]) -> list[list[detection.Detection]]:
        return [list(self.boxes) for _ in images]


def test_photos_are_cropped_with_the_filter_rule() -> None:
    data = photo_bytes(90, 60)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    rule = photos.CropRule(min_crop=20, resize_filter="bicubic")
    box = (60.0, 10.0, 85.0, 40.0)
    # A tie in confidence, listed so that "the first most confident" would pick the wrong one: the crop goes
    # around the box the filter stage would take (filter_rules.box_rank: the smallest x0 on a tie).
    found = [detection.Detection(62.0, 10.0, 85.0, 40.0, 0.9, 0), detection.Detection(*box, 0.9, 0),
             detection.Detection(0.0, 0.0, 30.0, 30.0, 0.5, 0)]
    table = pd.DataFrame([{"image_id": "a", "x0": d.x0, "y0": d.y0, "x1": d.x1, "y1": d.y1,
                           "confidence": d.confidence} for d in found])
    assert filter_rules.boxes_by_image(table)["a"][0][:4] == box
    crop, how = photos.photo_target(data, RES, rule, FakeDetector(found))
    win = geometry.crop_window(90, 60, box, 20)
    want = img.resize((RES, RES), Image.Resampling.BICUBIC, box=win.box)
    assert how["mode"] == "dog" and how["box"] == list(box)
    assert how["crop"] == list(win.box) and win.side == 30
    assert np.array_equal(np.asarray(crop), np.asarray(want))
    # Without a detector (or when it finds nothing): the centred square of the short side.
    for dogs, mode in ((None, "centre"), (FakeDetector([]), "centre (no dog found)")):
        crop, how = photos.photo_target(data, RES, rule, dogs)
        assert how["mode"] == mode and how["crop"] == [15, 0, 75, 60]
    gray, _ = photos.photo_target(data, RES, rule, channels=1)
    assert gray.mode == "L" and photos.to_tensor(gray).shape == (1, 1, RES, RES)
    t = photos.to_tensor(crop)
    assert t.shape == (1, 3, RES, RES) and t.min() >= -1 and t.max() <= 1


@pytest.mark.parametrize(("data", "why"), [
    (b"hello, not a photo", "not an image"),
    (photo_bytes(64, 64)[:200], "truncated"),
    (photo_bytes(300, 300), "too large"),
    (b"", "empty"),
])
def test_bad_photos_say_why(data: bytes, why: str) -> None:
    rule = photos.CropRule(min_crop=8, max_pixels=200 * 200)
    with pytest.raises(StageError, match=why):
        photos.photo_target(data, RES, rule, name="x.png")
