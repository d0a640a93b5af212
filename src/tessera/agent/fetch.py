"""The fetcher: a task's `fetch` URIs downloaded into its sandbox before it starts.

Like the Mesos fetcher: `http://` and `https://` (httpx, redirects followed), `file://` and
absolute paths; the file is named after the URI's last path component (or `destPath`).
`executable` makes it mode 0755; otherwise `extract` unpacks archives (.tar, .tar.gz, .tgz,
.tar.bz2, .tbz2, .tar.xz, .txz, .zip) into the sandbox and keeps the archive; other files
stay as downloaded. `cache` is accepted and ignored: every launch downloads afresh.

Safety: each URI is capped in time and in bytes (downloaded, copied and unpacked); an
archive with a member that would land outside the sandbox (absolute path, `..`, a link
pointing out) is refused whole, and tar members keep no set-id bits nor device files (the
`data` filter). Local files are read as the task's user (through `setpriv` when the agent
is root), so a task can fetch only what its user could read itself; everything fetched is
then owned by that user. Any failure raises FetchFailed, naming the URI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from tessera.agent.disk import describe_os_error
from tessera.agent.exec_spawn import (
    ROOT_WRAPPER_ENV,
    RunAs,
    SwitchTools,
    command_line,
    current_user,
    lookup_user,
)
from tessera.agent.exec_types import LaunchFailed, LaunchSpec
from tessera.model.health import FetchUri

_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Per URI: how long fetching (and unpacking) may take and how many bytes it may write."""

    seconds: float = 300.0
    max_bytes: int = 2 << 30
    max_extracted_bytes: int = 8 << 30
    max_members: int = 100_000


class FetchFailed(Exception):
    """`uri` is None when nothing could be fetched at all (e.g. the task's user is unknown)."""

    def __init__(self, uri: str | None, error: str) -> None:
        super().__init__(f"fetching {uri} failed: {error}" if uri else f"cannot fetch: {error}")
        self.uri = uri
        self.error = error


async def fetch_all(
    entries: Sequence[FetchUri],
    sandbox: Path,
    *,
    user: str | None = None,
    limits: FetchLimits | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Path]:
    """Fetch every entry into `sandbox` (created if missing), in order; returns the files.

    `user`: who the task runs as (local files are read as them, results chowned to them);
    None means the agent's own user.
    """
    limits = limits or FetchLimits()
    run_as = _run_as(user)
    try:
        sandbox.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as error:  # e.g. a full disk: no block or inode for the directory
        raise FetchFailed(None, f"cannot create the sandbox: {_describe(error)}") from None
    fetched = []
    async with httpx.AsyncClient(follow_redirects=True, transport=transport) as client:
        for entry in entries:
            try:
                async with asyncio.timeout(limits.seconds):
                    fetched.append(await _fetch_one(entry, sandbox, run_as, limits, client))
            except TimeoutError:
                raise FetchFailed(entry.uri, f"took longer than {limits.seconds:g}s") from None
    if run_as is not None and run_as.uid != os.geteuid():
        _chown_tree(sandbox, run_as)
    return fetched


async def _fetch_one(
    entry: FetchUri,
    sandbox: Path,
    run_as: RunAs | None,
    limits: FetchLimits,
    client: httpx.AsyncClient,
) -> Path:
    target = sandbox / _file_name(entry)
    partial = target.with_name(f".{target.name}.partial")
    scheme = urlsplit(entry.uri).scheme.lower()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if scheme in ("http", "https"):
            await _download(client, entry.uri, partial, limits.max_bytes)
        elif scheme == "file" or entry.uri.startswith("/"):
            source = _local_path(entry.uri)
            await _copy_local(entry.uri, source, partial, run_as, limits.max_bytes)
        else:
            raise FetchFailed(entry.uri, f"unsupported URI scheme {scheme!r}")
        os.replace(partial, target)
    except FetchFailed:
        raise
    except (OSError, httpx.HTTPError) as error:
        raise FetchFailed(entry.uri, _describe(error)) from None
    finally:
        partial.unlink(missing_ok=True)
    if entry.executable:
        target.chmod(0o755)
    elif entry.extract and entry.is_archive:
        try:
            await asyncio.to_thread(extract_archive, target, sandbox, limits)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, UnsafeArchive) as error:
            raise FetchFailed(entry.uri, f"cannot extract: {_describe(error)}") from None
    return target


def _file_name(entry: FetchUri) -> str:
    if entry.dest_path:
        return entry.dest_path
    path = urlsplit(entry.uri).path if "://" in entry.uri else entry.uri
    name = posixpath.basename(unquote(path).rstrip("/"))
    return name if name not in ("", ".", "..") else "download"


def _local_path(uri: str) -> str:
    if uri.startswith("/"):
        return uri
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise FetchFailed(uri, f"file URIs must be local, not on {parts.netloc!r}")
    return unquote(parts.path)


async def _download(client: httpx.AsyncClient, uri: str, partial: Path, max_bytes: int) -> None:
    async with client.stream("GET", uri) as response:
        if response.status_code != 200:
            raise FetchFailed(uri, f"HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchFailed(uri, f"larger than the {max_bytes} byte limit")
        written = 0
        with open(partial, "wb") as handle:
            async for chunk in response.aiter_bytes(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise FetchFailed(uri, f"larger than the {max_bytes} byte limit")
                handle.write(chunk)


async def _copy_local(
    uri: str, source: str, partial: Path, run_as: RunAs | None, max_bytes: int
) -> None:
    """Read `source` through `cat` running as the task's user: their permissions apply."""
    argv, env = _reader_argv(uri, source, run_as)
    with open(partial, "wb") as handle:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            written = 0
            while chunk := await process.stdout.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise FetchFailed(uri, f"larger than the {max_bytes} byte limit")
                handle.write(chunk)
            errors = (await process.stderr.read(4096)).decode(errors="replace").strip()
            code = await process.wait()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    if code != 0:
        reason = errors.splitlines()[-1] if errors else f"cat exited {code}"
        raise FetchFailed(uri, reason.removeprefix("cat: ").removeprefix(f"{source}: "))


def _reader_argv(uri: str, source: str, run_as: RunAs | None) -> tuple[list[str], dict[str, str]]:
    env = {"PATH": ROOT_WRAPPER_ENV["PATH"], "LC_ALL": "C"}
    me = current_user()
    spec = LaunchSpec(task_id="fetch", args=("cat", "--", source))
    if run_as is None or run_as.uid == me.uid:
        return command_line(spec, me, env, None), env
    setpriv, env_tool = shutil.which("setpriv"), shutil.which("env")
    if not (setpriv and env_tool):
        raise FetchFailed(uri, f"cannot read as {run_as.name!r}: setpriv is not installed")
    return command_line(spec, run_as, env, SwitchTools(setpriv, env_tool)), dict(ROOT_WRAPPER_ENV)


def _run_as(user: str | None) -> RunAs | None:
    if user is None or os.geteuid() != 0:
        return None
    try:
        return lookup_user(user)
    except LaunchFailed as error:
        raise FetchFailed(None, str(error)) from None


def _chown_tree(root: Path, run_as: RunAs) -> None:
    os.chown(root, run_as.uid, run_as.gid)
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            os.lchown(os.path.join(directory, name), run_as.uid, run_as.gid)


# ---- archives ---------------------------------------------------------------------------------


class UnsafeArchive(Exception):
    """An archive member would land outside the sandbox, or the archive is too big."""


def extract_archive(archive: Path, destination: Path, limits: FetchLimits | None = None) -> None:
    """Unpack a tar (any compression) or zip into `destination`, refusing the whole archive
    when any member would escape it or the archive exceeds the limits."""
    limits = limits or FetchLimits()
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, destination, limits)
    else:
        _extract_tar(archive, destination, limits)


def _extract_tar(archive: Path, destination: Path, limits: FetchLimits) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        _check_sizes(archive, len(members), sum(m.size for m in members), limits)
        for member in members:
            _check_member(member.name, archive)
            if member.issym() or member.islnk():
                target = member.linkname
                if member.issym():
                    target = posixpath.join(posixpath.dirname(member.name), target)
                _check_member(target, archive, f"{member.name} -> {member.linkname}")
        tar.extractall(destination, members=members, filter="data")


def _extract_zip(archive: Path, destination: Path, limits: FetchLimits) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        _check_sizes(archive, len(infos), sum(i.file_size for i in infos), limits)
        for info in infos:
            _check_member(info.filename, archive)
        for info in infos:
            extracted = bundle.extract(info, destination)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(extracted, mode & ~(stat.S_ISUID | stat.S_ISGID))


def _check_sizes(archive: Path, members: int, size: int, limits: FetchLimits) -> None:
    if members > limits.max_members:
        raise UnsafeArchive(f"{archive.name}: more than {limits.max_members} members")
    if size > limits.max_extracted_bytes:
        raise UnsafeArchive(
            f"{archive.name}: unpacks to more than {limits.max_extracted_bytes} bytes"
        )


def _check_member(name: str, archive: Path, shown: str | None = None) -> None:
    normalized = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or normalized == ".." or normalized.startswith("../"):
        raise UnsafeArchive(f"{archive.name}: member {shown or name!r} points outside the sandbox")
    if len(name) > 1 and name[1] == ":":  # a Windows drive
        raise UnsafeArchive(f"{archive.name}: member {shown or name!r} is an absolute path")


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return describe_os_error(error)
    return str(error) or type(error).__name__
