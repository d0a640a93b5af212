"""Secret files in a task's sandbox: written 0400 for the task's user, removed when it ends.

The values come from the launch message and are held in memory only; this module is the
one place they touch the disk, inside the sandbox (0700, the task's user) where the task
reads them. Every path segment is opened without following symlinks and the file is
created exclusively, so an artifact fetched into the sandbox (an archive may hold
symlinks) cannot redirect a secret elsewhere or have one overwrite a file it placed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SecretFileError(Exception):
    """A secret file could not be placed; the message names the path, never the value."""


def write_secret_files(sandbox: Path, files: Mapping[str, str], uid: int, gid: int) -> list[Path]:
    """Write each `files[relative path] = value` under `sandbox` (created 0700 if missing),
    mode 0400, owned by uid:gid (chown only when they are not the agent's own). Returns the
    files written, for `remove_secret_files`."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(sandbox, 0o700)
    written: list[Path] = []
    for relative, value in files.items():
        try:
            _write_one(sandbox, relative, value.encode(), uid, gid)
        except OSError as error:
            remove_secret_files(written)
            raise SecretFileError(
                f"cannot write the secret file {relative!r}: {error.strerror}"
            ) from None
        written.append(sandbox / relative)
    return written


def remove_secret_files(paths: Iterable[Path]) -> None:
    """Best effort: the task has ended, its secrets need not outlive it on disk."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _write_one(sandbox: Path, relative: str, data: bytes, uid: int, gid: int) -> None:
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts) or relative.startswith("/"):
        raise OSError(0, "not a relative path inside the sandbox")
    chown = (uid, gid) != (os.geteuid(), os.getegid())
    directory = os.open(sandbox, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=directory)
            inner = os.open(part, _DIR_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = inner
            if chown:
                os.fchown(directory, uid, gid)
        fd = os.open(parts[-1], _FILE_FLAGS, 0o400, dir_fd=directory)
        try:
            if chown:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o400)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(directory)
