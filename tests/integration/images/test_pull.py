"""Pulls from a real `docker-registry` on loopback (anonymous, Basic and token auth), into a
real image store: layers unpacked with whiteouts, tags re-pushed, failures named, GC."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tessera.agent.images import build
from tessera.agent.images.errors import PullFailed
from tessera.agent.images.platforms import Platform
from tessera.agent.images.push import push_image
from tessera.agent.images.store import ImageSettings, ImageStore
from tessera.testing.registry import (
    DownRegistry,
    Registry,
    StallingProxy,
    require_registry,
    unique_repository,
)

HERE = Platform.current()


def _needs_root() -> None:
    if os.geteuid() != 0:
        reason = "whiteouts are character devices: unpacking them needs root"
        print(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def token_registry() -> Iterator[Registry]:
    require_registry()
    with Registry(auth="token") as made:
        yield made


StoreFactory = Callable[..., ImageStore]


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    opened: list[ImageStore] = []

    def factory(*insecure: str, **overrides: object) -> ImageStore:
        settings = ImageSettings(insecure_registries=frozenset(insecure), **overrides)  # type: ignore[arg-type]
        store = ImageStore(tmp_path / f"images{len(opened)}", settings)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


def three_layer_image(
    message: str = "v1", *, architecture: str = HERE.architecture, variant: str = ""
) -> build.Image:
    """busybox (gzip), then a gzip layer deleting a file, then a zstd layer with an opaque
    directory: the image of the feasibility log, built in-process."""
    base = build.build_layer(
        [
            *build.busybox_entries(),
            build.directory("etc/app"),
            build.file("etc/app/secret.txt", b"secret"),
            build.directory("opt/old"),
            build.file("opt/old/a", b"a"),
        ],
        compression="gzip",
    )
    middle = build.build_layer(
        [build.whiteout("etc/app/secret.txt"), build.file("etc/app/message", message.encode())],
        compression="gzip",
    )
    top = build.build_layer(
        [build.directory("opt/old"), build.opaque("opt/old"), build.file("opt/old/d", b"d")],
        compression="zstd",
    )
    return build.build_image(
        [base, middle, top],
        config=build.ContainerConfig(
            entrypoint=("/bin/sh", "-c"), cmd=("cat /etc/app/message",), working_dir="/opt"
        ),
        architecture=architecture,
        variant=variant,
    )


def small_image(text: str, *, size: int = 0) -> build.Image:
    layer = build.build_layer(
        [build.file("data.txt", text.encode() + os.urandom(size))], compression="none"
    )
    return build.build_image([layer], architecture=HERE.architecture)


async def test_anonymous_pull_of_a_three_layer_image(
    registry: Registry, open_store: StoreFactory
) -> None:
    _needs_root()
    repository = unique_repository("pull")
    image = three_layer_image()
    push_image(registry.host, repository, image, "v1")
    store = open_store(registry.host)

    started = time.perf_counter()
    pulled = await store.ensure(f"{registry.host}/{repository}:v1")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = await store.ensure(f"{registry.host}/{repository}:v1")
    warm = time.perf_counter() - started
    print(
        f"\ncold pull of the 3-layer busybox image ({sum(b.size for b in image.layers)} bytes "
        f"compressed, {pulled.size} bytes on disk): {cold * 1000:.0f} ms; "
        f"cached: {warm * 1000:.2f} ms"
    )
    assert again == pulled
    assert pulled.digest == image.digest
    assert pulled.config["Entrypoint"] == ["/bin/sh", "-c"]
    assert pulled.config["WorkingDir"] == "/opt"
    base, middle, top = pulled.layers
    assert (base / "bin" / "busybox").stat().st_size > 100_000
    assert (base / "etc/app/secret.txt").read_bytes() == b"secret"
    whiteout = os.lstat(middle / "etc/app/secret.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert (middle / "etc/app/message").read_text() == "v1"
    assert os.getxattr(top / "opt/old", "trusted.overlay.opaque") == b"y"
    assert (top / "opt/old/d").read_bytes() == b"d"
    assert store.size_bytes() >= pulled.size - 4096


async def test_two_platform_index(registry: Registry, open_store: StoreFactory) -> None:
    _needs_root()
    repository = unique_repository("index")
    arm = three_layer_image("arm", architecture="arm64", variant="v8")
    ours = three_layer_image("ours")
    push_image(registry.host, repository, build.build_index([arm, ours]), "multi")
    reference = f"{registry.host}/{repository}:multi"

    pulled = await open_store(registry.host).ensure(reference)
    assert pulled.digest == ours.digest
    assert (pulled.layers[1] / "etc/app/message").read_text() == "ours"
    arm_store = open_store(registry.host, platform=Platform("linux", "arm64", "v8"))
    assert (await arm_store.ensure(reference)).digest == arm.digest
    with pytest.raises(PullFailed) as caught:
        await open_store(registry.host, platform=Platform("linux", "s390x")).ensure(reference)
    assert caught.value.kind == "platform"
    assert "linux/arm64/v8" in caught.value.message


async def test_force_pull_picks_up_a_re_pushed_tag(
    registry: Registry, open_store: StoreFactory
) -> None:
    repository = unique_repository("force")
    first = small_image("first")
    push_image(registry.host, repository, first, "latest")
    store = open_store(registry.host)
    reference = f"{registry.host}/{repository}"
    assert (await store.ensure(reference)).digest == first.digest
    second = small_image("second")
    push_image(registry.host, repository, second, "latest")
    assert (await store.ensure(reference)).digest == first.digest  # cached, no network
    pulled = await store.ensure(reference, force_pull=True)
    assert pulled.digest == second.digest
    assert (pulled.layers[0] / "data.txt").read_bytes().startswith(b"second")


async def test_unknown_tag_and_repository(registry: Registry, open_store: StoreFactory) -> None:
    repository = unique_repository("missing")
    push_image(registry.host, repository, small_image("x"), "latest")
    store = open_store(registry.host)
    with pytest.raises(PullFailed) as caught:
        await store.ensure(f"{registry.host}/{repository}:nope")
    assert caught.value.kind == "not_found"
    assert f"{registry.host}/{repository}:nope" in caught.value.message
    assert "'nope'" in caught.value.message
    with pytest.raises(PullFailed) as caught:
        await store.ensure(f"{registry.host}/{repository}-absent:v1")
    assert caught.value.kind == "not_found"


async def test_plain_http_needs_the_insecure_flag(
    registry: Registry, open_store: StoreFactory
) -> None:
    repository = unique_repository("tls")
    push_image(registry.host, repository, small_image("x"), "latest")
    with pytest.raises(PullFailed) as caught:
        await open_store().ensure(f"{registry.host}/{repository}")
    assert caught.value.kind == "tls"
    assert "--insecure-registries" in caught.value.message
    assert registry.host in caught.value.message


async def test_registry_down(open_store: StoreFactory) -> None:
    with DownRegistry() as down, pytest.raises(PullFailed) as caught:
        await open_store(down.host).ensure(f"{down.host}/team/app:v1")
    assert caught.value.kind == "unreachable"
    assert f"{down.host}/team/app:v1" in caught.value.message
    assert "unreachable" in caught.value.message


async def test_basic_auth(
    basic_registry: Registry, open_store: StoreFactory, tmp_path: Path
) -> None:
    user, password = basic_registry.credentials
    repository = unique_repository("basic")
    image = small_image("basic")
    push_image(basic_registry.host, repository, image, "v1", username=user, password=password)
    reference = f"{basic_registry.host}/{repository}:v1"

    pulled = await open_store(basic_registry.host).ensure(reference, credential=(user, password))
    assert pulled.digest == image.digest

    config = tmp_path / "config.json"
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    config.write_text(json.dumps({"auths": {f"http://{basic_registry.host}": {"auth": encoded}}}))
    from_config = open_store(basic_registry.host, docker_config=config)
    assert (await from_config.ensure(reference)).digest == image.digest
    # The per-pull credential wins over the file.
    with pytest.raises(PullFailed) as caught:
        await from_config.ensure(reference, force_pull=True, credential=(user, "wrong"))
    assert caught.value.kind == "unauthorized"
    assert reference in caught.value.message

    with pytest.raises(PullFailed) as caught:
        await open_store(basic_registry.host).ensure(reference)
    assert caught.value.kind == "unauthorized"
    assert "anonymous" in caught.value.message


async def test_token_auth(token_registry: Registry, open_store: StoreFactory) -> None:
    user, password = token_registry.credentials
    repository = unique_repository("token")
    image = small_image("token")
    push_image(token_registry.host, repository, image, "v1", username=user, password=password)
    reference = f"{token_registry.host}/{repository}:v1"
    store = open_store(token_registry.host)

    pulled = await store.ensure(reference, credential=(user, password))
    assert pulled.digest == image.digest
    # Cached, but pulled with credentials: a caller without them is checked, and refused.
    with pytest.raises(PullFailed) as caught:
        await store.ensure(reference)
    assert caught.value.kind == "unauthorized"
    with pytest.raises(PullFailed) as caught:
        await open_store(token_registry.host).ensure(reference, credential=(user, "wrong"))
    assert caught.value.kind == "unauthorized"
    assert "token service" in caught.value.message
    assert token_registry.token_server is not None
    assert any(subject == user for subject, _ in token_registry.token_server.issued)


@pytest.mark.parametrize("rate", [0, 20], ids=["silent", "trickling"])
async def test_stalling_registry(registry: Registry, open_store: StoreFactory, rate: int) -> None:
    repository = unique_repository("stall")
    push_image(registry.host, repository, small_image("stall", size=64 << 10), "latest")
    with StallingProxy(registry.host, pass_bytes=1024, rate=rate) as proxy:
        store = open_store(proxy.host, stall_timeout=2.0)
        started = time.monotonic()
        with pytest.raises(PullFailed) as caught:
            await store.ensure(f"{proxy.host}/{repository}")
        took = time.monotonic() - started
    assert caught.value.kind == "stalled"
    assert "2 s" in caught.value.message
    assert 1.5 < took < 10
    assert list((store.root / "layers").iterdir()) == []
    assert not list((store.root / "blobs").rglob("*.partial"))


async def test_gc_under_a_small_limit_keeps_the_pinned_image(
    registry: Registry, open_store: StoreFactory
) -> None:
    repositories = [unique_repository("gc") for _ in range(3)]
    for number, repository in enumerate(repositories):
        push_image(registry.host, repository, small_image(str(number), size=200 << 10), "latest")
    store = open_store(registry.host, limit_bytes=500 << 10, gc_delay=0.0)
    images = [await store.ensure(f"{registry.host}/{r}") for r in repositories]
    store.use("task-0", images[0])
    removed = await store.collect()
    removed_images = [r for r in removed if not r.startswith(("layer:", "blob:"))]
    assert removed_images == [images[1].reference, images[2].reference]
    assert store.size_bytes() <= 0.8 * (500 << 10)
    assert all(path.is_dir() for path in images[0].layers)
    assert not any(path.exists() for path in images[1].layers + images[2].layers)
    # Below the high watermark nothing more goes, pinned or not; a removed image pulls again.
    store.release("task-0")
    assert await store.collect() == []
    again = await store.ensure(f"{registry.host}/{repositories[1]}")
    assert (again.layers[0] / "data.txt").read_bytes().startswith(b"1")
