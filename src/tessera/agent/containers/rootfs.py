"""A container's root filesystem: an overlayfs of the image's layers with a per-task upper dir.

The lower dirs are named by short symlinks (`l/0`, `l/1`, …) in the container's directory,
reached through an open descriptor of it (`/proc/self/fd/<fd>/l/0`), so the mount options
stay far below the kernel's one-page limit however many layers an image has (Mesos'
overlay backend uses short links too). The mount is a system call made in a worker thread:
no `mount` process per container. Files inside a rootfs are read without following
symlinks: an image's absolute link points into the host when seen from the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MNT_DETACH = 2

# The kernel's limit on mount data is one page.
MAX_MOUNT_OPTIONS = 4096


class RootfsError(Exception):
    """The root filesystem could not be made or removed."""


def overlay_options(layer_count: int, upper: str, work: str, links: str = "l") -> str:
    """`lowerdir=<links>/<top>:…:<links>/0,upperdir=…,workdir=…` (overlayfs lists the top
    layer first)."""
    lowers = ":".join(f"{links}/{index}" for index in reversed(range(layer_count)))
    options = f"lowerdir={lowers},upperdir={upper},workdir={work}"
    if len(options) >= MAX_MOUNT_OPTIONS:
        raise RootfsError(f"the image has too many layers ({layer_count}) for one overlay mount")
    return options


def _mount_overlay(container_dir: Path, layer_count: int, upper: Path, work: Path) -> None:
    directory = os.open(container_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        links = f"/proc/self/fd/{directory}/l"
        options = overlay_options(layer_count, str(upper), str(work), links)
        target = str(container_dir / "rootfs")
        if _libc.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()) != 0:
            code = ctypes.get_errno()
            raise RootfsError(f"cannot mount the container's root filesystem: {os.strerror(code)}")
    finally:
        os.close(directory)


def _unmount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), 0) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EBUSY and _libc.umount2(str(target).encode(), _MNT_DETACH) == 0:
        return  # lazily, once nothing uses it any more
    code = ctypes.get_errno() if code == errno.EBUSY else code
    if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not (or no longer) a mount
        raise RootfsError(f"cannot unmount {target}: {os.strerror(code)}")


async def mount_rootfs(container_dir: Path, layers: Sequence[Path], scratch: Path) -> Path:
    """Mount `container_dir/rootfs` over `layers` (bottom first); the task's changes go to
    `scratch/upper` (its work dir beside it). Returns the mount point."""
    if not layers:
        raise RootfsError("the image has no layers")
    links = container_dir / "l"
    links.mkdir(parents=True, exist_ok=True)
    for index, layer in enumerate(layers):
        link = links / str(index)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(layer)
    upper, work = scratch / "upper", scratch / "work"
    for directory in (scratch, upper, work):
        directory.mkdir(mode=0o700, exist_ok=True)
    # The merged root takes the upper dir's owner and mode: give it the image's (the scratch
    # dir above it keeps the task's user out on the host side).
    top = os.stat(layers[-1])
    os.chown(upper, top.st_uid, top.st_gid)
    os.chmod(upper, top.st_mode & 0o7777)
    target = container_dir / "rootfs"
    target.mkdir(exist_ok=True)
    if os.path.ismount(target):
        return target  # mounted before an agent restart
    await asyncio.to_thread(_mount_overlay, container_dir, len(layers), upper, work)
    return target


async def unmount_rootfs(container_dir: Path) -> None:
    """Unmount (lazily if busy) and remove the container's directory; idempotent."""
    target = container_dir / "rootfs"
    if os.path.ismount(target):
        await asyncio.to_thread(_unmount, target)
    shutil.rmtree(container_dir, ignore_errors=True)


def read_inside(rootfs: Path, relative: str, limit: int = 1 << 20) -> str:
    """A small text file of the rootfs, refusing any symlink on the way ("" if absent)."""
    parts = [part for part in relative.split("/") if part]
    descriptor = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            following = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor
            )
            os.close(descriptor)
            descriptor = following
        handle = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=descriptor)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return ""
        raise
    finally:
        os.close(descriptor)
    with os.fdopen(handle, "rb") as file:
        return file.read(limit).decode(errors="replace")
