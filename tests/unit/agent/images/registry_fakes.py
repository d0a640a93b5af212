"""An in-memory distribution registry behind httpx.MockTransport, for the puller's unit
tests: anonymous, Basic or token auth, a log of requests, and knobs to misbehave."""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx

from tessera.agent.images import build

HOST = "registry.test"
REALM = "https://auth.test/token"
_PATH = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<target>[^/]+)")


@dataclass
class FakeRegistry:
    auth: str = "none"  # "none", "basic" or "token"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "secret"})
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    # Served instead of the real content (digest or size mismatches).
    tampered: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token → user ("" anonymous)
    refuse_tokens: bool = False
    # Tokens are refused after serving this many authorised requests (a token expiring).
    expire_after: int | None = None
    anonymous_pull: bool = True  # with token auth: may an anonymous token pull?

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def push(self, name: str, image: build.Image | build.Index, tag: str | None = None) -> str:
        images = image.images if isinstance(image, build.Index) else (image,)
        for one in images:
            self.blobs[one.config.digest] = one.config.read()
            for layer in one.layers:
                self.blobs[layer.digest] = layer.read()
            self._put_manifest(name, one.manifest, None)
        self._put_manifest(name, image.manifest, tag)
        return image.manifest.digest

    def put_raw_manifest(self, name: str, tag: str, media_type: str, body: bytes) -> None:
        self.manifests[(name, tag)] = (media_type, body)

    def _put_manifest(self, name: str, manifest: build.Blob, tag: str | None) -> None:
        entry = (manifest.media_type, manifest.read())
        self.manifests[(name, manifest.digest)] = entry
        if tag is not None:
            self.manifests[(name, tag)] = entry

    def count(self, kind: str) -> int:
        return sum(1 for request in self.requests if f"/{kind}/" in request.url.path)

    # -- serving ------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "auth.test":
            return self._token(request)
        refused = self._check_auth(request)
        if refused is not None:
            return refused
        match = _PATH.fullmatch(request.url.path)
        if match is None:
            return httpx.Response(404)
        name, kind, target = match["name"], match["kind"], match["target"]
        if kind == "manifests":
            found = self.manifests.get((name, target))
            if found is None:
                return _error(404, "MANIFEST_UNKNOWN")
            media_type, body = found
            return httpx.Response(
                200,
                content=self.tampered.get(target, body),
                headers={
                    "Content-Type": media_type,
                    "Docker-Content-Digest": build.digest_of(body),
                },
            )
        blob = self.blobs.get(target)
        if blob is None:
            return _error(404, "BLOB_UNKNOWN")
        return httpx.Response(200, content=self.tampered.get(target, blob))

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            if header.startswith("Basic ") and _basic_ok(header, self.users):
                return None
            return _error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "token":
            token = header.removeprefix("Bearer ")
            user = self.tokens.get(token)
            if header.startswith("Bearer ") and user is not None:
                if not user and not self.anonymous_pull:
                    return _error(401, "UNAUTHORIZED", self._bearer(request))
                if self.expire_after is not None:
                    if self.expire_after <= 0:
                        del self.tokens[token]
                        self.expire_after = None  # the next token lives
                        return _error(401, "UNAUTHORIZED", self._bearer(request))
                    self.expire_after -= 1
                return None
            return _error(401, "UNAUTHORIZED", self._bearer(request))
        return None

    def _bearer(self, request: httpx.Request) -> dict[str, str]:
        match = _PATH.fullmatch(request.url.path)
        name = match["name"] if match else "x"
        return {
            "WWW-Authenticate": f'Bearer realm="{REALM}",service="fake",'
            f'scope="repository:{name}:pull,push"'
        }

    def _token(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        user = ""
        if header:
            if not _basic_ok(header, self.users):
                return httpx.Response(401)
            user = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")[0]
        if self.refuse_tokens:
            return httpx.Response(401)
        token = secrets.token_hex(8)
        self.tokens[token] = user
        return httpx.Response(200, json={"token": token, "expires_in": 300})


def _basic_ok(header: str, users: dict[str, str]) -> bool:
    try:
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    except ValueError:
        return False
    return users.get(user) == password


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"errors": [{"code": code, "message": code.lower()}]}
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


def small_image(
    text: str = "hello", *, architecture: str = "amd64", variant: str = ""
) -> build.Image:
    """A one-layer image holding `etc/message` = text."""
    layer = build.build_layer([build.directory("etc"), build.file("etc/message", text.encode())])
    return build.build_image(
        [layer],
        config=build.ContainerConfig(cmd=("/bin/sh",)),
        architecture=architecture,
        variant=variant,
    )
