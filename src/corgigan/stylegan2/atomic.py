"""The project's one temporary-file rule: how a temporary file is named, written, committed and swept.

It lives in stylegan2 because stylegan2 imports nothing else of corgigan; the rest of the project reaches
it through `corgigan.tables` (`atomic_path`, `remove_stale_temps`; images.ShardWriter, which keeps its
own temporary shard open across many images, through `commit`; `make_temp` names such a writer's file).

Policy, the same for every output (tables, image shards, snapshots, grids, figures, videos, caches):

- the temporary file is ``.<stem>.<random>.tmp<suffix>`` in the target's folder (`make_temp`): the same
  file system, so the rename is atomic, and the target's suffix, so writers that infer the format from
  the name (ffmpeg, matplotlib) still work; hidden, so listings and globs of the outputs skip it;
- when the block succeeds the file is made 0644 (mkstemp makes it 0600; outputs are ordinary readable
  files), fsync'ed, then renamed onto the target. The fsync comes before the rename so that after a
  crash the name holds either the old content or the complete new one, never a file whose data had not
  reached the disk. The folder is not fsync'ed: a crash may lose the rename itself, which leaves the old
  file, still whole;
- when the block fails the temporary file is removed. A SIGKILL skips that, so every stage sweeps its
  outputs with `remove_stale_temps` before it writes: a folder output loses every temporary file or
  folder inside it (the stage owns the folder) and those made for it beside it (`atomic_folder`), a file
  output only the temporary files named for it (its folder may hold other stages' outputs). `is_temp`
  recognises the names, including two older forms (``.<name>.tmp`` and ``.<name>.<random>.tmp``), and
  .dvcignore keeps them out of DVC's hashes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# `.<stem>.<random>.tmp<suffix>`; also the older `.<name>.tmp` and `.<name>.<random>.tmp` forms.
_TEMP = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def make_temp(path: str | Path) -> Path:
    """Create an empty temporary file for the target `path` (named by the policy above); return its path.

    The caller owns it: it must `commit` it or delete it. Most writers use `atomic_path`, which does both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, fsync it and rename it onto `path`."""
    path = Path(path)
    tmp = make_temp(path)
    try:
        yield tmp
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


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside the folder `path` (named as `make_temp` names a file's); if the
    block succeeds, commit every file in it (0644, fsync), make it 0755 and put it in place of `path`.

    An older `path` is renamed aside first (a temporary name) and deleted after, so `path` is at every
    moment absent, the old folder or the complete new one; a failed block leaves the old one untouched.
    For a folder written as a whole (an export); a stage that fills its output folder file by file uses
    `atomic_path` per file instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o644)
                with open(f, "rb+") as handle:
                    os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)        # mkdtemp makes it 0700; an output is an ordinary readable folder
        if path.exists() or path.is_symlink():
            old = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"   # swept like tmp if killed
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def is_temp(name: str) -> bool:
    """True for the name of a temporary file `make_temp` makes (one a killed write may leave behind)."""
    return _TEMP.match(name) is not None


def _temps_of(target: Path) -> re.Pattern[str]:
    """The names of the temporary files made for `target` (the random part holds no dot), in every form."""
    stem, suffix, name = (re.escape(s) for s in (target.stem, target.suffix, target.name))
    return re.compile(rf"^\.(?:{stem}\.[^.]+\.tmp{suffix}|{name}(?:\.[^.]+)?\.tmp)$")


def _find_temps(output: Path) -> list[Path]:
    """Temporary files and folders inside the folder `output`, and those made for `output` beside it (a
    file's `make_temp`, a folder's `atomic_folder`)."""
    found = []
    if output.is_dir() and not output.is_symlink():
        for root, dirs, files in os.walk(output):
            found += [Path(root, n) for n in files + dirs if is_temp(n)]
            dirs[:] = [d for d in dirs if not is_temp(d)]   # a temporary folder goes as a whole
    if not output.parent.is_dir():
        return found
    pattern = _temps_of(output)
    return found + [p for p in output.parent.iterdir() if pattern.match(p.name)]


def remove_stale_temps(*outputs: str | Path, min_age_s: float = 0.0) -> list[Path]:
    """Delete what interrupted writes left in or for `outputs` (folders or files); return what went.

    Call it before a stage writes its outputs: a folder output loses every temporary file and folder in
    it, a file output the temporary files named for it. `min_age_s` spares those modified more recently
    (for a folder that another process may be writing into at the same time, such as a shared cache).
    One WARNING line names what was removed.
    """
    now = time.time()
    removed = []
    for output in outputs:
        for p in sorted(_find_temps(Path(output))):
            try:
                if min_age_s and now - p.lstat().st_mtime < min_age_s:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:   # another sweep got there first
                continue
            removed.append(p)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed
