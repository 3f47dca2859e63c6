"""Files and folders that only their owner can read: lineage stores, reports, demo output.

Lineage and reports name tenants, records and where each went: they are created `0600`
(files) and `0700` (folders) whatever the umask, as `ssh` does with its keys. Folders that
already exist keep their mode: the user chose it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create `path` and any missing parents, each `0700`; an existing folder is left as is.

    Raises `FileExistsError` when `path` (or a parent) exists and is not a folder."""
    missing = []
    current = path
    while not current.is_dir():
        if current.exists() or current.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(current))
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
        else:
            os.chmod(folder, DIR_MODE)  # the umask may have taken bits away, never added


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode `0600` unless it exists (then it is left as is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (UTF-8) as a `0600` file, atomically: a reader sees the old
    file or the new one, never half of it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
