"""Pushing built images to a registry over the distribution API, for tests, bench and demo.

Blobs go up monolithically (`POST /v2/<name>/blobs/uploads/`, then `PUT <location>?digest=`),
skipped when `HEAD` says the registry has them; manifests with `PUT /v2/<name>/manifests/<ref>`
and their own Content-Type. An index pushes its platform manifests by digest first.

Auth: anonymous, Basic, or Bearer tokens. A 401 carries a `WWW-Authenticate` challenge; for
Bearer the token comes from the realm with `scope=repository:<name>:pull,push` (Basic
credentials sent there when given), and the request is sent once more. A token that expires
during a push is renewed the same way. Challenges are read with the puller's parser
(`tessera.agent.images.auth`).

Synchronous (httpx.Client); from asyncio code, run it in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

import httpx

from tessera.agent.images.auth import basic_header, parse_challenges
from tessera.agent.images.build import Blob, Image, Index
from tessera.agent.images.credentials import Credential


class PushError(Exception):
    """The registry refused something; the message says what and with which status."""


def registry_url(registry: str) -> str:
    """`127.0.0.1:5000` or `http://127.0.0.1:5000/` → `http://127.0.0.1:5000` (plain HTTP
    unless a scheme says otherwise: these are test and demo registries)."""
    base = registry if "://" in registry else f"http://{registry}"
    return base.rstrip("/")


class Pusher:
    """Pushes into one repository of one registry; reuse it for several images."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        username: str | None = None,
        password: str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base = registry_url(registry)
        self.repository = repository
        self.credentials = (username, password or "") if username is not None else None
        self.client = client or httpx.Client(timeout=timeout)
        self._own_client = client is None
        self._authorization: str | None = None
        self.uploaded: list[str] = []  # digests of blobs actually sent (not skipped)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def push(self, image: Image | Index, tag: str | None = "latest") -> str:
        """Push everything `image` needs, then its manifest under `tag` (or only by digest
        when tag is None). Returns the manifest digest."""
        images = image.images if isinstance(image, Index) else (image,)
        for platform_image in images:
            for blob in (platform_image.config, *platform_image.layers):
                self.blob(blob)
            if isinstance(image, Index):
                self.manifest(platform_image.manifest, platform_image.digest)
        return self.manifest(image.manifest, tag or image.digest)

    def blob(self, blob: Blob) -> bool:
        """Upload `blob` unless the registry has it; True when it was sent."""
        url = f"{self.base}/v2/{self.repository}/blobs/{blob.digest}"
        if self._send("HEAD", url).status_code == 200:
            return False
        started = self._send("POST", f"{self.base}/v2/{self.repository}/blobs/uploads/")
        self._expect(started, 202, f"starting the upload of {blob.digest}")
        location = httpx.URL(self.base).join(started.headers["location"])
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        finished = self._send(
            "PUT", location.copy_merge_params({"digest": blob.digest}), headers, blob.chunks
        )
        self._expect(finished, 201, f"uploading {blob.digest}")
        self.uploaded.append(blob.digest)
        return True

    def manifest(self, manifest: Blob, reference: str) -> str:
        url = f"{self.base}/v2/{self.repository}/manifests/{reference}"
        headers = {"Content-Type": manifest.media_type}
        answer = self._send("PUT", url, headers, lambda: iter((manifest.read(),)))
        self._expect(answer, 201, f"putting manifest {reference}")
        return str(answer.headers.get("docker-content-digest", manifest.digest))

    def _send(
        self,
        method: str,
        url: str | httpx.URL,
        headers: dict[str, str] | None = None,
        body: Callable[[], Iterable[bytes]] | None = None,
    ) -> httpx.Response:
        """One request, sent again once after answering an auth challenge; `body` makes the
        content afresh for each try."""
        for attempt in range(2):
            sent = dict(headers or {})
            if self._authorization:
                sent["Authorization"] = self._authorization
            content = b"".join(body()) if body is not None and _small(sent) else None
            stream = body() if body is not None and content is None else None
            answer = self.client.request(method, url, headers=sent, content=content or stream)
            if answer.status_code != 401 or attempt == 1:
                return answer
            answer.read()
            self._authenticate(answer)
        raise AssertionError("unreachable")

    def _authenticate(self, refused: httpx.Response) -> None:
        challenges = parse_challenges(refused.headers.get_list("www-authenticate"))
        scheme, params = (challenges[0].scheme, challenges[0].params) if challenges else ("", {})
        if scheme == "basic":
            if self.credentials is None:
                raise PushError(f"{self.base} wants credentials (Basic) and none were given")
            self._authorization = basic_header(Credential(*self.credentials))
        elif scheme == "bearer" and "realm" in params:
            self._authorization = f"Bearer {self._token(params)}"
        else:
            raise PushError(f"{self.base} answered 401 without a usable challenge")

    def _token(self, challenge: Mapping[str, str]) -> str:
        query = {"scope": f"repository:{self.repository}:pull,push"}
        if "service" in challenge:
            query["service"] = challenge["service"]
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        answer = self.client.get(challenge["realm"], params=query, auth=auth)
        if answer.status_code != 200:
            raise PushError(f"token server {challenge['realm']} refused: {answer.status_code}")
        body = answer.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise PushError(f"token server {challenge['realm']} gave no token")
        return token

    def _expect(self, answer: httpx.Response, status: int, doing: str) -> None:
        if answer.status_code != status:
            raise PushError(
                f"{self.base}/{self.repository}: {doing}: {answer.status_code} {answer.text[:300]}"
            )


def _small(headers: dict[str, str]) -> bool:
    """Bodies up to a few MB are sent as bytes; bigger ones stream with their Content-Length."""
    return int(headers.get("Content-Length", "0")) <= 8 << 20


def push_image(
    registry: str,
    repository: str,
    image: Image | Index,
    tag: str | None = "latest",
    *,
    username: str | None = None,
    password: str | None = None,
) -> str:
    """Push `image` (or an index) as `<registry>/<repository>:<tag>`; returns its digest."""
    with Pusher(registry, repository, username=username, password=password) as pusher:
        return pusher.push(image, tag)
