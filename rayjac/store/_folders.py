"""Result folders, published atomically: written aside, then renamed into place.

A folder counts as a result when it holds only the file names a ``Folders`` knows; anything else
at the destination is never replaced. Paths are local or ``pyarrow.fs`` URIs (``s3://...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI (``s3://bucket/x``, ``file:///x``) rather than a local path.

    Example:
        >>> is_uri("s3://bucket/sweep"), is_uri("results/run")
        (True, False)
    """
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike, fs: pafs.FileSystem | None) -> tuple[Any, str]:
    """The filesystem and the normalised path inside it (absolute for local paths)."""
    text = os.fspath(path)
    if fs is not None:
        return fs, text.rstrip("/")
    if is_uri(text):
        fs, inner = pafs.FileSystem.from_uri(text)
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def shown(path: str | os.PathLike, final: str, fs: Any) -> str:
    """How to name ``path`` back to the user: the URI as given, else the absolute local path."""
    text = os.fspath(path)
    return text.rstrip("/") if is_uri(text) or fs is not None else final


def sibling(final: str, tag: str) -> str:
    """A hidden, unique folder next to ``final``: same filesystem, so a rename is possible."""
    parent, name = posixpath.split(final)
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:12]}"


def remove_siblings(root: str, names: list[str]) -> list[str]:
    """Deletes the hidden siblings (see :func:`sibling`) of ``names`` in the local folder
    ``root``: what a writer killed before its rename left. Returns the names deleted.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.mkdir(sibling(root + "/run", "tmp")); os.mkdir(root + "/run")
        >>> remove_siblings(root, ["run"])[0].startswith(".run.tmp-"), os.listdir(root)
        (True, ['run'])
    """
    pattern = re.compile(r"\.(%s)\.(tmp|old)-[0-9a-f]{12}" % "|".join(map(re.escape, names)))
    removed = []
    for entry in os.scandir(root):
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            remove(pafs.LocalFileSystem(), entry.path)
        else:
            os.unlink(entry.path)
        removed.append(entry.name)
    return removed


def remove(fs, folder: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_dir(folder)


@dataclasses.dataclass(frozen=True)
class Folders:
    """Publishing for result folders made of ``files``; ``last`` marks a complete one."""

    files: frozenset[str]
    last: str  # copied last where there is no rename: a folder without it is not a result

    def check(self, fs, final: str, path, overwrite: bool) -> None:
        """Raises where publishing at ``final`` would be refused."""
        name = posixpath.basename(final)
        if name in ("", ".", "..") or "/" not in final:
            raise ValueError(f"Invalid result path {os.fspath(path)!r}: name a folder inside a "
                             "parent folder, e.g. results/run.")
        state = self.state(fs, final)
        if state == "other":
            raise FileExistsError(
                f"{os.fspath(path)} exists and is not a rayjac result; rayjac never replaces it, "
                "even with overwrite. Choose another output path or remove it.")
        if state == "result" and not overwrite:
            raise FileExistsError(
                f"A result already exists at {os.fspath(path)}. Pass overwrite=True (in a config: "
                "output.overwrite: true) to replace it, or choose another output path.")

    def state(self, fs, final: str) -> str:
        """``absent``, ``empty`` (folder), ``result`` (our files only), ``partial`` (ours, but
        without ``last``: an interrupted copy, not a result) or ``other``."""
        info = fs.get_file_info(final)
        if info.type == pafs.FileType.NotFound:
            return "absent"
        if info.type != pafs.FileType.Directory:
            return "other"
        names = {posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(final))}
        if not names or not names <= self.files:
            return "empty" if not names else "other"
        return "result" if self.last in names else "partial"

    def publish(self, fs, tmp: str, final: str, path, overwrite: bool) -> None:
        """Puts the complete ``tmp`` at ``final``; an old result is deleted only after that."""
        self.check(fs, final, path, overwrite)  # again: another run may have finished
        state, old = self.state(fs, final), None
        if state == "result":
            old = sibling(final, "old")
            self._move(fs, final, old)
        elif state in ("empty", "partial"):
            fs.delete_dir(final)
        try:
            self._move(fs, tmp, final)
        except BaseException:
            if old is not None:
                self._move(fs, old, final)
            raise
        if old is not None:
            remove(fs, old)

    def _move(self, fs, tmp: str, final: str) -> None:
        """A rename where the filesystem has one; else (object stores: S3 renames no folders)
        a copy, ``last`` last, then the source is deleted."""
        try:
            fs.move(tmp, final)
            return
        except (OSError, NotImplementedError, pa.ArrowNotImplementedError):
            if isinstance(fs, pafs.LocalFileSystem):
                raise
        names = [posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(tmp))]
        fs.create_dir(final, recursive=True)
        for name in sorted(names, key=lambda name: name == self.last):
            fs.copy_file(f"{tmp}/{name}", f"{final}/{name}")
        remove(fs, tmp)
