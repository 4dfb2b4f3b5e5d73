"""Output files that are whole or absent: every file drone_pose writes goes through here.

The content is written to a temporary file in the destination's folder (a hidden name ending in
the destination's suffix, so writers that pick a format by suffix still do), flushed to disk, and
renamed over the destination (os.replace, atomic within one filesystem) only when the writing block
ends without an exception. On any failure (an exception, a full disk, Ctrl-C) the temporary is
removed and whatever was under the destination's name before is unchanged. A destination that
exists and is not a regular file (a directory, a device such as /dev/null, a pipe) is refused with
OutputPathError before anything is written; a symbolic link is followed to the file it names.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from drone_pose.errors import OutputPathError

TEMPORARY_MARK = ".partial"


def checked_destination(destination: str | Path) -> Path:
    """The file path to write (symbolic links followed); OutputPathError for a non-regular file."""
    final = Path(os.path.realpath(destination))
    try:
        mode = final.stat().st_mode
    except FileNotFoundError:
        return final
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputPathError(f"{destination}: is {kind}; name a file path for the output")
    return final


def temporary_name(final: Path) -> Path:
    """A fresh hidden name beside `final`, ending in its suffix: .NAME.RANDOM.partial.SUFFIX."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMPORARY_MARK}{final.suffix}")


@contextlib.contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """A temporary path to write `destination`'s content to (an empty file already there, created
    with the destination's permissions); renamed to `destination` when the block ends normally,
    removed when it raises. Creates the destination's folder when missing. An OSError of the writer
    that names no file (a full disk) is raised again naming the destination."""
    final = checked_destination(destination)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(final)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if final.exists():
            shutil.copymode(final, temporary)
        yield temporary
        if not temporary.is_file():
            raise OutputPathError(f"{destination}: the writer left no file to rename into place")
        _fsync(temporary)
        os.replace(temporary, final)
        _fsync(final.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            # a failed write() names no file: name the destination (ENOSPC, EFBIG, EIO, ...)
            raise type(error)(error.errno, error.strerror, str(destination)) from error
        raise


@contextlib.contextmanager
def atomic_open(destination: str | Path, mode: str = "w", **options: Any) -> Iterator[IO[Any]]:
    """An open handle (`mode` "w"/"wb"/"x"-free, `options` as for open()) on a temporary beside
    `destination`; the file appears under `destination`'s name, whole, when the block ends normally."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} must start with 'w'")
    with atomic_path(destination) as temporary, open(temporary, mode, **options) as handle:
        yield handle
        handle.flush()


def write_text(destination: str | Path, text: str) -> Path:
    """`text` (UTF-8) as the whole content of `destination`; returns the destination."""
    with atomic_open(destination, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(destination)


def write_bytes(destination: str | Path, data: bytes | memoryview) -> Path:
    """`data` as the whole content of `destination`; returns the destination."""
    with atomic_open(destination, "wb") as handle:
        handle.write(data)
    return Path(destination)


def is_temporary(path: str | Path) -> bool:
    """Whether `path` is a temporary this module names (left behind only by a killed process)."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY_MARK in name


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_folder(destination: str | Path) -> Iterator[Path]:
    """A path for a writer that creates a whole folder (a rosbag2 bag): `destination`'s name inside a
    hidden temporary folder beside it. When the block ends normally the folder replaces
    `destination` (an existing one is removed first); when it raises the temporary is removed and
    `destination` is unchanged. The folder keeps its name, so files named after it (the bag's
    storage file) stay consistent."""
    final = Path(os.path.realpath(destination))
    if final.exists() and not final.is_dir():
        raise OutputPathError(f"{destination}: is not a folder; name a folder path for the output")
    final.parent.mkdir(parents=True, exist_ok=True)
    holder = final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMPORARY_MARK}")
    holder.mkdir()
    try:
        yield holder / final.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(holder / final.name, final)
        _fsync(final.parent)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
