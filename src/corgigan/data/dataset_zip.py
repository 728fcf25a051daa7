"""The training zip: the crops that survived filter and dedup, in the layout StyleGAN2-ADA's tools read.

``NNNNN/imgNNNNNNNN.png`` (PER_FOLDER to a folder) plus ``dataset.json`` = ``{"labels": null}``. Image k
is the k-th surviving crop in the crop shards' order (posts order). Members are images.zip_member's
(stored, fixed date, 0644) and written in sorted order, so the same crops give the same bytes.
stylegan2/data.py is the reader.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from corgigan import images, tables
from corgigan.errors import StageError

PER_FOLDER = 1000


def member_name(index: int) -> str:
    """Zip member name of the `index`-th image: 00000/img00000000.png."""
    return f"{index // PER_FOLDER:05d}/img{index:08d}.png"


def write_zip(shards: Iterable[Path], keep: set[str], out: Path,
              want: set[str]) -> tuple[int, dict[str, bytes]]:
    """Pack the crops in `keep`, in shard order, into the dataset zip at `out` (atomically).

    Returns the number of images and the bytes of the crops named in `want` (contact-sheet examples).
    """
    size: tuple[int, int] | None = None
    found: dict[str, bytes] = {}
    count = 0
    with tables.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for shard in tqdm(list(shards), desc="dataset: zip", unit="shard"):
            for image_id, data in images.iter_shard(shard):
                if image_id not in keep:
                    continue
                this = images.png_size(data)
                if size is not None and this != size:
                    raise StageError(f"crop {image_id} is {this}, others {size}; re-run filter")
                size = this
                zf.writestr(images.zip_member(member_name(count)), data)
                count += 1
                if image_id in want:
                    found[image_id] = data
        zf.writestr(images.zip_member("dataset.json"), json.dumps({"labels": None}) + "\n")
    if count != len(keep):
        raise StageError(f"{len(keep) - count} kept crops are missing from the crop shards; re-run filter")
    return count, found
