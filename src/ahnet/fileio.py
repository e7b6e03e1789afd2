"""Crash-safe output files: every file ahnet writes appears complete under its final name or not at all.

A file is written to a hidden temporary file in the target folder (``.{name}.XXXXXX{suffix}``),
flushed to disk and renamed over the target (``os.replace``, atomic on POSIX). A kill leaves at most
such a temporary file, which the next run removes (:func:`remove_stale_temps`); a failure (a full
disk, a folder that cannot be written) removes it at once and is raised as :class:`OutputError`
naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import AhnetError, OutputError

_REASONS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def describe_os_error(err: OSError) -> str:
    """A short reason for ``err`` (``strerror`` when no better wording is known)."""
    return _REASONS.get(err.errno) or err.strerror or str(err)


def output_error(path, err: OSError, action: str = "cannot write") -> OutputError:
    return OutputError(f"{path}: {action}: {describe_os_error(err)}")


def ensure_output_dir(folder, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) and make sure a file can be written in it, before any
    work starts; raises :class:`OutputError` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: the {what} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(folder, err, f"the {what} cannot be created") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".ahnet-write-test.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise output_error(folder, err, f"the {what} is not writable") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return folder


def atomic_write(path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_name)`` to fill a temporary file next to ``path``, fsync it and rename it to
    ``path``. Any failure removes the temporary file; an :class:`OSError` becomes an
    :class:`OutputError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise output_error(path, err) from None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else 0o644)  # mkstemp makes 0o600
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, AhnetError):
            raise output_error(path, err) from None
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


_TEMP_TAIL = re.compile(r"^\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)*$")  # mkstemp's 8 random characters, suffix


def is_stale_temp(filename: str, names) -> bool:
    """Whether ``filename`` is a temporary file :func:`atomic_write` makes for one of ``names``."""
    if not filename.startswith("."):
        return False
    for i in range(2, len(filename)):
        if filename[i] == "." and filename[1:i] in names and _TEMP_TAIL.match(filename[i:]):
            return True
    return False


def remove_stale_temps(folder, names: Iterable[str]) -> list[Path]:
    """Remove temporary files left in ``folder`` by a killed run that was writing one of ``names``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set(names)
    removed = []
    for p in folder.iterdir():
        if is_stale_temp(p.name, names) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
