"""The image store against an in-memory registry: caching, dedup, recovery, pins and GC."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from registry_fakes import HOST, FakeRegistry

from tessera.agent.images import build
from tessera.agent.images.errors import PullFailed
from tessera.agent.images.gc import Candidate, Watermarks, plan_collection
from tessera.agent.images.platforms import Platform
from tessera.agent.images.store import ImageSettings, ImageStore
from tessera.agent.images.unpack import unpack_layer
from tessera.testing.clock import FakeClock

REF = f"{HOST}/team/app:latest"


class CountingUnpack:
    """The real unpacker, counting calls per diff_id; can be told to fail."""

    def __init__(self) -> None:
        self.calls: Counter[str | None] = Counter()
        self.fail: BaseException | None = None

    def __call__(
        self, blob: Path, media_type: str, dest: Path, *, diff_id: str | None = None
    ) -> None:
        self.calls[diff_id] += 1
        if self.fail is not None:
            dest.mkdir()
            (dest / "half").write_text("x")
            raise self.fail
        unpack_layer(blob, media_type, dest, diff_id=diff_id)


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=1_000_000.0)


@pytest.fixture
def unpack() -> CountingUnpack:
    return CountingUnpack()


StoreFactory = Callable[..., ImageStore]


@pytest.fixture
async def open_store(
    tmp_path: Path, fake: FakeRegistry, clock: FakeClock, unpack: CountingUnpack
) -> AsyncIterator[StoreFactory]:
    opened: list[ImageStore] = []

    def factory(**overrides: object) -> ImageStore:
        settings = ImageSettings(platform=Platform("linux", "amd64"), **overrides)  # type: ignore[arg-type]
        store = ImageStore(
            tmp_path / "images", settings, clock=clock, transport=fake.transport(), unpack=unpack
        )
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


def _layered_image(*texts: str, compression: str = "gzip") -> build.Image:
    layers = [
        build.build_layer([build.file(f"layer{n}.txt", text.encode())], compression=compression)  # type: ignore[arg-type]
        for n, text in enumerate(texts)
    ]
    return build.build_image(layers, config=build.ContainerConfig(env=("A=1",), cmd=("run",)))


async def test_pull_then_cached_without_network(
    fake: FakeRegistry, open_store: StoreFactory
) -> None:
    image = _layered_image("one", "two")
    fake.push("team/app", image, "latest")
    store = open_store()
    pulled = await store.ensure(REF)
    assert pulled.reference == REF
    assert pulled.digest == image.digest
    assert pulled.config["Env"] == ["A=1"]
    assert pulled.config["Cmd"] == ["run"]
    assert [(p / f"layer{n}.txt").read_text() for n, p in enumerate(pulled.layers)] == [
        "one",
        "two",
    ]
    assert all((p.parent / "done").exists() for p in pulled.layers)
    assert store.size_bytes() > 0
    assert pulled.size > 0
    # Layer blobs are dropped once unpacked; the config blob stays.
    blobs = [p.name for p in (store.root / "blobs" / "sha256").iterdir()]
    assert blobs == [image.config.digest.partition(":")[2]]

    before = len(fake.requests)
    again = await store.ensure("registry.test/team/app")
    assert again == pulled
    assert len(fake.requests) == before

    # A new store over the same root knows the image too, still without network.
    await store.close()
    reopened = open_store()
    assert await reopened.ensure(REF) == pulled
    assert reopened.size_bytes() == store.size_bytes()
    assert len(fake.requests) == before


async def test_concurrent_ensure_share_one_pull(
    fake: FakeRegistry, open_store: StoreFactory, unpack: CountingUnpack
) -> None:
    fake.push("team/app", _layered_image("a", "b", "c"), "latest")
    store = open_store()
    results = await asyncio.gather(*(store.ensure(REF) for _ in range(5)))
    assert all(result == results[0] for result in results)
    assert fake.count("manifests") == 1
    assert fake.count("blobs") == 4  # config + 3 layers
    assert all(count == 1 for count in unpack.calls.values())


async def test_shared_layer_unpacked_once_for_two_images(
    fake: FakeRegistry, open_store: StoreFactory, unpack: CountingUnpack
) -> None:
    base = build.build_layer([build.file("base.txt", b"base")])
    first = build.build_image([base, build.build_layer([build.file("a", b"1")])])
    second = build.build_image([base, build.build_layer([build.file("b", b"2")])])
    fake.push("team/first", first, "latest")
    fake.push("team/second", second, "latest")
    fake.blobs[base.digest] = base.read()
    store = open_store()
    one, two = await asyncio.gather(
        store.ensure(f"{HOST}/team/first"), store.ensure(f"{HOST}/team/second")
    )
    assert one.layers[0] == two.layers[0]
    assert unpack.calls[base.diff_id] == 1
    base_fetches = [r for r in fake.requests if r.url.path.endswith(base.digest)]
    assert len(base_fetches) == 1


async def test_layer_without_done_is_unpacked_again(
    fake: FakeRegistry, open_store: StoreFactory, unpack: CountingUnpack
) -> None:
    image = _layered_image("one", "two")
    fake.push("team/app", image, "latest")
    store = open_store()
    pulled = await store.ensure(REF)
    await store.close()
    # A crash mid-unpack: the top layer lost its marker, and half a staging dir is left.
    top = pulled.layers[1].parent
    (top / "done").unlink()
    (top / "unpacking").mkdir()
    manifests = fake.count("manifests")

    reopened = open_store()
    assert not top.exists()
    again = await reopened.ensure(REF)
    assert again.layers == pulled.layers
    assert (again.layers[1] / "layer1.txt").read_text() == "two"
    assert (top / "done").exists()
    assert unpack.calls[image.layers[1].diff_id] == 2
    assert unpack.calls[image.layers[0].diff_id] == 1
    # Fetched by digest: the tag is not resolved again.
    manifest_paths = [r.url.path for r in fake.requests if "/manifests/" in r.url.path]
    assert manifest_paths[manifests:] == [f"/v2/team/app/manifests/{image.digest}"]


async def test_failed_unpack_leaves_no_layer(
    fake: FakeRegistry, open_store: StoreFactory, unpack: CountingUnpack
) -> None:
    fake.push("team/app", _layered_image("one"), "latest")
    store = open_store()
    unpack.fail = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PullFailed) as caught:
        await store.ensure(REF)
    assert caught.value.kind == "disk_full"
    assert "no space left on device in" in caught.value.message
    assert REF in caught.value.message
    assert list((store.root / "layers").iterdir()) == []
    unpack.fail = None
    assert (await store.ensure(REF)).layers[0].is_dir()


async def test_force_pull_picks_up_a_new_tag(
    fake: FakeRegistry, open_store: StoreFactory, unpack: CountingUnpack
) -> None:
    old = _layered_image("base", "v1")
    fake.push("team/app", old, "latest")
    store = open_store()
    first = await store.ensure(REF)
    new = _layered_image("base", "v2")
    fake.push("team/app", new, "latest")
    assert (await store.ensure(REF)).digest == old.digest  # cached: no look
    second = await store.ensure(REF, force_pull=True)
    assert second.digest == new.digest
    assert second.layers[0] == first.layers[0]
    assert unpack.calls[old.layers[0].diff_id] == 1  # the shared base is not fetched again
    # The old image stays, by digest, for whoever still runs it.
    references = {info.reference for info in store.images()}
    assert f"{HOST}/team/app@{old.digest}" in references
    # force_pull of an unchanged tag fetches no layer.
    blobs = fake.count("blobs")
    await store.ensure(REF, force_pull=True)
    assert fake.count("blobs") == blobs


async def test_private_image_is_checked_for_another_caller(
    fake: FakeRegistry, open_store: StoreFactory
) -> None:
    fake.auth = "token"
    fake.anonymous_pull = False
    fake.push("team/app", _layered_image("private"), "latest")
    store = open_store()
    await store.ensure(REF, credential=("alice", "secret"))
    requests = len(fake.requests)
    await store.ensure(REF, credential=("alice", "secret"))
    assert len(fake.requests) == requests
    with pytest.raises(PullFailed) as caught:
        await store.ensure(REF)
    assert caught.value.kind == "unauthorized"
    with pytest.raises(PullFailed):
        await store.ensure(REF, credential=("alice", "wrong"))
    recorded = json.loads((store.root / "images.json").read_text())["images"][REF]
    assert len(recorded["credentials"]) == 1
    assert "secret" not in (store.root / "images.json").read_text()


async def test_public_image_needs_no_check(fake: FakeRegistry, open_store: StoreFactory) -> None:
    fake.auth = "token"  # anonymous tokens may pull
    fake.push("team/app", _layered_image("public"), "latest")
    store = open_store()
    await store.ensure(REF)
    requests = len(fake.requests)
    await store.ensure(REF, credential=("alice", "secret"))
    assert len(fake.requests) == requests


async def test_pull_deadline(tmp_path: Path, clock: FakeClock) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(404)

    store = ImageStore(
        tmp_path,
        ImageSettings(pull_timeout=0.2),
        clock=clock,
        transport=httpx.MockTransport(slow),
    )
    try:
        with pytest.raises(PullFailed) as caught:
            await store.ensure(REF)
    finally:
        await store.close()
    assert caught.value.kind == "timeout"
    assert "0.2 s" in caught.value.message


async def test_invalid_reference(open_store: StoreFactory) -> None:
    with pytest.raises(PullFailed) as caught:
        await open_store().ensure("UPPER/case")
    assert caught.value.kind == "invalid"
    assert "lowercase" in caught.value.message


async def test_gc_watermarks_pins_and_delay(
    fake: FakeRegistry, open_store: StoreFactory, clock: FakeClock
) -> None:
    names = ["a", "b", "c"]
    for name in names:
        fake.push(f"team/{name}", _layered_image(name * 5000, compression="none"), "latest")
    probe = open_store()
    for name in names:
        await probe.ensure(f"{HOST}/team/{name}")
        clock.advance(10)
    total = probe.size_bytes()
    await probe.close()
    for layer in (probe.root / "layers").iterdir():
        assert (layer / "done").exists()

    # Three images fill 90 % of the limit: removing the oldest unpinned one is enough.
    store = open_store(limit_bytes=int(total / 0.9), gc_delay=100.0)
    pinned = await store.ensure(f"{HOST}/team/a")  # the oldest, but pinned
    store.use("task-1", pinned)
    assert await store.collect() == []  # everything used within the delay
    clock.advance(200)
    removed = await store.collect()
    images_removed = [r for r in removed if not r.startswith(("layer:", "blob:"))]
    assert images_removed == [f"{HOST}/team/b:latest"]
    assert any(r.startswith("layer:") for r in removed)
    assert store.size_bytes() < total
    remaining = {info.reference: info for info in store.images()}
    assert set(remaining) == {f"{HOST}/team/a:latest", f"{HOST}/team/c:latest"}
    assert remaining[f"{HOST}/team/a:latest"].tasks == ("task-1",)
    assert all(path.is_dir() for path in pinned.layers)
    assert await store.collect() == []  # below the high watermark now

    # Pins survive a restart; released, the image goes once the delay passed again.
    await store.close()
    store = open_store(limit_bytes=1, gc_delay=100.0)
    chain, config = _chain_and_config(store, "c")
    assert await store.collect() == [f"{HOST}/team/c:latest", f"layer:{chain}", f"blob:{config}"]
    store.release("task-1")
    assert await store.collect() == []
    clock.advance(101)
    removed = await store.collect()
    assert f"{HOST}/team/a:latest" in removed
    assert store.size_bytes() == 0
    assert list((store.root / "layers").iterdir()) == []
    assert list((store.root / "blobs" / "sha256").iterdir()) == []


def _chain_and_config(store: ImageStore, name: str) -> tuple[str, str]:
    document = json.loads((store.root / "images.json").read_text())
    record = document["images"][f"{HOST}/team/{name}:latest"]
    return str(record["layers"][0]["chain_id"]), str(record["config_digest"])


async def test_gc_never_takes_a_layer_a_pull_holds(
    fake: FakeRegistry, open_store: StoreFactory
) -> None:
    release = asyncio.Event()
    inner = fake.handle

    async def gated(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path and not release.is_set():
            await release.wait()
        return inner(request)

    store = ImageStore(
        open_store().root,
        ImageSettings(platform=Platform("linux", "amd64"), limit_bytes=1, gc_delay=0),
        transport=httpx.MockTransport(gated),
        unpack=CountingUnpack(),
    )
    fake.push("team/app", _layered_image("x"), "latest")
    try:
        pulling = asyncio.create_task(store.ensure(REF))
        await asyncio.sleep(0.05)
        assert await store.collect() == []
        release.set()
        image = await pulling
        assert image.layers[0].is_dir()
    finally:
        await store.close()


async def test_diff_id_mismatch_is_a_digest_mismatch(
    fake: FakeRegistry, open_store: StoreFactory
) -> None:
    layer = build.build_layer([build.file("x", b"x")])
    lying = dataclasses.replace(layer, diff_id="sha256:" + "0" * 64)
    fake.push("team/app", build.build_image([lying]), "latest")
    store = open_store()
    with pytest.raises(PullFailed) as caught:
        await store.ensure(REF)
    assert caught.value.kind == "digest_mismatch"
    assert "diff_id" in caught.value.message
    assert list((store.root / "layers").iterdir()) == []


def test_gc_plan_is_lru_and_counts_only_freed_layers() -> None:
    images = [
        Candidate("old", "d1", ("shared", "l1"), last_used=10),
        Candidate("mid", "d2", ("shared", "l2"), last_used=20),
        Candidate("new", "d3", ("l3",), last_used=30),
        Candidate("pinned", "d4", ("l4",), last_used=0),
    ]
    sizes = {"shared": 50, "l1": 10, "l2": 10, "l3": 10, "l4": 20}
    marks = Watermarks(limit=100, high=0.85, low=0.80, delay=5)

    def plan(usage: int, now: float = 100, protected: tuple[str, ...] = ()) -> list[str]:
        return plan_collection(
            images,
            sizes,
            usage=usage,
            marks=marks,
            pinned_digests={"d4"},
            protected_layers=protected,
            now=now,
        )

    assert plan(85) == []  # at the high watermark, not past it
    assert plan(86) == ["old"]  # frees l1 (10): 76 <= 80
    # "old" frees only l1 (shared stays for "mid"); "mid" then frees shared + l2.
    assert plan(100) == ["old", "mid"]
    assert plan(200) == ["old", "mid", "new"]  # never the pinned one, whatever it takes
    assert plan(100, now=24) == ["old"]  # "mid" and "new" were used within the delay
    # A layer a pull holds is not freed, so it takes one image more.
    assert plan(101) == ["old", "mid"]
    assert plan(101, protected=("shared",)) == ["old", "mid", "new"]
