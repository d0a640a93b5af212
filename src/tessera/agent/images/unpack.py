"""The safe layer extractor: one image layer unpacked into its own overlayfs lower directory.

Layers are gzip, zstd or plain tars (chosen by media type, or by magic bytes when the media
type says nothing useful: `layer_stream`). The tar is read once, forward only, decoded and
hashed in a thread of its own, so that `diff_id` is checked without a second pass.

Whiteouts become what overlayfs reads: `.wh.<name>` a character device 0/0 named `<name>`,
`.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Both apply to lower
layers only, so an opaque directory keeps the files this layer adds to it, in whichever order
the tar lists them (the image-spec ordering rule), and a whiteout never removes a file of its
own layer. Other `.wh..wh.*` names (aufs metadata) are skipped.

Kept: regular files, directories, symlinks (targets written as they are, absolute ones too,
and never followed), hard links within the layer, fifos, devices (root only), numeric
ownership (root only), modes with setuid/setgid/sticky, mtimes, and PAX xattrs (those the
filesystem refuses are skipped with a debug log; `trusted.overlay.*` from the tar is dropped,
since only whiteouts may speak to overlayfs).

Safety: a leading `/` is stripped, as Docker and containerd do: names are relative to the
layer root. A `..` component, a parent directory reached through a symlink or a non-directory
(including one made by an earlier entry of the same layer), and a hard link whose target is
not an earlier entry of this layer are refused: a hard link to a file of a lower layer cannot
be made across per-layer directories, and copying it would mean reading lower layers, so such
a layer fails (image-spec: "may fail"). Paths are walked one component at a time with
`O_NOFOLLOW | O_DIRECTORY` relative to directory fds, so nothing is written outside `dest`.
A refused entry fails the whole layer with LayerError and leaves `dest` for the caller to
delete. Errors of the machine itself (a full disk) are raised as the OSError they are.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from tessera.agent.images.layer_stream import (
    CHUNK,
    Compression,
    Forward,
    LayerError,
    Prefetch,
    as_file,
    compression_of,
    open_layer,
    sniff_compression,
)

log = logging.getLogger(__name__)

__all__ = [
    "OPAQUE_MARKER",
    "OPAQUE_XATTR",
    "WHITEOUT_PREFIX",
    "Compression",
    "LayerError",
    "compression_of",
    "open_layer",
    "sniff_compression",
    "unpack_layer",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_AUFS_META = WHITEOUT_PREFIX + WHITEOUT_PREFIX  # `.wh..wh.plnk/…`, `.wh..wh.aufs`

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that say the machine is in trouble, not the layer: never hidden as a skipped xattr.
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def unpack_layer(blob: Path, media_type: str, dest: Path, *, diff_id: str | None = None) -> None:
    """Unpack `blob` into `dest` (created here; it must not exist or be empty).

    Raises LayerError for a corrupt, unsafe or mismatched layer (`diff_id` is checked against
    the uncompressed stream when given); `dest` is then left partly written for the caller
    to delete.
    """
    algorithm = _algorithm_of(diff_id)
    root_fd = _open_dest(dest)
    try:
        with open_layer(blob, media_type) as reader:
            decoded = Prefetch(reader, algorithm)
            try:
                _Extractor(root_fd, blob.name, Forward(decoded)).run()
                decoded.drain()  # the tar's end-of-archive padding is part of the digest
            finally:
                decoded.close()
    finally:
        os.close(root_fd)
    computed = f"{algorithm}:{decoded.hash.hexdigest()}"
    if diff_id is not None and computed != diff_id:
        raise LayerError(f"layer {blob.name}: diff_id mismatch: expected {diff_id}, got {computed}")


def _algorithm_of(diff_id: str | None) -> str:
    if diff_id is None:
        return "sha256"
    algorithm, _, hexdigest = diff_id.partition(":")
    if algorithm not in ("sha256", "sha512") or not hexdigest:
        raise LayerError(f"unsupported diff_id {diff_id!r}")
    return algorithm


def _open_dest(dest: Path) -> int:
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(dest, _DIR_FLAGS)
    with os.scandir(fd) as entries:
        if next(entries, None) is not None:
            os.close(fd)
            raise FileExistsError(errno.EEXIST, "layer destination is not empty", str(dest))
    return fd


class _Extractor:
    """Applies tar entries one by one below a root directory fd, never following a link."""

    def __init__(self, root_fd: int, layer: str, source: Forward) -> None:
        self.root_fd = root_fd
        self.layer = layer
        self.source = source
        self.privileged = os.geteuid() == 0
        self.dirs = _DirCache(root_fd, layer)
        # Non-directories made by this layer: the only allowed hard link targets.
        self.files: set[tuple[str, ...]] = set()
        # Directory mtimes are set last: adding children would change them again.
        self.dir_times: list[tuple[tuple[str, ...], float]] = []

    def run(self) -> None:
        try:
            # "r:" reads headers straight from the source; file data is copied by _file.
            with tarfile.open(fileobj=as_file(self.source), mode="r:") as tar:
                for member in tar:
                    self._entry(tar, member)
        except tarfile.TarError as error:
            raise LayerError(f"layer {self.layer}: not a valid tar: {error}") from None
        finally:
            self.dirs.close()
        self._set_dir_times()

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _split(member.name, self.layer, "entry")
        try:
            if not parts:
                self._root(member)
            elif parts[-1] == OPAQUE_MARKER:
                self._opaque(parts)
            elif _AUFS_META in (parts[0][: len(_AUFS_META)], parts[-1][: len(_AUFS_META)]):
                log.debug("layer %s: skipping aufs metadata %s", self.layer, member.name)
            elif parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(parts, member.name)
            else:
                self._item(tar, member, parts)
        except OSError as error:
            if error.errno in _MACHINE_ERRNOS:
                error.add_note(f"while unpacking {member.name!r} of layer {self.layer}")
                raise
            raise LayerError(f"layer {self.layer}: entry {member.name!r}: {error}") from None

    def _root(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise LayerError(f"layer {self.layer}: entry {member.name!r} is the root but no dir")
        self._metadata_fd(self.root_fd, member)
        self.dir_times.append(((), member.mtime))

    def _opaque(self, parts: tuple[str, ...]) -> None:
        fd = self.dirs.get(parts[:-1])
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        except OSError as error:
            raise LayerError(
                f"layer {self.layer}: cannot mark {'/'.join(parts[:-1]) or '/'} opaque "
                f"({error.strerror}; trusted xattrs need root)"
            ) from None

    def _whiteout(self, parts: tuple[str, ...], name: str) -> None:
        hidden = parts[-1][len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise LayerError(f"layer {self.layer}: whiteout {name!r} names nothing")
        parent = self.dirs.get(parts[:-1])
        if _lstat(hidden, parent) is not None:
            return  # this layer made it: a whiteout hides lower layers only
        try:
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        except PermissionError:
            raise LayerError(
                f"layer {self.layer}: cannot make whiteout {name!r} (mknod needs root)"
            ) from None

    def _item(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        parent = self.dirs.get(parts[:-1])
        base = parts[-1]
        existing = _lstat(base, parent)
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(base, dir_fd=parent)
                existing = None
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
            try:
                self._metadata_fd(fd, member)
            finally:
                os.close(fd)
            self.dir_times.append((parts, member.mtime))
            return
        if existing is not None:
            self._remove(parts, parent, existing)
        if member.isreg():
            self._file(tar, member, base, parent)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            self._metadata_path(base, parent, member, chmod=False)
        elif member.islnk():
            self._hardlink(member, parts, base, parent)
            return  # the link shares the target's inode and metadata
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            self._metadata_path(base, parent, member, chmod=True)
        elif member.ischr() or member.isblk():
            if not self.privileged:
                log.debug("layer %s: skipping device %s (not root)", self.layer, member.name)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, kind | 0o600, device, dir_fd=parent)
            self._metadata_path(base, parent, member, chmod=True)
        else:
            raise LayerError(
                f"layer {self.layer}: entry {member.name!r} has unsupported type {member.type!r}"
            )
        self.files.add(parts)

    def _remove(self, parts: tuple[str, ...], parent: int, existing: os.stat_result) -> None:
        """Duplicate paths are not allowed in a layer; if one comes anyway, the later wins."""
        if stat.S_ISDIR(existing.st_mode):
            self.dirs.forget(parts)
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, base: str, parent: int) -> None:
        fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            if member.sparse is not None:  # GNU sparse files: tarfile knows the map
                data = tar.extractfile(member)
                if data is not None:
                    _copy(data, fd)
            else:
                self.source.seek(member.offset_data)
                if self.source.copy_to(fd, member.size) != member.size:
                    raise LayerError(f"layer {self.layer}: entry {member.name!r} is truncated")
            self._metadata_fd(fd, member)
        finally:
            os.close(fd)

    def _hardlink(
        self, member: tarfile.TarInfo, parts: tuple[str, ...], base: str, parent: int
    ) -> None:
        target = _split(member.linkname, self.layer, f"hard link {member.name!r} to")
        if target not in self.files or target == parts:
            raise LayerError(
                f"layer {self.layer}: hard link {member.name!r} -> {member.linkname!r}: "
                "the target is not a file of this layer"
            )
        target_dir = self.dirs.walk(target[:-1], create=False)
        try:
            os.link(target[-1], base, src_dir_fd=target_dir, dst_dir_fd=parent,
                    follow_symlinks=False)  # fmt: skip
        finally:
            os.close(target_dir)
        self.files.add(parts)

    def _metadata_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        # chown clears setuid/setgid and file capabilities: mode and xattrs come after it.
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self._xattrs(fd, member)
        if not member.isdir():
            _set_time(fd, member.mtime)

    def _metadata_path(
        self, base: str, parent: int, member: tarfile.TarInfo, *, chmod: bool
    ) -> None:
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:  # the node was just made by us, so following is safe (Linux has no lchmod)
            os.chmod(base, member.mode & 0o7777, dir_fd=parent)
        self._xattrs(f"/proc/self/fd/{parent}/{base}", member)
        with contextlib.suppress(OSError):
            os.utime(base, ns=(_ns(member.mtime),) * 2, dir_fd=parent, follow_symlinks=False)

    def _xattrs(self, target: int | str, member: tarfile.TarInfo) -> None:
        for name, value in _pax_xattrs(member):
            if name.startswith("trusted.overlay."):
                log.warning("layer %s: dropping %s on %s", self.layer, name, member.name)
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as error:
                if error.errno in _MACHINE_ERRNOS:
                    raise
                log.debug("layer %s: xattr %s on %s refused: %s", self.layer, name,
                          member.name, error.strerror)  # fmt: skip

    def _set_dir_times(self) -> None:
        for parts, mtime in self.dir_times:
            fd = self.dirs.walk(parts, create=False)
            try:
                _set_time(fd, mtime)
            finally:
                os.close(fd)


class _DirCache:
    """Directory fds reached from the root without following links; the last few are kept
    open because tars list a directory's entries together."""

    _KEEP = 8

    def __init__(self, root_fd: int, layer: str) -> None:
        self.root_fd = root_fd
        self.layer = layer
        self.open: dict[tuple[str, ...], int] = {}

    def get(self, parts: tuple[str, ...]) -> int:
        if not parts:
            return self.root_fd
        fd = self.open.get(parts)
        if fd is None:
            fd = self.walk(parts, create=True)
            if len(self.open) >= self._KEEP:
                os.close(self.open.pop(next(iter(self.open))))
            self.open[parts] = fd
        return fd

    def walk(self, parts: tuple[str, ...], *, create: bool) -> int:
        """A new fd for the directory `parts` (the caller closes it); missing ones are made
        (0755, like Docker's implicit parents) when `create`."""
        fd = os.dup(self.root_fd)
        try:
            for index, part in enumerate(parts):
                child = self._step(fd, part, parts[: index + 1], create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, part: str, path: tuple[str, ...], create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            found = _lstat(part, fd)
            what = "a symlink" if found and stat.S_ISLNK(found.st_mode) else "not a directory"
            raise LayerError(
                f"layer {self.layer}: {'/'.join(path)} is {what}: an entry below it would go "
                "through the symlink or out of the layer"
            ) from None
        os.mkdir(part, 0o755, dir_fd=fd)
        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        os.fchmod(child, 0o755)  # mkdir's mode was narrowed by the umask
        return child

    def forget(self, removed: tuple[str, ...]) -> None:
        """`removed` is about to go: drop the fds of it and of what is below it."""
        for parts in [p for p in self.open if p[: len(removed)] == removed]:
            os.close(self.open.pop(parts))

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()


def _split(name: str, layer: str, what: str) -> tuple[str, ...]:
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue  # a leading "/" or "./" is relative to the layer root
        if part == "..":
            raise LayerError(f"layer {layer}: {what} {name!r} has a '..' component")
        parts.append(part)
    return tuple(parts)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _copy(source: IO[bytes], fd: int) -> None:
    while chunk := source.read(CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _pax_xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decodes PAX values as UTF-8 with surrogateescape: this gives the bytes back.
            yield key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            yield unquote(key[len("LIBARCHIVE.xattr.") :]), base64.b64decode(value + "==")


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _set_time(fd: int, mtime: float) -> None:
    with contextlib.suppress(OSError, OverflowError):  # an mtime the filesystem cannot hold
        os.utime(fd, ns=(_ns(mtime), _ns(mtime)))
