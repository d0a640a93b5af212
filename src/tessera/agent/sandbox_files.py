"""Files of a task's sandbox, read by the agent (root) where a task (another user) controls
every name: nothing is followed. Each component of a path is opened relative to the one
before with O_NOFOLLOW, so a link, even one swapped in after a check, is refused rather than
followed out of the sandbox; only regular files are read (a FIFO named `stdout` would block).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class OutsideSandbox(ValueError):
    """The path names something outside the sandbox (absolute, `..`)."""


def checked_parts(relative: str) -> tuple[str, ...]:
    path = PurePosixPath(relative)
    parts = path.parts
    if not parts or path.is_absolute() or any(part in (".", "..") for part in parts):
        raise OutsideSandbox("path must stay inside the sandbox")
    return parts


def open_file(sandbox: Path, relative: str) -> int:
    """A read-only descriptor of the regular file `relative` in `sandbox`.

    Raises OutsideSandbox, or FileNotFoundError when there is no such regular file reachable
    without following a link."""
    parts = checked_parts(relative)
    directory = os.open(sandbox, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = inner
        descriptor = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
    except OSError as error:  # ELOOP (a link), ENOTDIR, ENOENT, EACCES
        raise FileNotFoundError(relative) from error
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise FileNotFoundError(relative)
    return descriptor


def regular_files(sandbox: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the sandbox's regular files, not descending into links."""
    for root, _, files in os.walk(sandbox, followlinks=False):
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            info = os.lstat(full)
            if stat.S_ISREG(info.st_mode):
                yield os.path.relpath(full, sandbox), info
