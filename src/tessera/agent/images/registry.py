"""The distribution API client: manifests and blobs of one repository over httpx, with
authentication, size and digest checks, blobs streamed to disk, and every failure turned
into a PullFailed that names the image and the cause.

A blob stalls when no byte comes for `stall_timeout` seconds (httpx's read timeout) and also
when bytes only trickle: less than `PROGRESS_BYTES` in `stall_timeout` seconds counts as no
progress, since "any byte is progress" lets a pull hang for hours (containerd #11650). The
overall deadline is the caller's (`asyncio.timeout` around the whole pull).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx

from tessera.agent.disk import write_all
from tessera.agent.images.auth import Authorizer, TokenCache
from tessera.agent.images.credentials import Credential
from tessera.agent.images.errors import (
    DIGEST_MISMATCH,
    DISK_FULL,
    INVALID,
    NOT_FOUND,
    REGISTRY,
    SIZE_MISMATCH,
    STALLED,
    TLS,
    UNAUTHORIZED,
    UNREACHABLE,
    PullFailed,
)
from tessera.agent.images.manifests import (
    ACCEPT,
    MANIFEST_LIMIT,
    Descriptor,
    Manifest,
    digest_of,
    parse_manifest,
)
from tessera.clock import Clock
from tessera.model.image_reference import Reference

_ERROR_BODY_LIMIT = 64 << 10
_CONNECT_TIMEOUT = 10.0
PROGRESS_BYTES = 4096


class RegistryClient:
    """One httpx client and one token cache for every pull of an image store."""

    def __init__(
        self,
        *,
        insecure_registries: frozenset[str],
        stall_timeout: float,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._insecure = insecure_registries
        self._stall_timeout = stall_timeout
        self._clock = clock
        # pool=None: waiting for a connection behind other pulls is queueing, not a stall.
        timeout = httpx.Timeout(
            connect=_CONNECT_TIMEOUT, read=stall_timeout, write=stall_timeout, pool=None
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=True,  # registries redirect blob GETs to their storage
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self.tokens = TokenCache(clock)

    def is_insecure(self, reference: Reference) -> bool:
        return reference.registry in self._insecure or reference.api_host in self._insecure

    def repository(
        self,
        reference: Reference,
        *,
        credential: Credential | None,
        credential_id: str,
        note: str | None = None,
    ) -> Repository:
        insecure = self.is_insecure(reference)
        image = str(reference)
        authorizer = Authorizer(
            client=self._client,
            cache=self.tokens,
            registry=reference.api_host,
            repository=reference.repository,
            credential=credential,
            credential_id=credential_id,
            plain_http_allowed=insecure,
            image=image,
        )
        scheme = "http" if insecure else "https"
        base = f"{scheme}://{reference.api_host}/v2/{reference.repository}"
        return Repository(
            self._client, authorizer, reference, base, self._stall_timeout, self._clock, note
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class Repository:
    """Manifests and blobs of one repository, for one pull (one credential)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        authorizer: Authorizer,
        reference: Reference,
        base_url: str,
        stall_timeout: float,
        clock: Clock,
        note: str | None,
    ) -> None:
        self._client = client
        self._auth = authorizer
        self._reference = reference
        self._image = str(reference)
        self._base = base_url
        self._stall_timeout = stall_timeout
        self._clock = clock
        self._note = note

    @property
    def used_credential(self) -> bool:
        return self._auth.used_credential

    async def manifest(self, target: str) -> Manifest:
        """The manifest (or index) by tag or digest, its digest checked."""
        with self._network_errors():
            async with self._get(
                f"{self._base}/manifests/{target}", ACCEPT, target, "manifest"
            ) as response:
                body = await _read_limited(response, MANIFEST_LIMIT, self._image, "manifest")
                content_type = response.headers.get("content-type", "")
                announced = response.headers.get("docker-content-digest")
        algorithm = target.partition(":")[0] if ":" in target else "sha256"
        digest = digest_of(body, algorithm if algorithm in ("sha256", "sha512") else "sha256")
        expected = target if ":" in target else announced
        if expected and expected.startswith(f"{digest.partition(':')[0]}:") and expected != digest:
            raise PullFailed(
                DIGEST_MISMATCH,
                f"cannot pull {self._image}: manifest digest mismatch (expected {expected}, "
                f"got {digest})",
            )
        return parse_manifest(body, content_type, digest, self._image)

    async def blob_bytes(self, descriptor: Descriptor) -> bytes:
        """A small blob (the image config) in memory, size and digest checked."""
        with self._network_errors():
            async with self._get(
                self._blob_url(descriptor), None, descriptor.digest, "blob"
            ) as response:
                body = await _read_limited(response, descriptor.size, self._image, "blob")
        self._verify(descriptor, len(body), hashlib.new(_algorithm(descriptor), body))
        return body

    async def download(self, descriptor: Descriptor, destination: Path) -> None:
        """Stream a blob to `<destination>.partial`, verify, fsync, rename to destination."""
        partial = destination.with_name(destination.name + ".partial")
        try:
            with self._network_errors(), self._disk_errors(partial.parent):
                received, hasher = await self._stream_to(descriptor, partial)
            self._verify(descriptor, received, hasher)
            with self._disk_errors(partial.parent):
                await asyncio.to_thread(_commit, partial, destination)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    async def _stream_to(self, descriptor: Descriptor, partial: Path) -> tuple[int, hashlib._Hash]:
        hasher = hashlib.new(_algorithm(descriptor))
        received = 0
        async with self._get(
            self._blob_url(descriptor), None, descriptor.digest, "blob"
        ) as response:
            length = response.headers.get("content-length")
            if (
                length is not None
                and length.isdigit()
                and "content-encoding" not in response.headers
                and int(length) != descriptor.size
            ):
                raise self._size_error(descriptor, int(length))
            descriptor_fd = os.open(
                partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
            progress = _Progress(self._clock.monotonic(), self._stall_timeout)
            try:
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received > descriptor.size:
                        raise self._size_error(descriptor, received, more=True)
                    hasher.update(chunk)
                    write_all(descriptor_fd, chunk)
                    if progress.stalled(len(chunk), self._clock.monotonic()):
                        raise PullFailed(
                            STALLED,
                            f"cannot pull {self._image}: the pull stalled (less than "
                            f"{PROGRESS_BYTES} bytes from {response.url.host} in "
                            f"{self._stall_timeout:g} s)",
                        )
            finally:
                os.close(descriptor_fd)
        return received, hasher

    def _verify(self, descriptor: Descriptor, received: int, hasher: hashlib._Hash) -> None:
        if received != descriptor.size:
            raise self._size_error(descriptor, received)
        actual = f"{hasher.name}:{hasher.hexdigest()}"
        if actual != descriptor.digest:
            raise PullFailed(
                DIGEST_MISMATCH,
                f"cannot pull {self._image}: blob digest mismatch (expected "
                f"{descriptor.digest}, got {actual})",
            )

    def _size_error(self, descriptor: Descriptor, got: int, *, more: bool = False) -> PullFailed:
        amount = f"more than {descriptor.size}" if more else str(got)
        return PullFailed(
            SIZE_MISMATCH,
            f"cannot pull {self._image}: blob {descriptor.digest} size mismatch (expected "
            f"{descriptor.size} bytes, got {amount})",
        )

    def _blob_url(self, descriptor: Descriptor) -> str:
        return f"{self._base}/blobs/{descriptor.digest}"

    @contextlib.asynccontextmanager
    async def _get(
        self, url: str, accept: str | None, target: str, what: str
    ) -> AsyncIterator[httpx.Response]:
        """A streamed GET that answered 200, authenticating again once on a 401."""
        response = await self._send(url, accept)
        if response.status_code == 401:
            challenges = response.headers.get_list("www-authenticate")
            await response.aclose()
            await self._auth.answer(challenges)
            response = await self._send(url, accept)
        try:
            if response.status_code != 200:
                await self._refuse(response, target, what)
            yield response
        finally:
            await response.aclose()

    async def _send(self, url: str, accept: str | None) -> httpx.Response:
        headers: dict[str, str] = {}
        if accept is not None:
            headers["Accept"] = accept
        if self._auth.header is not None:
            headers["Authorization"] = self._auth.header
        request = self._client.build_request("GET", url, headers=headers)
        return await self._client.send(request, stream=True)

    async def _refuse(self, response: httpx.Response, target: str, what: str) -> None:
        body = b""
        with contextlib.suppress(httpx.HTTPError, PullFailed):
            body = await _read_limited(response, _ERROR_BODY_LIMIT, self._image, "error")
        codes = _error_codes(body)
        status = response.status_code
        if status == 401:
            raise self._auth.refused(self._note)
        if status == 403:
            detail = f" ({', '.join(codes)})" if codes else ""
            raise PullFailed(
                UNAUTHORIZED, f"cannot pull {self._image}: the registry denied access{detail}"
            )
        if status == 404:
            raise PullFailed(
                NOT_FOUND, f"cannot pull {self._image}: {self._not_found(codes, target, what)}"
            )
        detail = f" ({', '.join(codes)})" if codes else ""
        if status == 429:
            raise PullFailed(REGISTRY, f"cannot pull {self._image}: rate limited by the registry")
        raise PullFailed(
            REGISTRY, f"cannot pull {self._image}: the registry answered {status}{detail}"
        )

    def _not_found(self, codes: list[str], target: str, what: str) -> str:
        repository = f"{self._reference.registry}/{self._reference.repository}"
        if "NAME_UNKNOWN" in codes:
            return f"repository {repository} not found"
        if what == "blob":
            return f"blob {target} not found in {repository}"
        if ":" in target:
            return f"manifest {target} not found in {repository}"
        return f"tag {target!r} not found in {repository} (manifest unknown)"

    @contextlib.contextmanager
    def _network_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as error:
            host = _host_of(error, self._reference)
            if isinstance(error, httpx.ConnectTimeout):
                raise PullFailed(
                    UNREACHABLE,
                    f"cannot pull {self._image}: registry {host} is unreachable "
                    f"(no connection in {_CONNECT_TIMEOUT:g} s)",
                ) from None
            raise PullFailed(
                STALLED,
                f"cannot pull {self._image}: the pull stalled (no data from {host} for "
                f"{self._stall_timeout:g} s)",
            ) from None
        except httpx.ConnectError as error:
            host = _host_of(error, self._reference)
            text = str(error) or type(error).__name__
            if "SSL" in text or "TLS" in text or "certificate" in text:
                raise PullFailed(
                    TLS,
                    f"cannot pull {self._image}: TLS with {host} failed ({text}); a registry "
                    f"that serves plain HTTP must be listed in --insecure-registries "
                    f"(add {self._reference.registry})",
                ) from None
            raise PullFailed(
                UNREACHABLE, f"cannot pull {self._image}: registry {host} is unreachable ({text})"
            ) from None
        except (httpx.TransportError, httpx.TooManyRedirects) as error:
            host = _host_of(error, self._reference)
            text = str(error) or type(error).__name__
            raise PullFailed(
                UNREACHABLE, f"cannot pull {self._image}: connection to {host} failed ({text})"
            ) from None
        except httpx.InvalidURL as error:
            raise PullFailed(INVALID, f"cannot pull {self._image}: {error}") from None

    @contextlib.contextmanager
    def _disk_errors(self, where: Path) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PullFailed(
                    DISK_FULL, f"cannot pull {self._image}: no space left on device in {where}"
                ) from None
            raise PullFailed(
                INVALID, f"cannot pull {self._image}: cannot write in {where}: {error}"
            ) from None


class _Progress:
    """Progress is PROGRESS_BYTES more; a stall is none of it for `timeout` seconds."""

    def __init__(self, now: float, timeout: float) -> None:
        self._mark = now
        self._pending = 0
        self._timeout = timeout

    def stalled(self, arrived: int, now: float) -> bool:
        self._pending += arrived
        if self._pending >= PROGRESS_BYTES:
            self._mark, self._pending = now, 0
            return False
        return now - self._mark > self._timeout


def _algorithm(descriptor: Descriptor) -> str:
    return descriptor.digest.partition(":")[0]


def _commit(partial: Path, destination: Path) -> None:
    descriptor = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, destination)
    directory = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def _read_limited(response: httpx.Response, limit: int, image: str, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise PullFailed(
                SIZE_MISMATCH if what == "blob" else INVALID,
                f"cannot pull {image}: {what} larger than {limit} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _error_codes(body: bytes) -> list[str]:
    try:
        document = json.loads(body)
    except ValueError:
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e["code"]) for e in errors if isinstance(e, dict) and "code" in e]


def _host_of(error: httpx.HTTPError, reference: Reference) -> str:
    try:
        url = error.request.url
    except RuntimeError:
        return reference.api_host
    return f"{url.host}:{url.port}" if url.port else url.host
