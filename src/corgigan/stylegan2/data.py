"""The training data: the dataset zip (PNGs + dataset.json) and a resumable, rank-aware sampler.

The zip is the one thing training reads. Images are square, all of one size and channel count;
dataset.json holds ``{"labels": null}`` or ``{"labels": [[member_name, label], ...]}`` where a label is
an integer class (one-hot encoded here) or a list of numbers.

The sampler does not keep state: the image shown at global position ``k`` of the training stream is a
pure function of ``(seed, k)`` (epoch ``k // len`` is a seeded permutation). A run therefore resumes
from its batch counter alone, and the stream is the same however the global batch is split over
processes and accumulation rounds.

A dataset's identity is cheap: `dataset_hash` digests the zip's central directory (every image member's
name, size and CRC-32, and dataset.json's bytes), never the images, so a resume or an evaluation of a
200 GB zip starts in milliseconds. Members are checked once per process (`ZipDataset.check_members`),
and the training loop skips the check when it resumes a run on the very data it already checked.
Snapshots written before this recorded the sha256 of the zip's bytes; `same_dataset` recognises such a
hash and verifies it by hashing the file once, so an old run neither restarts nor accepts other data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# A decompression-bomb guard for members of a zip we did not necessarily pack ourselves.
MAX_PIXELS = 8192 * 8192
IDENTITY_PREFIX = "zip-"   # marks an identity digested from the central directory (`dataset_hash`)
LABELS_FILE = "dataset.json"
# What snapshots recorded before identities came from the directory: the sha256 of the zip's bytes.
_FILE_SHA256 = re.compile(r"[0-9a-f]{64}")

# Per-process memos (caches, not configuration): identities whose members passed `_check_headers`, and
# file digests of legacy snapshots' datasets keyed by (path, size, mtime), so nothing is read twice.
_CHECKED: set[str] = set()
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


class DatasetError(ValueError):
    """The dataset zip is missing, empty or malformed; the message names the file and the fix."""


def _identity(zf: zipfile.ZipFile) -> str:
    """`IDENTITY_PREFIX` + sha256 of the directory entries the reader uses and of dataset.json's bytes.

    Name, uncompressed size and CRC-32 of every image member in name order (the order the reader sees
    them), so repacking the same images another way (compression, member order, dates) keeps the
    identity, and any change to an image, a name or the labels changes it.
    """
    h = hashlib.sha256()
    infos = sorted((i for i in zf.infolist() if _is_image(i.filename)), key=lambda i: i.filename)
    for info in infos:
        h.update(f"{info.filename}\0{info.file_size}\0{info.CRC:08x}\n".encode())
    if LABELS_FILE in zf.namelist():
        h.update(b"\0" + LABELS_FILE.encode() + b"\0" + zf.read(LABELS_FILE))
    return IDENTITY_PREFIX + h.hexdigest()


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The zip at `path`, or a DatasetError that names the fix."""
    if not path.is_file():
        raise DatasetError(f"{path}: dataset zip not found (run the dataset stage first)")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not a zip file, or a truncated one (re-run the dataset stage)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise DatasetError(f"{path}: corrupt or truncated zip ({e}); re-run the dataset stage") from e


def dataset_hash(path: str | Path) -> str:
    """The dataset zip's identity ("zip-" + sha256 hex) from its central directory; no image is read."""
    with _open_zip(Path(path)) as zf:
        return _identity(zf)


def _digest_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of the file's bytes (what snapshots recorded before `dataset_hash`)."""
    path = Path(path)
    key = _digest_key(path)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def same_dataset(recorded: str, identity: str, path: str | Path | None = None) -> bool:
    """Whether a snapshot's `recorded` dataset hash names the zip whose identity is `identity`.

    A legacy record (the sha256 of the zip's bytes) is verified against the file at `path` by hashing it
    once per process, with a warning: an old run resumes on its own data and still refuses other data.
    Without `path` a legacy record never matches.
    """
    if recorded == identity:
        return True
    if path is None or not _FILE_SHA256.fullmatch(recorded):
        return False
    if _digest_key(Path(path)) not in _FILE_DIGESTS:
        log.warning("the snapshot records its dataset as the sha256 of the zip's bytes (written before "
                    "identities came from the zip's directory): hashing %s (%.1f GB) once to compare; "
                    "snapshots written from now on record the cheap identity",
                    path, Path(path).stat().st_size / 1e9)
    return file_sha256(path) == recorded


def _is_image(name: str) -> bool:
    return name.lower().endswith(".png") and not name.startswith("__MACOSX/")


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 array [H, W, C] (C is 1 or 3; alpha and palettes are resolved to RGB)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise DatasetError(f"{where}: not a PNG (format {im.format})")
            if im.width * im.height > MAX_PIXELS:
                raise DatasetError(f"{where}: {im.width}x{im.height} is too large")
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except DatasetError:
        raise
    except Exception as e:  # PIL raises many types on broken files
        raise DatasetError(f"{where}: cannot decode PNG ({e})") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def _header_channels(mode: str) -> int:
    """Channels an image of Pillow `mode` has after _decode_png (1 for grey, 3 for everything else)."""
    return 1 if mode == "L" else 3


def _check_headers(zf: zipfile.ZipFile, names: list[str], size: tuple[int, int], channels: int,
                   where: str) -> None:
    """Every member is a PNG of `size` and `channels`: read from the headers, no pixels decoded.

    Checked once, up front, so a bad member stops the run before training rather than whenever the
    sampler first draws it.
    """
    for name in names:
        try:
            with zf.open(name) as f, Image.open(f) as im:
                fmt, got, mode = im.format, im.size, im.mode
        except (zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f"{where}:{name}: corrupt zip member ({e}); re-run the dataset stage") from e
        except Exception as e:  # PIL raises many types on bytes that are not an image
            raise DatasetError(f"{where}:{name}: not a readable PNG ({type(e).__name__}: {e})") from e
        if fmt != "PNG":
            raise DatasetError(f"{where}:{name}: not a PNG (format {fmt})")
        if got != size or _header_channels(mode) != channels:
            raise DatasetError(f"{where}:{name}: {got[0]}x{got[1]} {mode} differs from the first image "
                               f"({size[0]}x{size[1]}, {channels} channels): all images must be alike")


def _read_labels(zf: zipfile.ZipFile, names: list[str], where: str) -> np.ndarray:
    """Labels from dataset.json, as float32 [N, c_dim] in `names` order (c_dim 0 without labels)."""
    if "dataset.json" not in zf.namelist():
        return np.zeros([len(names), 0], dtype=np.float32)
    try:
        meta = json.loads(zf.read("dataset.json"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: dataset.json is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "labels" not in meta:
        raise DatasetError(f'{where}: dataset.json must be an object with a "labels" key')
    raw = meta["labels"]
    if raw is None:
        return np.zeros([len(names), 0], dtype=np.float32)
    if not isinstance(raw, list) or not all(isinstance(r, list) and len(r) == 2 for r in raw):
        raise DatasetError(f'{where}: dataset.json "labels" must be null or a list of [name, label]')
    by_name = {str(n): v for n, v in raw}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DatasetError(f"{where}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
    values = [by_name[n] for n in names]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ints = np.asarray(values, dtype=np.int64)
        if ints.min() < 0:
            raise DatasetError(f"{where}: class labels must be >= 0")
        return np.eye(int(ints.max()) + 1, dtype=np.float32)[ints]
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: labels must be all integers or all equal-length number lists") from e
    if arr.ndim != 2:
        raise DatasetError(f"{where}: labels must be all integers or all equal-length number lists")
    return arr


class ZipDataset(torch.utils.data.Dataset):
    """Images of the dataset zip as uint8 tensors [C, H, W] with their label vectors.

    With ``mirror`` the dataset doubles: index ``i + n`` is image ``i`` flipped left-right.
    The zip is opened lazily per process, so the dataset can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path, mirror: bool = False, check_members: bool = True):
        """Read the zip's directory, labels and first image; with `check_members` also every header.

        Without `check_members` no other image is touched (the caller runs `check_members` when it
        needs the guarantee, e.g. the training loop unless it resumes on data it already checked).
        """
        self.path = Path(path)
        self.mirror = bool(mirror)
        where = str(self.path)
        try:
            with _open_zip(self.path) as zf:
                self.names = sorted(n for n in zf.namelist() if _is_image(n))
                if not self.names:
                    raise DatasetError(f"{where}: the zip holds no PNG images")
                self.labels = _read_labels(zf, self.names, where)
                first = _decode_png(zf.read(self.names[0]), f"{where}:{self.names[0]}")
                h, w, c = first.shape
                if h != w or h < 4 or h & (h - 1):
                    raise DatasetError(f"{where}: images must be square with a power-of-two side, "
                                       f"{self.names[0]} is {w}x{h}")
                if c not in (1, 3):
                    raise DatasetError(f"{where}: images must be grayscale or RGB, {self.names[0]} has "
                                       f"{c} channels")
                self.identity = _identity(zf)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
            raise DatasetError(f"{where}: corrupt or truncated zip ({e}); re-run the dataset stage") from e
        self.resolution = h
        self.num_channels = c
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        if check_members:
            self.check_members()

    def check_members(self) -> None:
        """Check every member's PNG header (size, channels) once per process and dataset identity."""
        if self.identity in _CHECKED:
            return
        t0 = time.perf_counter()
        try:
            with zipfile.ZipFile(self.path) as zf:
                _check_headers(zf, self.names, (self.resolution, self.resolution), self.num_channels,
                               str(self.path))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
            raise DatasetError(f"{self.path}: corrupt or truncated zip ({e}); re-run the dataset stage"
                               ) from e
        _CHECKED.add(self.identity)
        log.info("%s: %d members checked in %.1f s", self.path, self.num_images, time.perf_counter() - t0)

    @property
    def num_images(self) -> int:
        """Distinct images in the zip (without the mirror)."""
        return len(self.names)

    @property
    def label_dim(self) -> int:
        """Length of the label vector (0 without labels)."""
        return int(self.labels.shape[1])

    def __len__(self) -> int:
        return self.num_images * (2 if self.mirror else 1)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None  # an open ZipFile cannot cross a process boundary
        return state

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def image(self, index: int) -> np.ndarray:
        """Image `index` (mirror applied) as uint8 array [C, H, W]."""
        raw = index % self.num_images
        name = self.names[raw]
        arr = _decode_png(self._archive().read(name), f"{self.path}:{name}")
        want = (self.resolution, self.resolution, self.num_channels)
        if arr.shape != want:
            raise DatasetError(f"{self.path}:{name}: shape {arr.shape} differs from the first image's {want}")
        arr = arr.transpose(2, 0, 1)  # [C, H, W]
        if index >= self.num_images:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr)

    def label(self, index: int) -> torch.Tensor:
        """Label vector of image `index` (float32 [c_dim])."""
        return torch.from_numpy(self.labels[index % self.num_images].copy())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return torch.from_numpy(self.image(index)), self.label(index)


def _permutation(seed: int, size: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


class StreamSampler(torch.utils.data.Sampler[int]):
    """Infinite index sampler over the seeded stream, for one rank.

    Step ``s`` of training consumes stream positions ``[s * batch, (s + 1) * batch)``, cut into chunks
    of ``batch_gpu``; chunk ``j`` goes to rank ``j // rounds`` (``rounds`` chunks per rank and step).
    This sampler yields this rank's chunks in order, from step ``start_step`` on.
    """

    def __init__(self, size: int, seed: int, batch: int, batch_gpu: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if batch % (batch_gpu * world_size):
            raise ValueError(f"batch {batch} is not a multiple of batch_gpu {batch_gpu} x {world_size} ranks")
        self.size, self.seed, self.batch, self.batch_gpu = size, seed, batch, batch_gpu
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.rounds = batch // (batch_gpu * world_size)

    def __iter__(self) -> Iterator[int]:
        per_rank = self.rounds * self.batch_gpu
        step = self.start_step
        cache_epoch, perm = -1, np.empty(0, dtype=np.int64)
        while True:
            first = step * self.batch + self.rank * per_rank
            for pos in range(first, first + per_rank):
                epoch, offset = divmod(pos, self.size)
                if epoch != cache_epoch:
                    cache_epoch, perm = epoch, _permutation(self.seed, self.size, epoch)
                yield int(perm[offset])
            step += 1


def make_loader(dataset: ZipDataset, sampler: StreamSampler, workers: int,
                pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless iterator of (images uint8 [batch_gpu, C, H, W], labels [batch_gpu, c_dim]) chunks.

    `workers` is capped at the CPUs this process may run on: more only contend for them (and torch warns).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cpus:
        log.info("data loader: %d workers asked for, %d CPUs here; using %d", workers, cpus, cpus)
        workers = cpus
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=sampler.batch_gpu, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False)
    return iter(loader)
