"""Images built without a daemon: layer tars, configs, manifests and indexes, a busybox root.

For tests, the benchmark and the `make run` demo. A layer comes from a directory tree and/or
explicit entries (files, directories, symlinks, hard links, whiteouts, opaque markers, fifos,
devices, with modes, owners and xattrs), written as a PAX tar in the given order and
compressed with gzip, zstd or nothing. Layers are reproducible: gzip headers carry no time
and explicit entries default to mtime 0, so the same input gives the same digest.

`build_image` writes the config (platform, Env, Entrypoint, Cmd, User, WorkingDir,
ExposedPorts, rootfs.diff_ids, history) and a manifest in OCI or Docker schema 2 format;
`build_index` groups platform images in an OCI index or a Docker manifest list. Pushing is in
`tessera.agent.images.push`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

import zstandard

Compression = Literal["gzip", "zstd", "none"]
ManifestFormat = Literal["oci", "docker"]
EntryKind = Literal["file", "dir", "symlink", "hardlink", "fifo", "char", "block"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"
_CHUNK = 1 << 20
_LAYER_TYPES: dict[Compression, str] = {
    "gzip": OCI_LAYER + "+gzip",
    "zstd": OCI_LAYER + "+zstd",
    "none": OCI_LAYER,
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """Content and its descriptor; big layers live in a file (`path`) instead of `data`."""

    media_type: str
    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None
    diff_id: str | None = None  # layers only: the digest of the uncompressed tar

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Blob:
        return cls(media_type, digest_of(data), len(data), data=data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    def descriptor(self, media_type: str | None = None) -> dict[str, Any]:
        return {
            "mediaType": media_type or self.media_type,
            "digest": self.digest,
            "size": self.size,
        }

    def json(self) -> Any:
        return json.loads(self.read())


@dataclass(frozen=True)
class Entry:
    """One tar entry; build them with file(), directory(), symlink(), whiteout() and so on."""

    path: str
    kind: EntryKind = "file"
    data: bytes = b""
    source: Path | None = None  # a file's content read from here instead of `data`
    target: str = ""  # of a symlink or hard link
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    device: tuple[int, int] = (0, 0)


def file(
    path: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(path, "file", data, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs or {})


def directory(
    path: str,
    *,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs or {})


def symlink(path: str, target: str, *, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "symlink", target=target, mode=0o777, uid=uid, gid=gid)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", target=target)


def fifo(path: str, *, mode: int = 0o644) -> Entry:
    return Entry(path, "fifo", mode=mode)


def device(path: str, major: int, minor: int, *, block: bool = False, mode: int = 0o666) -> Entry:
    return Entry(path, "block" if block else "char", mode=mode, device=(major, minor))


def whiteout(path: str) -> Entry:
    """Deletes `path` of the lower layers: an empty file `<dir>/.wh.<name>`."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)


def opaque(path: str) -> Entry:
    """Hides everything the lower layers have below the directory `path`."""
    return file(f"{path.rstrip('/')}/.wh..wh..opq", mode=0o600)


def tree_entries(root: Path, *, mtime: int | None = None) -> Iterator[Entry]:
    """Everything below `root`, sorted, as entries: owners, modes and xattrs as on disk; files
    sharing an inode become hard links to the first; `mtime` overrides every time."""
    seen: dict[tuple[int, int], str] = {}
    for current, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(current)
        for name in sorted([*dirs, *files]):
            yield from _tree_entry(base / name, root, seen, mtime)
        # os.walk would descend into symlinks to directories only with followlinks=True.


def _tree_entry(
    path: Path, root: Path, seen: dict[tuple[int, int], str], mtime: int | None
) -> Iterator[Entry]:
    info = path.lstat()
    name = path.relative_to(root).as_posix()
    common: dict[str, Any] = {
        "mode": stat.S_IMODE(info.st_mode),
        "uid": info.st_uid,
        "gid": info.st_gid,
        "mtime": int(info.st_mtime) if mtime is None else mtime,
        "xattrs": _read_xattrs(path),
    }
    if stat.S_ISDIR(info.st_mode):
        yield Entry(name, "dir", **common)
    elif stat.S_ISLNK(info.st_mode):
        yield Entry(name, "symlink", target=os.readlink(path), **common)
    elif stat.S_ISREG(info.st_mode):
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in seen:
            yield Entry(name, "hardlink", target=seen[key], **common)
            return
        seen[key] = name
        yield Entry(name, "file", source=path, **common)
    elif stat.S_ISFIFO(info.st_mode):
        yield Entry(name, "fifo", **common)
    elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        kind: EntryKind = "char" if stat.S_ISCHR(info.st_mode) else "block"
        numbers = (os.major(info.st_rdev), os.minor(info.st_rdev))
        yield Entry(name, kind, device=numbers, **common)


def _read_xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {name: os.getxattr(path, name, follow_symlinks=False) for name in names}
    except OSError:
        return {}


class _LayerWriter:
    """The tar stream's sink: hashes it (diff_id), compresses it, hashes that (digest)."""

    def __init__(self, out: IO[bytes], compression: Compression, level: int | None) -> None:
        self.out = out
        self.diff = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.size = 0
        self.compress: Any = None
        if compression == "gzip":
            # wbits 31: a gzip header with no name and mtime 0, so digests are reproducible.
            self.compress = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self.compress = zstandard.ZstdCompressor(
                level=3 if level is None else level
            ).compressobj()

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self._emit(self.compress.compress(data) if self.compress else data)
        return len(data)

    def finish(self) -> None:
        if self.compress:
            self._emit(self.compress.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.digest.update(data)
            self.size += len(data)
            self.out.write(data)


def build_layer(
    entries: Iterable[Entry] = (),
    *,
    tree: Path | None = None,
    compression: Compression = "gzip",
    level: int | None = None,
    out: Path | None = None,
    tree_mtime: int | None = None,
) -> Blob:
    """A layer of `tree` (if given) followed by `entries`, in that order; in memory, or
    written to `out` for big layers. The media type is OCI's for the compression."""
    handle: IO[bytes] = open(out, "wb") if out is not None else io.BytesIO()  # noqa: SIM115
    try:
        writer = _LayerWriter(handle, compression, level)
        with tarfile.open(
            fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            if tree is not None:
                for entry in tree_entries(tree, mtime=tree_mtime):
                    _add(tar, entry)
            for entry in entries:
                _add(tar, entry)
        writer.finish()
        data = handle.getvalue() if isinstance(handle, io.BytesIO) else None
    finally:
        handle.close()
    return Blob(
        _LAYER_TYPES[compression],
        "sha256:" + writer.digest.hexdigest(),
        writer.size,
        data=data,
        path=out,
        diff_id="sha256:" + writer.diff.hexdigest(),
    )


_TAR_TYPES: dict[EntryKind, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    # Names are written as given (tests need `../x` and `/abs` too); directories end in "/".
    slash = "/" if entry.kind == "dir" and not entry.path.endswith("/") else ""
    info = tarfile.TarInfo(entry.path + slash)
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime
    info.linkname = entry.target
    info.devmajor, info.devminor = entry.device
    # PAX values are str; surrogateescape carries binary xattrs (capabilities) through.
    info.pax_headers = {
        f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
        for name, value in entry.xattrs.items()
    }
    if entry.kind != "file":
        tar.addfile(info)
    elif entry.source is not None:
        info.size = entry.source.stat().st_size
        with open(entry.source, "rb") as content:
            tar.addfile(info, content)
    else:
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))


@dataclass(frozen=True)
class ContainerConfig:
    """The runtime part of an image config (`config` in the JSON)."""

    env: tuple[str, ...] = (DEFAULT_PATH,)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"Env": list(self.env)}
        if self.entrypoint is not None:
            body["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            body["Cmd"] = list(self.cmd)
        if self.user:
            body["User"] = self.user
        if self.working_dir:
            body["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            body["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            body["Labels"] = dict(self.labels)
        return body


@dataclass(frozen=True)
class Image:
    """One platform's image: its manifest, config and layers, ready to push."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def platform(self) -> dict[str, str]:
        found = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            found["variant"] = self.variant
        return found


@dataclass(frozen=True)
class Index:
    """An OCI index or Docker manifest list over several platform images."""

    manifest: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def build_image(
    layers: Sequence[Blob],
    *,
    config: ContainerConfig | None = None,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str = "",
    format: ManifestFormat = "oci",
    created: str = EPOCH,
) -> Image:
    """Config and manifest for `layers` (built by build_layer, so their diff_ids are known)."""
    if any(layer.diff_id is None for layer in layers):
        raise ValueError("every layer needs its diff_id (build it with build_layer)")
    config_body: dict[str, Any] = {
        "created": created,
        "architecture": architecture,
        "os": os,
        "config": (config or ContainerConfig()).to_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": created, "created_by": f"tessera build: layer {number}"}
            for number in range(1, len(layers) + 1)
        ],
    }
    if variant:
        config_body["variant"] = variant
    docker = format == "docker"
    config_blob = Blob.of(DOCKER_CONFIG if docker else OCI_CONFIG, _json_bytes(config_body))
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest_body = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor(_layer_type(layer, docker)) for layer in layers],
    }
    manifest = Blob.of(manifest_type, _json_bytes(manifest_body))
    return Image(manifest, config_blob, tuple(layers), os, architecture, variant)


def _layer_type(layer: Blob, docker: bool) -> str:
    # Docker schema 2 has its own name for gzip layers only; zstd and plain keep OCI's names,
    # as Docker itself writes them.
    if docker and layer.media_type == _LAYER_TYPES["gzip"]:
        return DOCKER_LAYER_GZIP
    return layer.media_type


def build_index(images: Sequence[Image], *, format: ManifestFormat = "oci") -> Index:
    """An index whose entries carry each image's platform, in the given order."""
    media_type = DOCKER_LIST if format == "docker" else OCI_INDEX
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {**image.manifest.descriptor(), "platform": image.platform()} for image in images
        ],
    }
    return Index(Blob.of(media_type, _json_bytes(body)), tuple(images))


class BusyboxUnavailable(RuntimeError):
    """No statically linked busybox on this machine (Debian: apt-get install busybox-static)."""


BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def find_busybox(path: Path | None = None) -> Path:
    """The host's busybox, checked to be statically linked (it must run in any root)."""
    candidates = [path] if path is not None else [Path(p) for p in BUSYBOX_CANDIDATES]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if not is_static_elf(candidate):
                raise BusyboxUnavailable(
                    f"{candidate} is dynamically linked: install busybox-static "
                    "(apt-get install busybox-static)"
                )
            return candidate
    raise BusyboxUnavailable(
        f"no busybox at {', '.join(map(str, candidates))}: apt-get install busybox-static"
    )


def is_static_elf(path: Path) -> bool:
    """An ELF file without a PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF":
            return False
        wide = header[4] == 2
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        if wide:
            offset = int.from_bytes(header[32:40], order)
            size, count = int.from_bytes(header[54:56], order), int.from_bytes(header[56:58], order)
        else:
            offset = int.from_bytes(header[28:32], order)
            size, count = int.from_bytes(header[42:44], order), int.from_bytes(header[44:46], order)
        handle.seek(offset)
        table = handle.read(size * count)
    pt_interp = 3
    return all(
        int.from_bytes(table[i * size : i * size + 4], order) != pt_interp for i in range(count)
    )


def busybox_applets(busybox: Path) -> list[str]:
    """Where each applet lives (`bin/sh`, `usr/bin/wget`, …), as the binary itself says."""
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, timeout=10
    )
    if listing.returncode == 0 and listing.stdout.strip():
        return sorted({line.strip() for line in listing.stdout.split() if line.strip()})
    names = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    return sorted(f"bin/{name}" for name in names)


PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def busybox_entries(busybox: Path | None = None) -> list[Entry]:
    """A minimal root filesystem: the static busybox at /bin/busybox, a symlink per applet,
    /etc/passwd and /etc/group with root and nobody, /tmp with mode 1777."""
    binary = find_busybox(busybox)
    applets = [path for path in busybox_applets(binary) if path != "bin/busybox"]
    dirs = {"bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "var"}
    dirs |= {str(Path(path).parent) for path in applets}
    modes = {"root": 0o700, "tmp": 0o1777}
    entries = [directory(name, mode=modes.get(name, 0o755)) for name in sorted(dirs)]
    entries.append(file("bin/busybox", binary.read_bytes(), mode=0o755))
    entries += [symlink(path, "/bin/busybox") for path in applets]
    entries.append(file("etc/passwd", PASSWD.encode()))
    entries.append(file("etc/group", GROUP.encode()))
    return entries


def busybox_rootfs(dest: Path, busybox: Path | None = None) -> Path:
    """busybox_entries() written below `dest` (created if missing); returns `dest`."""
    write_entries(busybox_entries(busybox), dest)
    return dest


def write_entries(entries: Iterable[Entry], dest: Path) -> None:
    """Trusted entries (files, directories, symlinks, hard links) made real below `dest`.
    Not for layers from elsewhere: that is tessera.agent.images.unpack's job."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        path = dest / entry.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            path.mkdir(exist_ok=True)
        elif entry.kind == "file":
            path.write_bytes(entry.source.read_bytes() if entry.source else entry.data)
        elif entry.kind == "symlink":
            path.symlink_to(entry.target)
            continue
        elif entry.kind == "hardlink":
            os.link(dest / entry.target.lstrip("/"), path)
            continue
        else:
            raise ValueError(f"write_entries does not make {entry.kind} entries ({entry.path})")
        path.chmod(entry.mode)
