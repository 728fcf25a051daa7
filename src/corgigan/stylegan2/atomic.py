"""The project's one atomic file write: a temporary file beside the target, renamed onto it when complete.

It lives in stylegan2 because stylegan2 imports nothing else of corgigan; the rest of the project reaches
it through `corgigan.tables.atomic_path` (and images.ShardWriter, which keeps its own temporary shard
open across many images, through `commit`).

Policy, the same for every output (tables, image shards, snapshots, grids, figures, videos):

- the temporary file is ``.<stem>.<random>.tmp<suffix>`` in the target's folder: the same file system,
  so the rename is atomic, and the target's suffix, so writers that infer the format from the name
  (ffmpeg, matplotlib) still work;
- when the block succeeds the file is made 0644 (mkstemp makes it 0600; outputs are ordinary readable
  files), fsync'ed, then renamed onto the target. The fsync comes before the rename so that after a
  crash the name holds either the old content or the complete new one, never a file whose data had not
  reached the disk. The folder is not fsync'ed: a crash may lose the rename itself, which leaves the old
  file, still whole;
- when the block fails the temporary file is removed. A SIGKILL skips that; `is_temp` recognises the
  leftovers so that a folder that persists between runs (models/stylegan2) can be swept.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

# `.<stem>.<random>.tmp<suffix>`; also the older `.<name>.<random>.tmp` form without a suffix.
_TEMP = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, fsync it and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        commit(tmp, path)   # after the block: a writer that replaced the file would have reset its mode
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def commit(tmp: str | Path, path: str | Path) -> None:
    """Put the complete file `tmp` in place of `path` by the policy above: 0644, fsync, then rename.

    For writers that manage their own temporary file (images.ShardWriter keeps a shard open across many
    calls); everything else uses `atomic_path`.
    """
    os.chmod(tmp, 0o644)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_temp(name: str) -> bool:
    """True for the name of a temporary file `atomic_path` makes (one a killed write may leave behind)."""
    return _TEMP.match(name) is not None
