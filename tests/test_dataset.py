"""filter -> dedup -> dataset through the `corgigan` CLI: a readable StyleGAN-layout zip, a funnel that
adds up, a contact sheet, and byte-identical outputs on rerun."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from corgigan import images, tables
from corgigan.cli import main
from corgigan.data import dataset_zip
from corgigan.data.contact_sheet import LABEL_W, PAD, TILE
from corgigan.data.funnel import FILTER_REASONS, LOOSEN
from corgigan.errors import StageError
from corgigan.params import DatasetParams
from corgigan.stages import dataset
from tests.helpers import CASES, FILTER, Spec, image_id, make_raw  # the planted raw fixture

REPO = Path(__file__).resolve().parents[1]
PER_REASON = 3

# The planted cases plus a photo and its near-duplicate: the same picture at 1.5x the size, re-encoded
# at a lower JPEG quality, with the box scaled along, so dedup has exactly one duplicate to drop.
SPECS = [spec for spec, _ in CASES] + [
    Spec("photo", (200, 150), [(50, 35, 150, 115, 0.9)], seed=21),
    Spec("photo_copy", (300, 225), [(75, 52.5, 225, 172.5, 0.8)], seed=21, quality=60),
]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["filter"] = dataclasses.asdict(FILTER)
    raw["dedup"] = {"method": "phash", "max_distance": 4}
    raw["dataset"] = {"examples_per_reason": PER_REASON}
    raw["images"] = {"max_pixels": 10_000_000}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _pipeline(params: Path, root: Path, out: Path) -> None:
    args = ["--params", str(params)]
    raw, det = root / "raw", root / "detections.parquet"
    assert main([*args, "filter", "--raw", str(raw), "--detections", str(det),
                 "--out", str(out / "filter")]) == 0
    assert main([*args, "dedup", "--crops", str(out / "filter"), "--out", str(out / "dedup.parquet")]) == 0
    assert main([*args, "dataset", "--raw", str(raw), "--filtered", str(out / "filter"),
                 "--dedup", str(out / "dedup.parquet"), "--out", str(out / "corgis.zip"),
                 "--funnel", str(out / "funnel.json"), "--figures", str(out / "figures")]) == 0


def test_pipeline_outputs(params_file, tmp_path):
    make_raw(tmp_path, SPECS)
    out = tmp_path / "run1"
    _pipeline(params_file, tmp_path, out)

    funnel = json.loads((out / "funnel.json").read_text())
    kept_by_filter = sum(1 for _, r in CASES if r is None) + 2
    assert funnel["filter"]["entered"] == len(SPECS) == funnel["entered"]
    assert funnel["filter"]["kept"] == kept_by_filter
    assert funnel["dedup"] == {"entered": kept_by_filter, "kept": kept_by_filter - 1,
                               "rejected": {"duplicate": 1}}
    assert funnel["kept"] == kept_by_filter - 1
    assert funnel["rejected"]["decode_error"] == 2
    assert set(funnel["rejected"]) == set(tables.REASONS)
    # every reason with the count the planted cases give it (0 for none: the funnel names them all)
    by_filter = {r: sum(1 for _, reason in CASES if reason == r) for r in FILTER_REASONS}
    assert funnel["filter"]["rejected"] == by_filter
    assert funnel["rejected"] == {**by_filter, "duplicate": 1}

    dd = tables.read_table("dedup", out / "dedup.parquet").set_index("image_id")
    pair = dd.loc[[image_id("photo"), image_id("photo_copy")]]
    assert pair["kept"].tolist() == [True, False] and pair["cluster"].nunique() == 1

    with zipfile.ZipFile(out / "corgis.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
        pngs = [n for n in names if n.endswith(".png")]
        assert pngs == [dataset_zip.member_name(i) for i in range(funnel["kept"])]
        for n in pngs:
            with Image.open(io.BytesIO(zf.read(n))) as img:
                assert (img.size, img.mode) == ((32, 32), "RGB")
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}

    sheet = images.decode((out / "figures" / "contact_sheet.png").read_bytes(), 10**8)
    rows = 1 + len(tables.REASONS)          # kept + every reason occurs in this fixture
    assert sheet.size == (LABEL_W + PER_REASON * (TILE + PAD) + PAD, rows * (TILE + PAD) + PAD)

    # same inputs, same bytes
    again = tmp_path / "run2"
    _pipeline(params_file, tmp_path, again)
    for rel in ("filter/filter.parquet", "dedup.parquet", "corgis.zip", "funnel.json",
                "figures/contact_sheet.png"):
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_stale_dedup_is_refused(params_file, tmp_path):
    make_raw(tmp_path, SPECS[:4])
    out = tmp_path / "run"
    _pipeline(params_file, tmp_path, out)
    tables.write_table("dedup", [], out / "dedup.parquet")
    with pytest.raises(StageError, match="re-run dedup"):
        dataset.run(DatasetParams(examples_per_reason=2), raw=tmp_path / "raw", filtered=out / "filter",
                    dedup=out / "dedup.parquet", out=out / "z.zip", funnel=out / "f.json",
                    figures=out / "fig")
    # the CLI reports it without a traceback and exits 2
    assert main(["--params", str(params_file), "dataset", "--raw", str(tmp_path / "raw"),
                 "--filtered", str(out / "filter"), "--dedup", str(out / "dedup.parquet"),
                 "--out", str(out / "z.zip"), "--funnel", str(out / "f.json"),
                 "--figures", str(out / "fig")]) == 2
    assert not (out / "z.zip").exists()


def test_thresholds_that_reject_everything_stop_at_the_dataset_stage(params_file, tmp_path, caplog):
    make_raw(tmp_path, [Spec("nodog", (200, 150), [], seed=6), Spec("tiny", (200, 150),
                                                                     [(90, 70, 100, 80, 0.9)], seed=10)])
    out = tmp_path / "run"
    args = ["--params", str(params_file)]
    assert main([*args, "filter", "--raw", str(tmp_path / "raw"), "--detections",
                 str(tmp_path / "detections.parquet"), "--out", str(out / "filter")]) == 0
    assert main([*args, "dedup", "--crops", str(out / "filter"), "--out", str(out / "dedup.parquet")]) == 0
    rc = main([*args, "dataset", "--raw", str(tmp_path / "raw"), "--filtered", str(out / "filter"),
               "--dedup", str(out / "dedup.parquet"), "--out", str(out / "corgis.zip"),
               "--funnel", str(out / "funnel.json"), "--figures", str(out / "figures")])
    assert rc == 2
    message = caplog.records[-1].getMessage()
    assert "none of the 2 images survived" in message
    assert "low_cover 1" in message and "no_dog 1" in message and "filter.min_cover" in message
    assert not (out / "corgis.zip").exists() and not (out / "funnel.json").exists()


def test_every_reason_names_the_params_that_loosen_it():
    assert set(LOOSEN) == set(tables.REASONS)
