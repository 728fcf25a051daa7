"""Images from a local folder (walked recursively) or a .zip archive.

Every regular file is an item, image or not: the decoder decides later, so a stray text file becomes a
`not_image` row instead of vanishing. Hidden files and folders (name starting with '.') and macOS
`__MACOSX` resource folders are skipped, and counted in the log. Anything that would reach outside
the folder (zip members with absolute paths or '..', symbolic links pointing elsewhere) or is not a
regular file is never read: it becomes a SourceItem with `refused` set and empty data, recorded by scrape with
decode_status "refused", and a warning is logged.
"""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from corgigan.data.sources import SourceItem
from corgigan.errors import StageError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 30     # larger files are refused unread: no photo is that big


def _is_hidden(parts: tuple[str, ...]) -> bool:
    # '.' and '..' are path syntax, not hidden names ('..' is an escape, refused elsewhere)
    return any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


class FolderSource:
    """Every file under a directory (sorted, recursive) or in a .zip, as SourceItems keyed by path."""

    name = "folder"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StageError(
                f"folder source: {self.path} does not exist. Put your photos there (a folder, searched "
                f"recursively, or a .zip), or set scrape.folder.path in params.yaml to where they are.")
        if self.path.is_file() and not zipfile.is_zipfile(self.path):
            raise StageError(f"folder source: {self.path} is a file but not a .zip archive; "
                             "point scrape.folder.path at a folder or a .zip of images")

    def items(self) -> Iterator[SourceItem]:
        """Yield one item per file, sorted by relative path."""
        if self.path.is_dir():
            yield from self._dir_items()
        else:
            yield from self._zip_items()

    # -- directory ---------------------------------------------------------------------------------

    def _dir_items(self) -> Iterator[SourceItem]:
        root = self.path.resolve()
        hidden = 0
        for rel in self._walk(root):
            if _is_hidden(rel.parts):
                hidden += 1
                continue
            yield self._dir_item(root, rel)
        if hidden:
            log.info("folder source: skipped %d hidden files and folders under %s", hidden, self.path)

    @staticmethod
    def _walk(root: Path) -> list[PurePosixPath]:
        """Relative paths of every entry that is not a real directory, sorted; links are not followed.

        Symbolic links to directories are returned as entries (they are refused, not walked), and
        hidden folders are listed as one entry so they can be counted.
        """
        found: list[PurePosixPath] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            keep = []
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink() or _is_hidden((d,)):
                    found.append(rel_dir / d)
                else:
                    keep.append(d)
            dirnames[:] = keep
            found.extend(rel_dir / f for f in filenames)
        return sorted(found, key=lambda p: p.as_posix())

    def _dir_item(self, root: Path, rel: PurePosixPath) -> SourceItem:
        source_id = rel.as_posix()
        path = root / rel
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root):
                return _refuse(source_id, f"symbolic link pointing outside the folder ({target})")
        try:
            st = path.stat()
        except OSError as e:     # a dangling link or a file removed while walking
            return _refuse(source_id, f"cannot stat: {e}")
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory link" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return _refuse(source_id, kind)
        if st.st_size > MAX_FILE_BYTES:
            return _refuse(source_id, f"{st.st_size} bytes > {MAX_FILE_BYTES}")
        return SourceItem(source_id=source_id, data=path.read_bytes(), url=None)

    # -- zip ---------------------------------------------------------------------------------------

    def _zip_items(self) -> Iterator[SourceItem]:
        hidden = 0
        with zipfile.ZipFile(self.path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                name = info.filename
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if _zip_escape(name) is None and _is_hidden(parts):
                    hidden += 1
                    continue
                yield _zip_item(zf, info)
        if hidden:
            log.info("folder source: skipped %d hidden members of %s", hidden, self.path)


def _zip_escape(name: str) -> str | None:
    """Why a member name would escape the extraction folder, or None if it stays inside."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "'..' in path"
    return None


def _zip_item(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> SourceItem:
    name = info.filename
    escape = _zip_escape(name)
    if escape:
        return _refuse(name, f"zip member escapes the archive folder: {escape}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return _refuse(name, "zip member is a symbolic link")
    if info.flag_bits & 0x1:
        return _refuse(name, "zip member is encrypted")
    if info.file_size > MAX_FILE_BYTES:
        return _refuse(name, f"zip member of {info.file_size} bytes > {MAX_FILE_BYTES}")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError) as e:
        return _refuse(name, f"unreadable zip member: {e}")
    return SourceItem(source_id=name, data=data, url=None)


def _refuse(source_id: str, reason: str) -> SourceItem:
    log.warning("folder source: refused %r: %s", source_id, reason)
    return SourceItem(source_id=source_id, data=b"", refused=reason)
