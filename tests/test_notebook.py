"""notebooks/play.ipynb (issue 23): it runs top to bottom in a real Jupyter kernel on a tiny model and writes
the pictures and the video it promises, and git holds it without outputs or anything of one machine."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import imageio.v2 as iio
import nbformat
import numpy as np
import pytest
import yaml
from nbclient import NotebookClient
from PIL import Image

from corgigan import cli
from corgigan.analysis import sampling
from corgigan.stylegan2.snapshot import save_snapshot, snapshot_name
from tests.helpers import ROOT, fake_state, tiny_config, write_directions

NOTEBOOK = ROOT / "notebooks" / "play.ipynb"
RES = 16                                  # the tiny model's resolution
W_DIM = 16                                # tiny_config's w_dim
STRENGTHS = [-2, 0, 2]


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything Jupyter and IPython write (connection files, history, config) under tmp_path, never $HOME;
    one torch thread in the kernel (tiny networks run fastest so on a busy machine)."""
    (tmp_path / "jupyter").mkdir()
    for var, name in [("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")]:
        monkeypatch.setenv(var, str(tmp_path / "jupyter" / name))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def parameters(**values: object) -> str:
    """The source of a parameters cell that sets `values`."""
    return "\n".join(f"{k} = {v!r}" for k, v in values.items())


def execute(params: str, cwd: Path) -> nbformat.NotebookNode:
    """The notebook with its parameters cell's source replaced by `params`, run top to bottom in a fresh
    python3 kernel (this interpreter: ipykernel is in the venv) with `cwd` as its folder. A failing cell
    raises CellExecutionError."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    tagged[0].source = params
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, cell_id: str) -> tuple[str, list[dict]]:
    """The text a cell printed and what it displayed (a MIME bundle per display)."""
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    shown = [o.data for o in cell.outputs if o.output_type == "display_data"]
    return text, shown


def size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0, path
    with Image.open(path) as img:
        return img.size


def labelled_size(path: Path, cols: int, rows: int) -> None:
    """A sampling.labelled grid of rows x cols tiles of RES px: the label bands above and left of them."""
    width, height = size(path)
    assert height == sampling.LABEL_BAND + rows * RES
    assert width - cols * RES >= sampling.LABEL_BAND


def test_the_notebook_plays_with_a_snapshot(tmp_path, jupyter_dirs):
    model = tmp_path / "models" / "stylegan2"
    model.mkdir(parents=True)
    save_snapshot(model / snapshot_name(8), fake_state(tiny_config(resolution=RES)))
    found = write_directions(tmp_path / "directions.json", W_DIM, {
        "fluffy": {"vector": [1.0] * W_DIM, "layers": [0, 2], "sigma": 0.5},
        "tall": {"vector": [(-1.0) ** i for i in range(W_DIM)], "layers": [2, 4]}})
    out = tmp_path / "out"
    nb = execute(parameters(MODEL=str(model), PHOTO=None, DIRECTIONS=str(found), SEEDS=[0, 1, 2, 3, 4, 5],
                            PSI=0.7, STRENGTHS=STRENGTHS, FRAMES=8, STEPS=3, OUT=str(out), DEVICE="cpu"),
                 cwd=tmp_path)

    text, _ = outputs(nb, "model")
    assert text.startswith("snapshot: ") and f"{RES} px" in text and "kimg 0.008" in text
    assert "discriminator: yes" in text
    assert size(out / "samples.png") == (4 * RES, 2 * RES)              # 6 seeds, 4 a row
    labelled_size(out / "truncation.png", cols=len(sampling.TRUNCATION_PSIS), rows=1)
    reader = iio.get_reader(out / "interpolation.mp4", format="FFMPEG")
    frames = [frame.shape for frame in reader]
    reader.close()
    assert frames == [(RES, RES, 3)] * 8
    [video] = outputs(nb, "video")[1]
    assert video["text/html"].startswith("<video") and "data:video/mp4;base64," in video["text/html"]
    labelled_size(out / "directions.png", cols=len(STRENGTHS), rows=2)
    assert size(out / "photo.png") == (640, 480)                        # the drawn scene
    for name in ("target.png", "projected.png"):
        assert size(out / "projection" / name) == (RES, RES)
    report = json.loads((out / "projection" / "errors.json").read_text())
    assert report["space"] == "w" and report["steps"] == 3 and "d_features" in report
    assert (out / "projection" / "projection.mp4").stat().st_size > 0
    assert size(out / "projection.png") == (2 * RES, RES)
    labelled_size(out / "projection-edit.png", cols=len(STRENGTHS), rows=1)
    for cell, name in [("samples", "samples.png"), ("truncation", "truncation.png"),
                       ("directions", "directions.png"), ("project", "projection.png"),
                       ("edit", "projection-edit.png")]:
        [shown] = outputs(nb, cell)[1]                                  # each picture shown is the one saved
        assert base64.b64decode(shown["image/png"]) == (out / name).read_bytes(), cell


def test_the_notebook_projects_a_photo_without_directions(tmp_path, jupyter_dirs):
    snap = tmp_path / "model.pt"
    save_snapshot(snap, fake_state(tiny_config(resolution=RES)))
    photo = tmp_path / "my-corgi.png"
    Image.new("RGB", (90, 60), (200, 120, 40)).save(photo)
    out = tmp_path / "out"
    nb = execute(parameters(MODEL=str(snap), PHOTO=str(photo), DIRECTIONS=str(tmp_path / "none.json"),
                            SEEDS=[3, 4], PSI=1.0, STRENGTHS=STRENGTHS, FRAMES=4, STEPS=2, OUT=str(out),
                            DEVICE="cpu"), cwd=tmp_path)

    assert "none.json: no directions file" in outputs(nb, "directions")[0]
    assert not (out / "directions.png").exists() and not (out / "photo.png").exists()
    with Image.open(out / "projection" / "target.png") as target:
        assert target.size == (RES, RES) and target.getpixel((8, 8)) == (200, 120, 40)   # the photo's crop
    labelled_size(out / "projection-edit.png", cols=len(STRENGTHS), rows=1)            # along SeFa's first
    assert size(out / "samples.png") == (2 * RES, RES)


def test_the_notebook_plays_with_an_export_folder(tmp_path, jupyter_dirs):
    # What `corgigan export` wrote: G_ema only, so the notebook builds no D and projects on pixels alone.
    snap = tmp_path / "models" / "stylegan2" / snapshot_name(8)
    snap.parent.mkdir(parents=True)
    save_snapshot(snap, fake_state(tiny_config(resolution=RES)))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["export"].update(sample_seed=0, sample_count=4, truncation_psi=0.7, onnx=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    found = write_directions(tmp_path / "directions.json", W_DIM, {
        "fluffy": {"vector": [1.0] * W_DIM, "layers": [0, 2]}})
    export = tmp_path / "models" / "export"
    assert cli.main(["--params", str(tmp_path / "params.yaml"), "export", str(snap.parent), "--out",
                     str(export), "--directions", str(found)]) == 0
    out = tmp_path / "out"
    nb = execute(parameters(MODEL=str(export), PHOTO=None, DIRECTIONS=str(export / "directions.json"),
                            SEEDS=[0, 1, 2, 3], PSI=0.7, STRENGTHS=STRENGTHS, FRAMES=4, STEPS=2, OUT=str(out),
                            DEVICE="cpu"), cwd=tmp_path)

    text, _ = outputs(nb, "model")
    assert text.startswith("export: ") and f"{RES} px" in text and "kimg 0.008" in text
    assert "discriminator: no" in text
    # the export's own sample grid (seeds 0-3, psi 0.7, 2 a row) holds the notebook's pictures
    with Image.open(export / "samples.png") as grid:
        tiles = np.asarray(grid)
    tiles = tiles.reshape(2, RES, 2, RES, 3).transpose(0, 2, 1, 3, 4).reshape(4, RES, RES, 3)
    with Image.open(out / "samples.png") as row:
        assert np.array_equal(np.asarray(row), np.concatenate(list(tiles), axis=1))
    labelled_size(out / "directions.png", cols=len(STRENGTHS), rows=1)
    report = json.loads((out / "projection" / "errors.json").read_text())
    assert report["steps"] == 2 and "d_features" not in report and "mse" in report
    labelled_size(out / "projection-edit.png", cols=len(STRENGTHS), rows=1)


# Paths of one machine or user: home folders, this checkout, temporary folders, Windows drives.
MACHINE_PATH = re.compile(r"/home/|/Users/|/root/|/work/|/tmp/|/var/folders/|[A-Za-z]:\\\\")


def test_the_committed_notebook_is_stripped_and_portable():
    text = NOTEBOOK.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any("attachments" in c for c in nb.cells)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    assert nb.metadata.kernelspec.name == "python3"
    assert set(nb.metadata.get("language_info", {})) <= {"name"}     # no version or path of one interpreter
    assert not MACHINE_PATH.search(text)
    assert all(set(c.metadata) <= {"tags"} for c in nb.cells)          # no execution times, no widget state
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
