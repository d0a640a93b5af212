"""Unpacked layers on disk: `layers/<chain-id hex>/fs` plus a `done` marker.

A layer is unpacked into `layers/<hex>/unpacking`, renamed to `fs`, the filesystem is synced,
and only then is `done` written (holding the layer's size on disk). A directory without
`done` is therefore a crash mid-unpack: recovery removes it and the next pull unpacks it
again, so a half layer never looks complete. Removal renames a layer into `trash/` first
(one atomic step, so a pull that looks next finds either the whole layer or nothing) and
deletes it from there. Blocking functions: call them in a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class UnpackLayer(Protocol):
    """The unpacker's signature (`tessera.agent.images.unpack.unpack_layer`)."""

    def __call__(
        self, blob: Path, media_type: str, dest: Path, *, diff_id: str | None = None
    ) -> None: ...


def _hex(chain_id: str) -> str:
    return chain_id.partition(":")[2] or chain_id


class LayerDirs:
    """The `layers/` and `trash/` directories of an image store."""

    def __init__(self, root: Path) -> None:
        self.root = root / "layers"
        self.trash_root = root / "trash"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trash_root.mkdir(parents=True, exist_ok=True)
        self._trash_count = 0

    def directory(self, chain_id: str) -> Path:
        return self.root / _hex(chain_id)

    def fs(self, chain_id: str) -> Path:
        return self.directory(chain_id) / "fs"

    def is_done(self, chain_id: str) -> bool:
        return (self.directory(chain_id) / "done").exists()

    def recover(self) -> dict[str, int]:
        """Remove every layer without `done` and empty the trash; the sizes of the rest,
        by chain ID (sha256 is the only algorithm chain IDs use)."""
        self.empty_trash()
        sizes: dict[str, int] = {}
        for entry in list(os.scandir(self.root)):
            directory = Path(entry.path)
            size = _read_done(directory / "done")
            if size is None or not (directory / "fs").is_dir():
                remove_tree(directory)
                continue
            sizes[f"sha256:{entry.name}"] = size
        return sizes

    def unpack(
        self, chain_id: str, blob: Path, media_type: str, diff_id: str, unpack: UnpackLayer
    ) -> int:
        """Unpack `blob` as layer `chain_id`; returns its size on disk."""
        directory = self.directory(chain_id)
        if directory.exists():
            remove_tree(directory)  # leftovers of an earlier attempt that did not finish
        directory.mkdir()
        staging = directory / "unpacking"
        unpack(blob, media_type, staging, diff_id=diff_id)
        size = disk_usage(staging)
        os.rename(staging, directory / "fs")
        sync_filesystem(directory)
        _write_done(directory / "done", {"size": size, "diff_id": diff_id})
        return size

    def trash(self, chain_id: str) -> Path | None:
        """Move a layer out of `layers/` (atomic); returns where it went, None if absent."""
        directory = self.directory(chain_id)
        self._trash_count += 1
        target = self.trash_root / f"{directory.name}.{os.getpid()}.{self._trash_count}"
        try:
            os.rename(directory, target)
        except FileNotFoundError:
            return None
        return target

    def empty_trash(self) -> None:
        for entry in list(os.scandir(self.trash_root)):
            remove_tree(Path(entry.path))


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree, making read-only directories writable on the way
    (a layer may hold `dr-x------` directories that an unprivileged agent cannot empty)."""

    def _retry(function: Callable[..., object], failed: str, _: object) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            function(failed)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=_retry)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path` (each hard-linked inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [str(path)]
    while pending:
        current = pending.pop()
        status = os.lstat(current)
        key = (status.st_dev, status.st_ino)
        if key not in seen:
            seen.add(key)
            total += status.st_blocks * 512
        if stat.S_ISDIR(status.st_mode):
            with os.scandir(current) as entries:
                pending.extend(entry.path for entry in entries)
    return total


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = getattr(ctypes.CDLL(name, use_errno=True), "syncfs", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding `path` (every file of a fresh layer, in one call)."""
    function = _syncfs()
    if function is None:
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if function(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


def _write_done(path: Path, content: dict[str, object]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(descriptor, json.dumps(content).encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_done(path: Path) -> int | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    size = document.get("size") if isinstance(document, dict) else None
    return size if isinstance(size, int) and size >= 0 else None
