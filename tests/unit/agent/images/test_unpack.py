"""The layer extractor on synthetic layers: whiteouts, opaque dirs, links, set-id bits, xattrs,
compression, diff_ids, and every way an entry could try to write outside its directory."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from tessera.agent.images import build as img
from tessera.agent.images.unpack import (
    OPAQUE_XATTR,
    LayerError,
    compression_of,
    open_layer,
    sniff_compression,
    unpack_layer,
)

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
PLAIN = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# A capability set (cap_net_bind_service=ep), as `setcap` writes it: binary, with NUL bytes.
CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: lchown, mknod (whiteouts, devices) and trusted.* xattrs")


def layer_file(
    tmp_path: Path, entries: Sequence[img.Entry], compression: img.Compression = "gzip"
) -> tuple[Path, img.Blob]:
    blob = img.build_layer(entries, compression=compression)
    path = tmp_path / f"layer-{blob.digest[7:19]}"
    assert blob.data is not None
    path.write_bytes(blob.data)
    return path, blob


def unpack(
    tmp_path: Path, entries: Sequence[img.Entry], compression: img.Compression = "gzip"
) -> Path:
    path, blob = layer_file(tmp_path, entries, compression)
    dest = tmp_path / "fs"
    unpack_layer(path, blob.media_type, dest, diff_id=blob.diff_id)
    return dest


def refused(tmp_path: Path, entries: Sequence[img.Entry], match: str) -> Path:
    path, blob = layer_file(tmp_path, entries)
    dest = tmp_path / "fs"
    with pytest.raises(LayerError, match=match):
        unpack_layer(path, blob.media_type, dest)
    return dest


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the layer's: nothing may ever appear in it."""
    made = tmp_path / "outside"
    made.mkdir()
    return made


# --- escapes -------------------------------------------------------------------------------


def test_a_symlink_made_by_the_layer_is_never_written_through(
    tmp_path: Path, outside: Path
) -> None:
    entries = [img.symlink("pwn", str(outside)), img.file("pwn/escaped.txt", b"gotcha")]
    refused(tmp_path, entries, "symlink")
    assert list(outside.iterdir()) == []


def test_a_relative_symlink_escape_is_refused_too(tmp_path: Path, outside: Path) -> None:
    entries = [
        img.directory("a"),
        img.symlink("a/up", "../../outside"),
        img.file("a/up/escaped.txt", b"gotcha"),
    ]
    refused(tmp_path, entries, "symlink")
    assert list(outside.iterdir()) == []


def test_a_symlinked_directory_deep_in_the_path_is_refused(tmp_path: Path, outside: Path) -> None:
    entries = [img.directory("a/b"), img.symlink("a/b/c", str(outside)), img.file("a/b/c/d/e")]
    refused(tmp_path, entries, "a/b/c is a symlink")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["../../escaped.txt", "a/../../escaped.txt", "/../escaped.txt"])
def test_dot_dot_components_are_refused(tmp_path: Path, name: str) -> None:
    refused(tmp_path, [img.file(name, b"gotcha")], r"'\.\.' component")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_a_path_through_a_regular_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [img.file("f", b"x"), img.file("f/inside")], "f is not a directory")


def test_a_hard_link_escaping_the_layer_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [img.hardlink("shadow", "../../../../etc/shadow")], r"'\.\.' component")
    assert not (tmp_path / "fs" / "shadow").exists()


def test_an_absolute_hard_link_to_a_file_not_in_the_layer_is_refused(tmp_path: Path) -> None:
    dest = refused(tmp_path, [img.hardlink("passwd", "/etc/passwd")], "not a file of this layer")
    assert not (dest / "passwd").exists()


def test_a_hard_link_through_a_symlink_of_the_layer_is_refused(
    tmp_path: Path, outside: Path
) -> None:
    (outside / "secret").write_text("host secret")
    entries = [img.symlink("out", str(outside)), img.hardlink("stolen", "out/secret")]
    refused(tmp_path, entries, "not a file of this layer")
    assert (outside / "secret").stat().st_nlink == 1


def test_absolute_names_are_relative_to_the_layer_root(tmp_path: Path) -> None:
    dest = unpack(tmp_path, [img.file("/etc/abs.txt", b"inside"), img.file("./etc/dot.txt")])
    assert (dest / "etc" / "abs.txt").read_bytes() == b"inside"
    assert (dest / "etc" / "dot.txt").exists()


def test_symlinks_keep_absolute_targets_and_are_not_followed(tmp_path: Path) -> None:
    entries = [img.symlink("etc/motd-link", "/etc/hostname"), img.symlink("bin/sh", "busybox")]
    dest = unpack(tmp_path, entries)
    assert os.readlink(dest / "etc" / "motd-link") == "/etc/hostname"
    assert os.readlink(dest / "bin" / "sh") == "busybox"


# --- links, modes, owners, xattrs ------------------------------------------------------------


def test_hard_links_within_the_layer_share_the_inode(tmp_path: Path) -> None:
    entries = [
        img.file("etc/l3a", b"same", mode=0o640),
        img.hardlink("etc/l3b", "etc/l3a"),
        img.hardlink("other/l3c", "/etc/l3a"),  # an absolute target names the layer's file
    ]
    dest = unpack(tmp_path, entries)
    first = (dest / "etc" / "l3a").stat()
    assert (dest / "etc" / "l3b").stat().st_ino == first.st_ino
    assert (dest / "other" / "l3c").stat().st_ino == first.st_ino
    assert first.st_nlink == 3
    assert stat.S_IMODE(first.st_mode) == 0o640


def test_setuid_capabilities_xattrs_and_owners_are_kept(tmp_path: Path) -> None:
    needs_root()
    entries = [
        img.file(
            "bin/ping",
            b"\x7fELF...",
            mode=0o4755,
            uid=1000,
            gid=1000,
            xattrs={"security.capability": CAPABILITY, "user.origin": b"layer"},
        ),
        img.directory("shared", mode=0o3775, uid=1000, gid=50),
        img.directory("tmp", mode=0o1777),
        img.symlink("home/link", "/nowhere", uid=1001, gid=1001),
    ]
    dest = unpack(tmp_path, entries)
    ping = (dest / "bin" / "ping").stat()
    assert stat.S_IMODE(ping.st_mode) == 0o4755  # chown cleared it, then it was set again
    assert (ping.st_uid, ping.st_gid) == (1000, 1000)
    assert os.getxattr(dest / "bin" / "ping", "security.capability") == CAPABILITY
    assert os.getxattr(dest / "bin" / "ping", "user.origin") == b"layer"
    shared = (dest / "shared").stat()
    assert (stat.S_IMODE(shared.st_mode), shared.st_uid, shared.st_gid) == (0o3775, 1000, 50)
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    link = (dest / "home" / "link").lstat()
    assert (link.st_uid, link.st_gid) == (1001, 1001)


def test_mtimes_are_kept_for_files_and_directories(tmp_path: Path) -> None:
    entries = [img.directory("d", mtime=1_000_000), img.file("d/f", b"x", mtime=2_000_000)]
    dest = unpack(tmp_path, entries)
    assert (dest / "d" / "f").stat().st_mtime == 2_000_000
    assert (dest / "d").stat().st_mtime == 1_000_000  # not changed by adding d/f


def test_implicit_parents_are_made_0755(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        dest = unpack(tmp_path, [img.file("deep/er/file")])
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / "deep" / "er").stat().st_mode) == 0o755


def test_a_directory_listed_twice_keeps_its_children(tmp_path: Path) -> None:
    entries = [img.directory("d"), img.file("d/kept"), img.directory("d", mode=0o700)]
    dest = unpack(tmp_path, entries)
    assert (dest / "d" / "kept").exists()
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o700


def test_fifos_and_devices(tmp_path: Path) -> None:
    needs_root()
    entries = [img.fifo("run/pipe", mode=0o620), img.device("dev/null", 1, 3, mode=0o666)]
    dest = unpack(tmp_path, entries)
    pipe = (dest / "run" / "pipe").lstat()
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    null = (dest / "dev" / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)


def test_overlay_xattrs_from_the_tar_are_dropped(tmp_path: Path) -> None:
    needs_root()
    entries = [img.directory("d", xattrs={"trusted.overlay.redirect": b"/etc"})]
    dest = unpack(tmp_path, entries)
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "d")


# --- whiteouts -----------------------------------------------------------------------------


def test_a_whiteout_becomes_a_0_0_character_device(tmp_path: Path) -> None:
    needs_root()
    dest = unpack(tmp_path, [img.directory("etc"), img.whiteout("etc/secret.txt")])
    made = (dest / "etc" / "secret.txt").lstat()
    assert stat.S_ISCHR(made.st_mode)
    assert made.st_rdev == os.makedev(0, 0)
    assert sorted(os.listdir(dest / "etc")) == ["secret.txt"]  # no `.wh.` file left


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_an_opaque_dir_keeps_the_files_its_own_layer_adds(
    tmp_path: Path, marker_first: bool
) -> None:
    needs_root()
    new = [img.file("opt/olddir/new", b"layer 3"), img.directory("opt/olddir/sub")]
    marker = [img.opaque("opt/olddir")]
    dest = unpack(
        tmp_path, [img.directory("opt/olddir"), *(marker + new if marker_first else new + marker)]
    )
    assert os.getxattr(dest / "opt" / "olddir", OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(dest / "opt" / "olddir")) == ["new", "sub"]


def test_a_whiteout_never_removes_a_file_of_its_own_layer(tmp_path: Path) -> None:
    needs_root()
    dest = unpack(tmp_path, [img.file("a/x", b"mine"), img.whiteout("a/x")])
    assert (dest / "a" / "x").read_bytes() == b"mine"


def test_a_file_after_its_whiteout_replaces_it(tmp_path: Path) -> None:
    needs_root()
    dest = unpack(tmp_path, [img.whiteout("a/x"), img.file("a/x", b"new")])
    assert (dest / "a" / "x").read_bytes() == b"new"


def test_aufs_metadata_is_skipped(tmp_path: Path) -> None:
    dest = unpack(tmp_path, [img.file(".wh..wh.plnk/123.456"), img.file(".wh..wh.aufs")])
    assert list(dest.iterdir()) == []


def test_a_whiteout_naming_nothing_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, [img.file("a/.wh.")], "names nothing")


# --- compression, digests, destination -------------------------------------------------------


def test_media_types_choose_the_decompressor() -> None:
    assert compression_of(GZIP) == "gzip"
    assert compression_of(DOCKER_GZIP) == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") == "zstd"
    assert compression_of(ZSTD) == "zstd"
    assert compression_of(PLAIN) == "none"
    assert compression_of("application/octet-stream") is None
    assert compression_of("") is None
    assert sniff_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert sniff_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert sniff_compression(b"etc/") == "none"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("labelled", [True, False], ids=["media-type", "magic-bytes"])
def test_gzip_zstd_and_plain_layers(
    tmp_path: Path, compression: img.Compression, labelled: bool
) -> None:
    path, blob = layer_file(tmp_path, [img.file("etc/hello", b"hello " * 1000)], compression)
    media_type = blob.media_type if labelled else "application/octet-stream"
    with open_layer(path, media_type) as reader:
        assert hashlib.sha256(reader.read()).hexdigest() == blob.diff_id.split(":")[1]  # type: ignore[union-attr]
    unpack_layer(path, media_type, tmp_path / "fs", diff_id=blob.diff_id)
    assert (tmp_path / "fs" / "etc" / "hello").read_bytes() == b"hello " * 1000


def test_a_docker_gzip_layer(tmp_path: Path) -> None:
    path, blob = layer_file(tmp_path, [img.file("x", b"docker")])
    unpack_layer(path, DOCKER_GZIP, tmp_path / "fs", diff_id=blob.diff_id)
    assert (tmp_path / "fs" / "x").read_bytes() == b"docker"


def test_several_gzip_members_are_one_stream(tmp_path: Path) -> None:
    blob = img.build_layer([img.file("big", os.urandom(300_000))], compression="none")
    assert blob.data is not None
    half = len(blob.data) // 2
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(blob.data[:half]) + gzip.compress(blob.data[half:]))
    unpack_layer(path, GZIP, tmp_path / "fs", diff_id=blob.diff_id)
    assert (tmp_path / "fs" / "big").stat().st_size == 300_000


def test_a_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    path, blob = layer_file(tmp_path, [img.file("etc/hello", b"hello")], "zstd")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(LayerError, match="diff_id mismatch"):
        unpack_layer(path, blob.media_type, tmp_path / "fs", diff_id=wrong)


def test_the_diff_id_covers_the_whole_stream_including_padding(tmp_path: Path) -> None:
    path, blob = layer_file(tmp_path, [img.file("f", b"x")], "none")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == blob.diff_id.split(":")[1]  # type: ignore[union-attr]
    unpack_layer(path, PLAIN, tmp_path / "fs", diff_id=blob.diff_id)


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_gzip_is_a_layer_error(tmp_path: Path, damage: str) -> None:
    path, _ = layer_file(tmp_path, [img.file("f", os.urandom(200_000))])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:])
    with pytest.raises(LayerError, match="gzip"):
        unpack_layer(path, GZIP, tmp_path / "fs")


def test_gzip_labelled_data_that_is_not_gzip(tmp_path: Path) -> None:
    path, _ = layer_file(tmp_path, [img.file("f")], "none")
    with pytest.raises(LayerError, match="not gzip"):
        unpack_layer(path, GZIP, tmp_path / "fs")


def test_a_layer_that_is_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(LayerError, match="not a valid tar"):
        unpack_layer(path, PLAIN, tmp_path / "fs")


def test_the_destination_must_be_empty(tmp_path: Path) -> None:
    path, blob = layer_file(tmp_path, [img.file("f")])
    dest = tmp_path / "fs"
    dest.mkdir()
    unpack_layer(path, blob.media_type, dest)  # an empty dir is fine
    with pytest.raises(FileExistsError):
        unpack_layer(path, blob.media_type, dest)


def test_unsupported_entry_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("contiguous")
        info.type = b"V"  # a GNU volume header: nothing a layer should hold
        tar.addfile(info)
    with pytest.raises(LayerError):
        unpack_layer(path, PLAIN, tmp_path / "fs")


def test_big_files_span_many_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    entries = [img.file("big", data), img.file("small", b"after"), img.file("big2", data[:5000])]
    dest = unpack(tmp_path, entries, "zstd")
    assert (dest / "big").read_bytes() == data
    assert (dest / "small").read_bytes() == b"after"
    assert (dest / "big2").read_bytes() == data[:5000]


@pytest.mark.parametrize("format", ["gnu", "posix"])
def test_sparse_files_from_gnu_tar(tmp_path: Path, format: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed: it writes the sparse entries")
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "holes", "wb") as handle:
        handle.seek(5 * 1024 * 1024)
        handle.write(b"end")
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={format}", "--sparse", "-cf", str(archive), "-C", str(source), "holes"],
        check=True,
    )
    unpack_layer(archive, PLAIN, tmp_path / "fs")
    assert (tmp_path / "fs" / "holes").read_bytes() == (source / "holes").read_bytes()


def test_a_refused_layer_leaves_no_decoding_thread(tmp_path: Path, outside: Path) -> None:
    before = threading.active_count()
    entries = [img.symlink("pwn", str(outside)), *(img.file(f"pwn/{n}") for n in range(50))]
    refused(tmp_path, entries, "symlink")
    assert threading.active_count() == before


def test_a_later_entry_replaces_a_directory_of_the_same_layer(tmp_path: Path) -> None:
    entries = [
        img.file("a/b/c", b"first"),
        img.file("a/x", b"sibling"),
        img.file("a/b", b"now a file"),  # replaces the directory a/b and what is in it
        img.file("a/y", b"written after"),
    ]
    dest = unpack(tmp_path, entries)
    assert (dest / "a" / "b").read_bytes() == b"now a file"
    assert sorted(os.listdir(dest / "a")) == ["b", "x", "y"]


def test_a_directory_replaced_by_a_symlink_cannot_be_written_through(
    tmp_path: Path, outside: Path
) -> None:
    entries = [img.file("a/f"), img.symlink("a", str(outside)), img.file("a/g")]
    refused(tmp_path, entries, "a is a symlink")
    assert list(outside.iterdir()) == []
