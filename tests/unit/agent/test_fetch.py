"""The fetcher: http from a loopback stub, file URIs and paths, archives (and hostile ones)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tessera.agent.fetch import (
    FetchFailed,
    FetchLimits,
    UnsafeArchive,
    extract_archive,
    fetch_all,
)
from tessera.model.health import FetchUri
from tessera.testing.http_stub import HttpStub


@pytest.fixture
async def stub() -> AsyncIterator[HttpStub]:
    server = await HttpStub(body=b"#!/bin/sh\necho hi\n").start()
    yield server
    await server.stop()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


async def test_http_download_executable(tmp_path: Path, stub: HttpStub) -> None:
    sandbox = tmp_path / "sandbox"
    entry = FetchUri(f"{stub.url}/bin/run.sh?version=2", executable=True)
    (fetched,) = await fetch_all([entry], sandbox)
    assert fetched == sandbox / "run.sh"
    assert fetched.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(fetched.stat().st_mode) == 0o755
    assert stub.requests == ["GET /bin/run.sh?version=2 HTTP/1.1"]
    assert sorted(p.name for p in sandbox.iterdir()) == ["run.sh"]  # no partial file left


async def test_http_error_names_the_uri(tmp_path: Path, stub: HttpStub) -> None:
    stub.status = 404
    with pytest.raises(FetchFailed) as caught:
        await fetch_all([FetchUri(f"{stub.url}/missing.tgz")], tmp_path)
    assert str(caught.value) == f"fetching {stub.url}/missing.tgz failed: HTTP 404"
    assert not (tmp_path / "missing.tgz").exists()


async def test_size_and_time_caps(tmp_path: Path, stub: HttpStub) -> None:
    stub.body = b"x" * 10_000
    with pytest.raises(FetchFailed, match="larger than the 1000 byte limit"):
        await fetch_all([FetchUri(f"{stub.url}/big")], tmp_path, limits=FetchLimits(max_bytes=1000))

    def endless(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            while True:
                yield b"y" * 65536

        return httpx.Response(200, content=body())

    with pytest.raises(FetchFailed, match="larger than"):
        await fetch_all(
            [FetchUri("http://example.invalid/stream")],
            tmp_path,
            limits=FetchLimits(max_bytes=1 << 20),
            transport=httpx.MockTransport(endless),
        )
    stub.delay = 5
    with pytest.raises(FetchFailed, match=r"took longer than 0\.3s"):
        await fetch_all([FetchUri(f"{stub.url}/slow")], tmp_path, limits=FetchLimits(seconds=0.3))
    assert list(tmp_path.glob(".*partial")) == []


async def test_file_uri_and_plain_path(tmp_path: Path) -> None:
    source = tmp_path / "source dir"
    source.mkdir()
    (source / "config.json").write_text('{"a": 1}')
    sandbox = tmp_path / "sandbox"
    entries = [
        FetchUri(f"file://{source}/config.json".replace(" ", "%20")),
        FetchUri(str(source / "config.json"), dest_path="conf/copy.json"),
    ]
    fetched = await fetch_all(entries, sandbox)
    assert fetched == [sandbox / "config.json", sandbox / "conf" / "copy.json"]
    assert all(path.read_text() == '{"a": 1}' for path in fetched)


async def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as caught:
        await fetch_all([FetchUri("file:///no/such/file")], tmp_path)
    assert str(caught.value) == "fetching file:///no/such/file failed: No such file or directory"
    assert caught.value.uri == "file:///no/such/file"


async def test_directories_that_cannot_be_made_fail_the_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never an OSError out of fetch_all: the task would hang in TASK_STAGING."""
    source = tmp_path / "file"
    source.write_text("x")
    real_mkdir = Path.mkdir

    def mkdir_on_full_disk(self: Path, *args: object, **kwargs: object) -> None:
        if self.name in ("sandbox", "sub"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir_on_full_disk)
    with pytest.raises(FetchFailed, match="cannot fetch: cannot create the sandbox: the agent's"):
        await fetch_all([FetchUri(str(source))], tmp_path / "sandbox")
    with pytest.raises(FetchFailed, match=r"failed: the agent's disk is full \(No space left"):
        await fetch_all([FetchUri(str(source), dest_path="sub/file")], tmp_path / "box")


async def test_local_files_are_read_as_the_task_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a root agent to switch users")
    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # every parent traversable by nobody
    try:
        shared.chmod(0o755)
        secret = shared / "secret"
        secret.write_text("root only")
        secret.chmod(0o600)
        with pytest.raises(FetchFailed, match=r"failed: Permission denied$"):
            await fetch_all([FetchUri(str(secret))], tmp_path / "sandbox", user="nobody")
        public = shared / "public"
        public.write_text("anyone")
        public.chmod(0o644)
        (fetched,) = await fetch_all([FetchUri(str(public))], tmp_path / "sandbox", user="nobody")
    finally:
        shutil.rmtree(shared)
    assert fetched.read_text() == "anyone"
    assert fetched.stat().st_uid == (tmp_path / "sandbox").stat().st_uid != 0


@pytest.mark.parametrize(
    ("name", "mode"),
    [("app.tar", "w"), ("app.tar.gz", "w:gz"), ("app.tgz", "w:gz"), ("app.tar.bz2", "w:bz2"),
     ("app.tar.xz", "w:xz")],
)  # fmt: skip
async def test_tar_archives_are_extracted(tmp_path: Path, name: str, mode: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(tar_bytes({"app/run.sh": b"echo run", "README": b"read me"}, mode))
    sandbox = tmp_path / "sandbox"
    await fetch_all([FetchUri(str(archive))], sandbox)
    assert (sandbox / "app" / "run.sh").read_bytes() == b"echo run"
    assert (sandbox / "README").read_bytes() == b"read me"
    assert (sandbox / name).exists()  # the archive stays, as with Mesos


async def test_zip_extracted_and_extract_false_keeps_it_packed(tmp_path: Path) -> None:
    archive = tmp_path / "site.zip"
    archive.write_bytes(zip_bytes({"site/index.html": b"<h1>hi</h1>"}))
    sandbox = tmp_path / "sandbox"
    await fetch_all([FetchUri(f"file://{archive}")], sandbox)
    assert (sandbox / "site" / "index.html").read_bytes() == b"<h1>hi</h1>"
    packed = tmp_path / "packed"
    await fetch_all([FetchUri(str(archive), extract=False)], packed)
    assert sorted(p.name for p in packed.iterdir()) == ["site.zip"]


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/evil.txt", "a/../../escape.txt"])
async def test_path_traversal_refuses_the_whole_archive(tmp_path: Path, member: str) -> None:
    for name, data in [
        ("evil.tar.gz", tar_bytes({"fine.txt": b"ok", member: b"pwned"})),
        ("evil.zip", zip_bytes({"fine.txt": b"ok", member: b"pwned"})),
    ]:
        archive = tmp_path / name
        archive.write_bytes(data)
        sandbox = tmp_path / f"sandbox-{name}"
        with pytest.raises(FetchFailed, match="points outside the sandbox"):
            await fetch_all([FetchUri(str(archive))], sandbox)
        assert not (sandbox / "fine.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/etc/evil.txt").exists()


def test_links_pointing_out_are_refused(tmp_path: Path) -> None:
    for kind, target in [(tarfile.SYMTYPE, "../../etc/passwd"), (tarfile.SYMTYPE, "/etc/passwd"),
                         (tarfile.LNKTYPE, "../outside")]:  # fmt: skip
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            link = tarfile.TarInfo("link")
            link.type = kind
            link.linkname = target
            tar.addfile(link)
        archive = tmp_path / "links.tar"
        archive.write_bytes(buffer.getvalue())
        with pytest.raises(UnsafeArchive, match="points outside"):
            extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "link").exists()


def test_archive_size_limits(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(tar_bytes({"zeros": bytes(100_000)}))
    with pytest.raises(UnsafeArchive, match="unpacks to more than"):
        extract_archive(archive, tmp_path / "out", FetchLimits(max_extracted_bytes=50_000))
    with pytest.raises(UnsafeArchive, match="more than 0 members"):
        extract_archive(archive, tmp_path / "out", FetchLimits(max_members=0))


async def test_unsupported_scheme_and_corrupt_archive(tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="unsupported URI scheme 'ftp'"):
        await fetch_all([FetchUri("ftp://host/file")], tmp_path)
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"not a tarball at all")
    with pytest.raises(FetchFailed, match="cannot extract"):
        await fetch_all([FetchUri(str(broken))], tmp_path / "sandbox")
