"""dedup's pieces at their edges: search tiles run in this process, hashes in the top bit, empty inputs,
the exact rows of a cluster, the pool size passed on, and the progress the user watches.

test_dedup.py covers the rule on real pictures; these pin what its fixtures leave loose (every hash there is
below 2**63, every search is one tile, every kept row is checked only through dropna()).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from corgigan import images
from corgigan.data import dedup


def brute_pairs(h: list[int], max_distance: int) -> list[list[int]]:
    """The definition, in plain Python: every (i, j, distance), i < j, distance = differing bits."""
    return [[i, j, bin(h[i] ^ h[j]).count("1")] for i in range(len(h)) for j in range(i + 1, len(h))
            if bin(h[i] ^ h[j]).count("1") <= max_distance]


def crops(rows: list[tuple[str, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "confidence", "crop_side"])


def test_search_in_several_tiles_in_this_process(monkeypatch):
    # Tiles of 3 over 8 hashes, inline (processes=1): row blocks start at 0, 3 and 6, so a pair's indices
    # and distance must be taken relative to the block and the column tile it was found in.
    monkeypatch.setattr(dedup, "TILE", 3)
    h = [0b0, 0b1, 0b11, 0b111, 0b1111, 0b0, 0b1000_0000, 0b1]
    got = dedup.near_pairs(np.array(h, dtype=np.uint64), 1)
    assert got.dtype == np.int64
    assert got.tolist() == brute_pairs(h, 1)
    assert got.tolist() == [[0, 1, 1], [0, 5, 0], [0, 6, 1], [0, 7, 1], [1, 2, 1], [1, 5, 1], [1, 7, 0],
                            [2, 3, 1], [2, 7, 1], [3, 4, 1], [5, 6, 1], [5, 7, 1]]


def test_search_of_no_hashes_is_an_empty_int_table():
    got = dedup.near_pairs(np.zeros(0, dtype=np.uint64), 4)
    assert got.shape == (0, 3) and got.dtype == np.int64
    labels = dedup.components(0, got)
    assert labels.shape == (0,) and labels.dtype == np.int64


def test_hashes_with_the_top_bit_set_stay_exact():
    # 64-bit hashes above 2**63 do not fit int64: as floats the low bits would be lost.
    h = dedup.to_uint64(["ffffffffffffffff", "fffffffffffffffe", "8000000000000000", "0000000000000001"])
    assert h.dtype == np.uint64
    assert h.tolist() == [2**64 - 1, 2**64 - 2, 2**63, 1]
    assert dedup.near_pairs(h, 1).tolist() == [[0, 1, 1]]
    assert dedup.to_uint64([]).dtype == np.uint64


def test_rows_of_a_cluster_exactly():
    # a~b (1 bit), c alone; b is more confident so a is the duplicate. Kept rows say nothing about a
    # duplicate: duplicate_of, reason and distance are None.
    hashes = {"a": "0000000000000000", "b": "0000000000000001", "c": "00000000000000ff"}
    rows = dedup.choose(crops([("c", 0.9, 500), ("b", 0.8, 500), ("a", 0.7, 500)]), hashes, 2)
    assert rows == [
        {"image_id": "a", "hash": hashes["a"], "cluster": 0, "kept": False, "reason": "duplicate",
         "duplicate_of": "b", "distance": 1},
        {"image_id": "b", "hash": hashes["b"], "cluster": 0, "kept": True, "reason": None,
         "duplicate_of": None, "distance": None},
        {"image_id": "c", "hash": hashes["c"], "cluster": 1, "kept": True, "reason": None,
         "duplicate_of": None, "distance": None},
    ]


def test_extra_columns_and_any_index_do_not_matter():
    # A table reset twice carries both columns pandas' reset_index would write; choose reads only its three.
    hashes = {"a": "0000000000000000", "b": "0000000000000001"}
    plain = crops([("b", 0.9, 500), ("a", 0.7, 500)])
    reset_twice = plain.set_axis([7, 3]).reset_index().reset_index()
    assert {"index", "level_0"} <= set(reset_twice.columns)
    assert dedup.choose(reset_twice, hashes, 1) == dedup.choose(plain, hashes, 1)


class PoolSpy:
    """dedup.ordered_map, recording the pool size each search or hash pass asked for."""

    def __init__(self, real: Callable[..., Iterator[Any]]) -> None:
        self.real = real
        self.processes: list[int] = []

    def __call__(self, fn: Callable[[Any], Any], tasks: Iterable[Any], processes: int) -> Iterator[Any]:
        self.processes.append(processes)
        return self.real(fn, tasks, processes)


def test_pool_size_is_one_unless_asked_and_passed_on_when_asked(monkeypatch):
    monkeypatch.setattr(dedup, "TILE", 2)
    spy = PoolSpy(dedup.ordered_map)
    monkeypatch.setattr(dedup, "ordered_map", spy)
    hashes = {k: f"{i:016x}" for i, k in enumerate("abcde")}
    table = crops([(k, 0.5, 100) for k in "abcde"])
    want = [[0, 1, 1], [0, 2, 1], [0, 4, 1], [1, 3, 1], [2, 3, 1]]
    assert dedup.near_pairs(dedup.to_uint64(list(hashes.values())), 1).tolist() == want
    default = dedup.choose(table, hashes, 1)
    assert spy.processes == [1, 1]          # inline by default: a caller may itself be a pool's worker
    assert dedup.choose(table, hashes, 1, processes=2) == default
    assert spy.processes == [1, 1, 2]       # three tiles, two processes asked for: two


def _shards(root: Path, n: int) -> list[Path]:
    with images.ShardWriter(root, 1) as w:
        for i in range(n):
            w.add(f"{i:016x}", images.encode_png(Image.new("RGB", (16, 16), (40 * i, 0, 0))), ".png")
    return images.list_shards(root)


def test_progress_names_each_pass_and_counts_its_units(tmp_path, monkeypatch, capsys):
    shards = _shards(tmp_path / "shards", 2)
    hashes = dedup.hash_shards(shards, "phash", 1)
    assert sorted(hashes) == [f"{i:016x}" for i in range(2)]
    monkeypatch.setattr(dedup, "TILE", 2)
    dedup.near_pairs(np.arange(5, dtype=np.uint64), 1)
    err = capsys.readouterr().err
    # tqdm's last line per bar: "<desc>: 100%|...| n/total [elapsed<left, <rate><unit>/s]"
    assert re.search(r"dedup: hash: 100%\|[^|]*\| 2/2 \[[^]]*[\d?](shard/s|s/shard)\]", err), err
    assert re.search(r"dedup: search: 100%\|[^|]*\| 3/3 \[[^]]*[\d?](block/s|s/block)\]", err), err

