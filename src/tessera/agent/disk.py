"""The agent's own files on a disk that can fill up: atomic writes that leave no torn file,
space reserved ahead of need, and error messages that say the disk is full."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

# Errors that mean "no space": the filesystem is full, or the agent's user is over its quota.
_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})
# fallocate(2): allocate blocks past the end of the file without changing its size.
_FALLOC_FL_KEEP_SIZE = 1


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _SPACE_ERRORS


def describe_os_error(error: OSError, where: Path | str | None = None) -> str:
    """One clear line: a full disk is named as such (with where), anything else as itself."""
    place = where if where is not None else error.filename
    detail = error.strerror or str(error)
    if is_disk_full(error):
        return f"the agent's disk is full ({detail}{f': {place}' if place else ''})"
    return f"{detail}: {place}" if place else detail


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`, or leave it as it was: never a truncated file.

    The data goes to `<path>.tmp` first. That file is opened without truncation, so space
    reserved in it beforehand (`reserve_file`) is written into rather than freed. No fsync:
    these files need to survive the agent's crash, which the page cache does; a power loss
    ends every task anyway. On failure the temporary file is removed and the error raised.
    """
    encoded = data.encode() if isinstance(data, str) else data
    temporary = path.with_name(path.name + ".tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            write_all(descriptor, encoded)
            os.ftruncate(descriptor, len(encoded))
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def reserve_file(path: Path, size: int = 4096) -> None:
    """Allocate `size` bytes for the next `write_atomic(path, ...)`, so that write cannot
    fail for lack of space later. Raises OSError (ENOSPC) when the space is not there now."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(descriptor, 0, size)
        else:  # macOS: zeros allocate the blocks as well
            write_all(descriptor, bytes(size))
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(descriptor)


def write_all(descriptor: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short when the disk fills)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def reserve_beyond_end(descriptor: int, offset: int, length: int) -> None:
    """Allocate blocks for `[offset, offset+length)` without growing the file (Linux
    fallocate with FALLOC_FL_KEEP_SIZE): appends then use them and cannot hit ENOSPC.
    Raises OSError; EOPNOTSUPP where the filesystem or the platform cannot do it."""
    fallocate = _fallocate()
    if fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available here")
    if fallocate(descriptor, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).fallocate
    except (OSError, AttributeError):  # no libc by that name, or no fallocate (not Linux)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)
