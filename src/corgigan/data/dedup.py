"""Near-duplicate images: perceptual hashes, the exhaustive pair search, clusters and the one kept of each.

- Each crop is hashed with imagededup's perceptual hash named by ``method`` (64 bits, hex).
- Two crops are duplicates when their hashes differ in at most ``max_distance`` bits. The pairs are found
  by an exact all-pairs search over the hashes as uint64 (XOR + popcount in numpy tiles): imagededup's
  own search rebuilds its candidate list in Python for every query, which is quadratic in Python calls
  and took minutes at 20k images (benchmarks/bench_data_stages.py); the result is the same set of pairs
  (tests/test_dedup.py checks it against imagededup's find_duplicates).
- Clusters are the connected components of the duplicate pairs, so a chain A~B~C is one cluster even if
  A and C are further apart than max_distance; ``distance`` records each row's distance to the kept one.
- The kept crop of a cluster is the one with the highest detection confidence, then the largest crop
  side in the original image (the least upsampled), then the smallest image_id.
- ``cluster`` numbers clusters 0, 1, ... in order of their smallest image_id; singletons are clusters too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from imagededup.methods import AHash, DHash, PHash, WHash
from tqdm import tqdm

from corgigan import images
from corgigan.parallel import ordered_map

HASHERS = {"phash": PHash, "dhash": DHash, "whash": WHash, "ahash": AHash}
CROP_MAX_PIXELS = 1 << 26   # crops are our own PNGs at filter.resolution (<= 8192 px a side)
TILE = 2048                 # hashes per side of one search tile: 2048 x 2048 x 8 bytes = 32 MiB


def hash_image(data: bytes, method: str) -> str:
    """The 16-hex-digit perceptual hash of encoded image bytes with imagededup's `method`."""
    img = images.decode(data, CROP_MAX_PIXELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HASHERS[method](verbose=False).encode_image(image_array=np.asarray(img))


def _hash_shard(task: tuple[str, str]) -> list[tuple[str, str]]:
    path, method = task
    return [(image_id, hash_image(data, method)) for image_id, data in images.iter_shard(path)]


def hash_shards(shards: Sequence[Path], method: str, processes: int) -> dict[str, str]:
    """image_id -> hex hash for every crop in `shards`, hashed in parallel over shards."""
    tasks = [(str(s), method) for s in shards]
    out: dict[str, str] = {}
    for result in tqdm(ordered_map(_hash_shard, tasks, min(processes, len(tasks))), total=len(tasks),
                       desc="dedup: hash", unit="shard"):
        out.update(result)
    return out


def to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes as a uint64 array."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _pairs_from(task: tuple[np.ndarray, int, int]) -> np.ndarray:
    """Pairs (i, j, distance), i < j, i in one row block, within `max_distance` bits."""
    h, start, max_distance = task
    block = h[start:start + TILE]
    found = []
    for col in range(start, len(h), TILE):
        dist = np.bitwise_count(block[:, None] ^ h[None, col:col + TILE])   # [rows, cols] uint8
        i, j = np.nonzero(dist <= max_distance)
        i, j = i + start, j + col
        keep = j > i
        found.append(np.stack([i[keep], j[keep], dist[i[keep] - start, j[keep] - col]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)


def near_pairs(h: np.ndarray, max_distance: int, processes: int = 1) -> np.ndarray:
    """Every pair (i, j, distance) with i < j and popcount(h[i] ^ h[j]) <= max_distance, sorted."""
    tasks = [(h, start, max_distance) for start in range(0, len(h), TILE)]
    parts = list(tqdm(ordered_map(_pairs_from, tasks, min(processes, len(tasks))), total=len(tasks),
                      desc="dedup: search", unit="block"))
    pairs = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) of each of `n` nodes joined by `pairs`."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    for i, j in pairs[:, :2]:
        a, b = find(int(i)), find(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def choose(crops: pd.DataFrame, hashes: dict[str, str], max_distance: int,
           processes: int = 1) -> list[dict[str, Any]]:
    """The dedup rows for `crops` (image_id, confidence, crop_side) given their hashes."""
    crops = crops.sort_values("image_id", kind="mergesort").reset_index(drop=True)
    ids = crops["image_id"].tolist()
    h = to_uint64([hashes[i] for i in ids])
    label = components(len(ids), near_pairs(h, max_distance, processes))
    # Rank rows so the first of each cluster in rank order is the one to keep.
    rank = np.lexsort((np.arange(len(ids)), -crops["crop_side"].to_numpy(dtype=np.int64),
                       -crops["confidence"].to_numpy(dtype=np.float64)))
    kept_of: dict[int, int] = {}
    for r in rank:
        kept_of.setdefault(int(label[r]), int(r))
    # label is the smallest member index, and ids are sorted: numbering labels in order of first
    # appearance numbers clusters by their smallest image_id.
    number = {lab: k for k, lab in enumerate(dict.fromkeys(label.tolist()))}
    rows = []
    for r, image_id in enumerate(ids):
        k = kept_of[int(label[r])]
        dup = k != r
        rows.append({
            "image_id": image_id,
            "hash": hashes[image_id],
            "cluster": number[int(label[r])],
            "kept": not dup,
            "reason": "duplicate" if dup else None,
            "duplicate_of": ids[k] if dup else None,
            "distance": int(np.bitwise_count(h[r] ^ h[k])) if dup else None,
        })
    return rows
