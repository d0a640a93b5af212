"""The distribution client against an in-memory registry (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from registry_fakes import HOST, FakeRegistry, small_image

from tessera.agent.images import build
from tessera.agent.images.credentials import Credential
from tessera.agent.images.errors import PullFailed
from tessera.agent.images.manifests import ACCEPT, Descriptor
from tessera.agent.images.platforms import Platform, select_manifest
from tessera.agent.images.registry import RegistryClient, Repository
from tessera.agent.images.resolve import resolve_manifest
from tessera.model.image_reference import parse_reference
from tessera.testing.clock import FakeClock

AMD64 = Platform("linux", "amd64")


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
async def client(fake: FakeRegistry) -> AsyncIterator[RegistryClient]:
    made = RegistryClient(
        insecure_registries=frozenset(),
        stall_timeout=5.0,
        clock=FakeClock(),
        transport=fake.transport(),
    )
    yield made
    await made.aclose()


def _repository(
    client: RegistryClient, name: str = "team/app", credential: Credential | None = None
) -> Repository:
    return client.repository(
        parse_reference(f"{HOST}/{name}"),
        credential=credential,
        credential_id="alice" if credential else "anonymous",
    )


async def test_accept_header_names_the_four_types(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    image = small_image()
    fake.push("team/app", image, "latest")
    manifest = await resolve_manifest(_repository(client), "latest", AMD64, "img")
    assert manifest.digest == image.digest
    accept = fake.requests[0].headers["accept"]
    assert accept == ACCEPT
    for media_type in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ):
        assert media_type in accept
    assert fake.requests[0].url.scheme == "https"


def test_platform_selection_prefers_the_variant() -> None:
    entries = [
        {"digest": "a", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "b", "platform": {"os": "linux", "architecture": "arm"}},
        {"digest": "c", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "d", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "e", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "f", "platform": {"os": "windows", "architecture": "amd64"}},
        {"digest": "g", "platform": {"os": "linux", "architecture": "amd64"}},
    ]
    assert select_manifest(entries, Platform("linux", "arm", "v7"))["digest"] == "c"
    assert select_manifest(entries, Platform("linux", "arm", "v5"))["digest"] == "b"
    # arm64 without a variant is v8: the first entry wins.
    assert select_manifest(entries, Platform("linux", "arm64", "v8"))["digest"] == "d"
    assert select_manifest(entries, AMD64)["digest"] == "g"
    assert select_manifest(entries, Platform("linux", "s390x")) is None


def test_platform_of_this_machine_uses_go_names() -> None:
    current = Platform.current()
    assert current.os == "linux"
    assert current.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(ValueError):
        Platform.parse("linux")


async def test_index_picks_the_manifest_for_the_platform(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    arm = small_image("arm", architecture="arm64", variant="v8")
    amd = small_image("amd", architecture="amd64")
    index = build.build_index([arm, amd])
    fake.push("team/app", index, "multi")
    repository = _repository(client)
    chosen = await resolve_manifest(repository, "multi", Platform("linux", "arm64", "v8"), "img")
    assert chosen.digest == arm.digest
    chosen = await resolve_manifest(repository, "multi", AMD64, "img")
    assert chosen.digest == amd.digest
    # The platform manifest is fetched by digest.
    assert fake.requests[-1].url.path.endswith(amd.digest)


async def test_missing_platform_lists_what_the_index_has(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    index = build.build_index(
        [small_image(architecture="arm64", variant="v8"), small_image(architecture="amd64")],
        format="docker",
    )
    fake.push("team/app", index, "multi")
    with pytest.raises(PullFailed) as caught:
        await resolve_manifest(_repository(client), "multi", Platform("linux", "s390x"), "img")
    assert caught.value.kind == "platform"
    assert "linux/s390x" in caught.value.message
    assert "linux/arm64/v8, linux/amd64" in caught.value.message


async def test_manifest_digest_mismatch(fake: FakeRegistry, client: RegistryClient) -> None:
    image = small_image()
    fake.push("team/app", image, "latest")
    fake.tampered[image.digest] = image.manifest.read() + b" "
    with pytest.raises(PullFailed) as caught:
        await _repository(client).manifest(image.digest)
    assert caught.value.kind == "digest_mismatch"
    assert image.digest in caught.value.message


async def _download(
    fake: FakeRegistry, client: RegistryClient, blob: build.Blob, tmp_path: Path
) -> Path:
    target = tmp_path / blob.digest.partition(":")[2]
    descriptor = Descriptor(blob.media_type, blob.digest, blob.size)
    await _repository(client).download(descriptor, target)
    return target


async def test_blob_is_verified_and_renamed(
    fake: FakeRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    image = small_image()
    fake.push("team/app", image)
    layer = image.layers[0]
    target = await _download(fake, client, layer, tmp_path)
    assert target.read_bytes() == layer.read()
    assert not list(tmp_path.glob("*.partial"))


async def test_blob_digest_mismatch(
    fake: FakeRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    image = small_image()
    fake.push("team/app", image)
    layer = image.layers[0]
    data = bytearray(layer.read())
    data[-1] ^= 1
    fake.tampered[layer.digest] = bytes(data)
    with pytest.raises(PullFailed) as caught:
        await _download(fake, client, layer, tmp_path)
    assert caught.value.kind == "digest_mismatch"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delta", [-1, 1])
async def test_blob_size_mismatch(
    fake: FakeRegistry, client: RegistryClient, tmp_path: Path, delta: int
) -> None:
    image = small_image()
    fake.push("team/app", image)
    layer = image.layers[0]
    data = layer.read()
    fake.tampered[layer.digest] = data[:-1] if delta < 0 else data + b"x"
    with pytest.raises(PullFailed) as caught:
        await _download(fake, client, layer, tmp_path)
    assert caught.value.kind == "size_mismatch"
    assert list(tmp_path.iterdir()) == []


async def test_schema1_is_refused(fake: FakeRegistry, client: RegistryClient) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "team/app", "tag": "old", "fsLayers": []})
    fake.put_raw_manifest(
        "team/app",
        "old",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        body.encode(),
    )
    with pytest.raises(PullFailed) as caught:
        await _repository(client).manifest("old")
    assert caught.value.kind == "unsupported"
    assert "schema 1" in caught.value.message


async def test_unknown_tag_and_repository(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.push("team/app", small_image(), "latest")
    with pytest.raises(PullFailed) as caught:
        await _repository(client).manifest("nope")
    assert caught.value.kind == "not_found"
    assert "'nope'" in caught.value.message
    assert f"{HOST}/team/app" in caught.value.message


async def test_basic_auth(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.auth = "basic"
    fake.push("team/app", small_image(), "latest")
    repository = _repository(client, credential=Credential("alice", "secret"))
    await repository.manifest("latest")
    assert repository.used_credential
    # The next pull sends the credential at once.
    fake.requests.clear()
    await _repository(client, credential=Credential("alice", "secret")).manifest("latest")
    assert len(fake.requests) == 1
    with pytest.raises(PullFailed) as caught:
        await _repository(client, credential=Credential("alice", "wrong")).manifest("latest")
    assert caught.value.kind == "unauthorized"
    assert "'alice'" in caught.value.message
    with pytest.raises(PullFailed) as caught:
        await _repository(client).manifest("latest")
    assert caught.value.kind == "unauthorized"
    assert "anonymous" in caught.value.message


async def test_token_auth_caches_tokens(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.auth = "token"
    fake.push("team/app", small_image(), "latest")
    await _repository(client, credential=Credential("alice", "secret")).manifest("latest")
    token_requests = [r for r in fake.requests if r.url.host == "auth.test"]
    assert len(token_requests) == 1
    assert token_requests[0].url.params["scope"] == "repository:team/app:pull,push"
    assert token_requests[0].url.params["service"] == "fake"
    assert token_requests[0].headers["authorization"].startswith("Basic ")
    fake.requests.clear()
    await _repository(client, credential=Credential("alice", "secret")).manifest("latest")
    assert [r.url.host for r in fake.requests] == [HOST]


async def test_401_mid_pull_authenticates_again_once(
    fake: FakeRegistry, client: RegistryClient, tmp_path: Path
) -> None:
    fake.auth = "token"
    image = small_image()
    fake.push("team/app", image, "latest")
    repository = _repository(client, credential=Credential("alice", "secret"))
    await repository.manifest("latest")
    fake.expire_after = 0  # the token dies now
    fake.requests.clear()
    layer = image.layers[0]
    await repository.download(
        Descriptor(layer.media_type, layer.digest, layer.size), tmp_path / "l"
    )
    hosts = [r.url.host for r in fake.requests]
    assert hosts == [HOST, "auth.test", HOST]


async def test_token_refused_twice_is_unauthorized(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    fake.auth = "token"
    fake.anonymous_pull = False
    fake.push("team/app", small_image(), "latest")
    with pytest.raises(PullFailed) as caught:
        await _repository(client).manifest("latest")
    assert caught.value.kind == "unauthorized"
    # One token, one retry, no loop.
    assert [r.url.host for r in fake.requests] == [HOST, "auth.test", HOST]


async def test_token_endpoint_refusing_is_unauthorized(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    fake.auth = "token"
    fake.push("team/app", small_image(), "latest")
    with pytest.raises(PullFailed) as caught:
        await _repository(client, credential=Credential("alice", "bad")).manifest("latest")
    assert caught.value.kind == "unauthorized"
    assert "token service" in caught.value.message
    assert "'alice'" in caught.value.message


async def test_plain_http_only_when_listed(fake: FakeRegistry) -> None:
    fake.push("team/app", small_image(), "latest")
    client = RegistryClient(
        insecure_registries=frozenset({HOST}),
        stall_timeout=5.0,
        clock=FakeClock(),
        transport=fake.transport(),
    )
    try:
        await _repository(client).manifest("latest")
    finally:
        await client.aclose()
    assert fake.requests[-1].url.scheme == "http"


async def test_network_errors_are_named() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.test":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if request.url.host == "slow.test":
            raise httpx.ReadTimeout("timed out", request=request)
        raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version", request=request)

    client = RegistryClient(
        insecure_registries=frozenset(),
        stall_timeout=2.0,
        clock=FakeClock(),
        transport=httpx.MockTransport(refuse),
    )
    try:
        expected = {"down.test": "unreachable", "slow.test": "stalled", "tls.test:5000": "tls"}
        for host, kind in expected.items():
            repository = client.repository(
                parse_reference(f"{host}/app"), credential=None, credential_id="anonymous"
            )
            with pytest.raises(PullFailed) as caught:
                await repository.manifest("latest")
            assert caught.value.kind == kind
            assert f"{host}/app:latest" in caught.value.message
            if kind == "tls":
                assert "--insecure-registries" in caught.value.message
            if kind == "stalled":
                assert "2 s" in caught.value.message
    finally:
        await client.aclose()
