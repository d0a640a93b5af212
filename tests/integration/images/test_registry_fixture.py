"""The test registries themselves: a real `docker-registry` in each auth mode takes images built
here (three layers: gzip, a whiteout, zstd) and gives them back to plain httpx; the token
server's short tokens expire; the stalling proxy stalls; the down registry refuses."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.agent.images import build as img
from tessera.agent.images.auth import parse_challenges
from tessera.agent.images.push import Pusher, PushError, push_image
from tessera.agent.images.unpack import OPAQUE_XATTR, unpack_layer
from tessera.testing.registry import (
    DownRegistry,
    Registry,
    StallingProxy,
    require_registry,
    unique_repository,
)

ACCEPT = ", ".join([img.OCI_INDEX, img.OCI_MANIFEST, img.DOCKER_LIST, img.DOCKER_MANIFEST])
TOKEN_TTL = 2.0


@pytest.fixture(scope="module")
def token_registry() -> Iterator[Registry]:
    require_registry()
    with Registry(auth="token", token_ttl=TOKEN_TTL) as made:
        yield made


def three_layers() -> list[img.Blob]:
    base = img.build_layer(
        [
            img.directory("etc"),
            img.file("etc/secret.txt", b"gone in layer 2"),
            img.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            img.directory("opt/olddir"),
            img.file("opt/olddir/a", b"hidden by layer 3"),
        ],
        compression="gzip",
    )
    whiteout = img.build_layer(
        [img.whiteout("etc/secret.txt"), img.file("etc/layer2.txt", b"two")], compression="gzip"
    )
    top = img.build_layer(
        [
            img.opaque("opt/olddir"),
            img.file("opt/olddir/d", b"only me"),
            img.file("etc/l3a", b"linked"),
            img.hardlink("etc/l3b", "etc/l3a"),
            img.symlink("etc/motd-link", "/etc/layer2.txt"),
        ],
        compression="zstd",
    )
    return [base, whiteout, top]


def three_layer_image(format: img.ManifestFormat = "oci") -> img.Image:
    config = img.ContainerConfig(entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), user="nobody")
    return img.build_image(three_layers(), config=config, format=format)


class Reader:
    """A plain httpx client that answers the registry's challenge the simplest way."""

    def __init__(self, registry: Registry, repository: str, *, anonymous: bool = False) -> None:
        self.registry = registry
        self.repository = repository
        self.client = httpx.Client(base_url=registry.url, timeout=10)
        if registry.auth != "none" and not anonymous:
            self.client.auth = httpx.BasicAuth(*registry.credentials)
        if registry.auth == "token" and not anonymous:
            self.client.auth = None
            self.client.headers["Authorization"] = f"Bearer {self.token()}"

    def token(self) -> str:
        challenge = self.client.get("/v2/").headers["www-authenticate"]
        params = parse_challenges([challenge])[0].params
        answer = httpx.get(
            params["realm"],
            params={"service": params["service"], "scope": f"repository:{self.repository}:pull"},
            auth=httpx.BasicAuth(*self.registry.credentials),
        )
        answer.raise_for_status()
        return str(answer.json()["token"])

    def manifest(self, reference: str) -> httpx.Response:
        path = f"/v2/{self.repository}/manifests/{reference}"
        return self.client.get(path, headers={"Accept": ACCEPT})

    def blob(self, digest: str) -> httpx.Response:
        return self.client.get(f"/v2/{self.repository}/blobs/{digest}")


def push(registry: Registry, image: img.Image | img.Index, tag: str) -> str:
    repository = unique_repository("fixture")
    user, password = registry.credentials if registry.auth != "none" else (None, None)
    push_image(registry.host, repository, image, tag, username=user, password=password)
    return repository


@pytest.mark.parametrize("mode", ["registry", "basic_registry", "token_registry"])
def test_a_three_layer_image_goes_up_and_comes_back(
    mode: str, request: pytest.FixtureRequest
) -> None:
    registry: Registry = request.getfixturevalue(mode)
    image = three_layer_image()
    repository = push(registry, image, "v1")
    reader = Reader(registry, repository)
    answer = reader.manifest("v1")
    assert answer.status_code == 200, answer.text
    assert answer.content == image.manifest.read()
    assert answer.headers["docker-content-digest"] == image.digest
    assert answer.headers["content-type"] == img.OCI_MANIFEST
    layer_types = [layer["mediaType"] for layer in answer.json()["layers"]]
    assert layer_types[-1] == "application/vnd.oci.image.layer.v1.tar+zstd"
    config = reader.blob(image.config.digest)
    assert config.json()["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    for layer in image.layers:
        assert reader.blob(layer.digest).content == layer.read()


@pytest.mark.parametrize("mode", ["basic_registry", "token_registry"])
def test_anonymous_readers_are_refused(mode: str, request: pytest.FixtureRequest) -> None:
    registry: Registry = request.getfixturevalue(mode)
    repository = push(registry, three_layer_image(), "v1")
    answer = Reader(registry, repository, anonymous=True).manifest("v1")
    assert answer.status_code == 401
    scheme = answer.headers["www-authenticate"].split()[0]
    assert scheme == ("Basic" if registry.auth == "basic" else "Bearer")


def test_wrong_credentials_are_refused(basic_registry: Registry, token_registry: Registry) -> None:
    image = three_layer_image()
    for registry in (basic_registry, token_registry):
        with pytest.raises(PushError):
            push_image(registry.host, unique_repository(), image, username="tessera", password="no")


def test_a_docker_schema_2_image_and_a_two_platform_index(registry: Registry) -> None:
    layers = three_layers()
    amd = img.build_image(layers, format="docker")
    arm = img.build_image(layers, architecture="arm64", variant="v8", format="docker")
    repository = push(registry, img.build_index([arm, amd], format="docker"), "multi")
    reader = Reader(registry, repository)
    index = reader.manifest("multi")
    assert index.headers["content-type"] == img.DOCKER_LIST
    platforms = [entry["platform"] for entry in index.json()["manifests"]]
    assert platforms == [arm.platform(), amd.platform()]
    child = reader.manifest(amd.digest)
    assert child.headers["content-type"] == img.DOCKER_MANIFEST
    assert child.json()["layers"][0]["mediaType"] == img.DOCKER_LAYER_GZIP


def test_a_pushed_image_unpacks_into_overlay_lower_dirs(registry: Registry, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("whiteouts are character devices and opaque dirs trusted xattrs: needs root")
    image = three_layer_image()
    reader = Reader(registry, push(registry, image, "v1"))
    for number, layer in enumerate(image.layers):
        blob = tmp_path / f"blob{number}"
        blob.write_bytes(reader.blob(layer.digest).content)
        unpack_layer(blob, layer.media_type, tmp_path / f"layer{number}", diff_id=layer.diff_id)
    secret = (tmp_path / "layer1" / "etc" / "secret.txt").lstat()
    assert stat.S_ISCHR(secret.st_mode) and secret.st_rdev == 0
    assert os.getxattr(tmp_path / "layer2" / "opt" / "olddir", OPAQUE_XATTR) == b"y"
    assert os.listdir(tmp_path / "layer2" / "opt" / "olddir") == ["d"]
    top = tmp_path / "layer2" / "etc"
    assert (top / "l3a").stat().st_ino == (top / "l3b").stat().st_ino
    assert os.readlink(top / "motd-link") == "/etc/layer2.txt"


def test_short_tokens_expire_and_the_pusher_fetches_new_ones(token_registry: Registry) -> None:
    assert token_registry.token_server is not None
    image = three_layer_image()
    repository = unique_repository("expiry")
    user, password = token_registry.credentials
    with Pusher(token_registry.host, repository, username=user, password=password) as pusher:
        pusher.push(image, "v1")
        issued = len(token_registry.token_server.issued)
        stale = pusher._authorization
        time.sleep(TOKEN_TTL + 1.1)
        expired = httpx.get(
            f"{token_registry.url}/v2/{repository}/manifests/v1",
            headers={"Accept": ACCEPT, "Authorization": str(stale)},
        )
        assert expired.status_code == 401
        pusher.push(image, "v2")  # the stale token gets a 401, then a new one is fetched
    assert len(token_registry.token_server.issued) > issued


def test_the_stalling_proxy_passes_manifests_and_stalls_blobs(registry: Registry) -> None:
    image = three_layer_image()
    repository = push(registry, image, "v1")
    big = img.build_layer([img.file("noise", os.urandom(64 * 1024))], compression="none")
    push_image(registry.host, repository, img.build_image([big]), "big")
    with StallingProxy(registry.url, pass_bytes=4096, rate=4) as proxy:
        manifest = httpx.get(
            f"{proxy.url}/v2/{repository}/manifests/big", headers={"Accept": ACCEPT}
        )
        assert manifest.status_code == 200
        received = 0
        started = time.monotonic()
        with httpx.stream("GET", f"{proxy.url}/v2/{repository}/blobs/{big.digest}") as answer:
            assert answer.headers["content-length"] == str(big.size)
            for chunk in answer.iter_raw(1):
                received += len(chunk)
                if time.monotonic() - started > 1.0:
                    break
        assert 4096 <= received <= 4096 + 8
        assert proxy.stalled == [f"/v2/{repository}/blobs/{big.digest}"]


def test_a_silent_stall_times_out_a_reader(registry: Registry) -> None:
    layer = img.build_layer([img.file("noise", os.urandom(16 * 1024))], compression="none")
    repository = push(registry, img.build_image([layer]), "v1")
    with StallingProxy(registry.url, pass_bytes=100, rate=0) as proxy:
        url = f"{proxy.url}/v2/{repository}/blobs/{layer.digest}"
        with pytest.raises(httpx.ReadTimeout), httpx.stream("GET", url, timeout=0.5) as answer:
            for _chunk in answer.iter_raw():
                pass


def test_the_down_registry_refuses_connections() -> None:
    with DownRegistry() as down, pytest.raises(httpx.ConnectError):
        httpx.get(f"{down.url}/v2/", timeout=2)


def test_stop_ends_the_process_and_removes_its_files() -> None:
    require_registry()
    made = Registry(auth="token").start()
    assert made.process is not None and made.token_server is not None
    directory, process, token_url = made.dir, made.process, made.token_server.url
    made.stop()
    assert process.poll() is not None
    assert not directory.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(token_url, timeout=1)
