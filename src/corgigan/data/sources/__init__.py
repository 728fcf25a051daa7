"""Image sources behind one interface: each yields SourceItems, and the scrape stage stores them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SourceItem:
    """One image as a source delivers it: raw bytes (possibly broken) plus what is known about it."""

    source_id: str                  # unique within the source: stable across runs
    data: bytes                     # the file's bytes exactly as fetched or read
    url: str | None = None
    owner: str | None = None
    timestamp: datetime | None = None   # timezone-aware UTC
    likes: int | None = None
    refused: str | None = None      # why the source would not read it (data is then empty)


class Source(Protocol):
    """A source of images. `items` yields every image once, in a deterministic order."""

    name: str                       # synthetic | folder | instagram

    def items(self) -> Iterator[SourceItem]: ...
