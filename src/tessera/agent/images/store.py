"""The agent's image store: images pulled once, layers unpacked once, kept while used, GC'd.

Layout under `root` (the agent passes `<work_dir>/images`):
  blobs/sha256/<hex>        config blobs; layer blobs only until their layer is unpacked
  layers/<chain hex>/fs     an unpacked layer, complete once `layers/<chain hex>/done` exists
  images.json, pins.json    reference → image, task → image; each rewritten atomically
  credential-key            the secret that keys the credential hashes in images.json

`ensure` answers a cached reference without any network. A tag is resolved once; with
`force_pull` it is resolved again and only the new layers are fetched. An image that was
pulled with credentials is handed to a caller with other (or no) credentials only after the
registry accepted theirs for its manifest (KEP-2535's re-check). Concurrent `ensure` calls of
one reference share one pull, and a layer two images share is fetched and unpacked once.
Pins (task → image) protect an image from GC and survive an agent restart. Pulls and GC
never race: GC skips every layer and blob a pull in flight holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from tessera.agent.images.catalog import (
    ImageRecord,
    LayerRecord,
    Pin,
    load_images,
    load_pins,
    save_images,
    save_pins,
)
from tessera.agent.images.credentials import (
    Credential,
    DockerConfig,
    credential_hash,
    credential_key,
)
from tessera.agent.images.errors import (
    DIGEST_MISMATCH,
    DISK_FULL,
    INVALID,
    LAYER,
    TIMEOUT,
    PullFailed,
)
from tessera.agent.images.gc import Candidate, Watermarks, plan_collection
from tessera.agent.images.layers import LayerDirs, UnpackLayer, remove_tree
from tessera.agent.images.manifests import Descriptor, Manifest, chain_ids, parse_config
from tessera.agent.images.platforms import Platform
from tessera.agent.images.registry import RegistryClient, Repository
from tessera.agent.images.resolve import resolve_manifest
from tessera.agent.images.shared import SharedWork
from tessera.agent.images.unpack import LayerError, unpack_layer
from tessera.clock import Clock, SystemClock
from tessera.model.image_reference import InvalidReference, Reference, parse_reference

_PARALLEL_BLOBS = 3


@dataclass(frozen=True, slots=True)
class ImageSettings:
    default_registry: str = "docker.io"
    insecure_registries: frozenset[str] = frozenset()  # host[:port] served over plain HTTP
    docker_config: Path | None = None
    platform: Platform = field(default_factory=Platform.current)
    stall_timeout: float = 60.0  # seconds without a byte from the registry
    pull_timeout: float = 600.0  # the whole pull, unpacking included
    gc_high: float = 0.85
    gc_low: float = 0.80
    gc_delay: float = 180.0  # seconds an image must be unused before GC may remove it
    limit_bytes: int | None = None  # None: the filesystem holding root (its usage counts)


@dataclass(frozen=True, slots=True)
class Image:
    reference: str
    digest: str  # of the image manifest for this platform
    config: Mapping[str, Any]  # the image config's `config`: Env, Entrypoint, Cmd, User, …
    layers: tuple[Path, ...]  # unpacked `fs` directories, bottom first
    size: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """One cached image, for the agent's API and metrics."""

    reference: str
    digest: str
    size: int
    last_used: float
    pulled_at: float
    tasks: tuple[str, ...]  # the tasks pinning it


@dataclass(frozen=True, slots=True)
class _Caller:
    credential: Credential | None
    credential_id: str | None  # keyed hash; None when anonymous
    note: str | None  # why the docker config gave no credential, if it says why


class ImageStore:
    def __init__(
        self,
        root: Path,
        settings: ImageSettings,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        unpack: UnpackLayer | None = None,
    ) -> None:
        self.root = root
        self.settings = settings
        self._clock = clock or SystemClock()
        self._unpack: UnpackLayer = unpack or unpack_layer
        root.mkdir(parents=True, exist_ok=True)
        self._layers = LayerDirs(root)
        self._layer_sizes = self._layers.recover()
        self._blobs = root / "blobs" / "sha256"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._blob_sizes = _scan_blobs(self._blobs)
        self._size = sum(self._layer_sizes.values()) + sum(self._blob_sizes.values())
        self._images = load_images(root / "images.json")
        self._pins = load_pins(root / "pins.json")
        self._key = credential_key(root)
        self._docker_config = (
            DockerConfig(settings.docker_config) if settings.docker_config else None
        )
        self._registry = RegistryClient(
            insecure_registries=settings.insecure_registries,
            stall_timeout=settings.stall_timeout,
            clock=self._clock,
            transport=transport,
        )
        self._pulls: SharedWork[tuple[str, str | None, bool], Image] = SharedWork()
        self._layer_work: SharedWork[str, None] = SharedWork()
        self._blob_work: SharedWork[str, None] = SharedWork()
        self._claims: Counter[str] = Counter()  # chain IDs and blob digests pulls hold
        self._gc_lock = asyncio.Lock()
        self._dirty = False

    # -- pulling ------------------------------------------------------------------------

    async def ensure(
        self,
        reference: str,
        *,
        force_pull: bool = False,
        credential: tuple[str, str] | None = None,
    ) -> Image:
        try:
            parsed = parse_reference(reference, self.settings.default_registry)
        except InvalidReference as error:
            raise PullFailed(INVALID, f"cannot pull: {error}") from None
        record = self._images.get(str(parsed))
        cached = record is not None and not force_pull and self._complete(record)
        if cached and record is not None and not record.credentials:
            return self._hit(record)  # public: nobody's credentials need reading
        caller = self._caller(parsed, credential)
        if cached and record is not None and caller.credential_id in record.credentials:
            return self._hit(record)
        key = (str(parsed), caller.credential_id, force_pull)
        return await self._pulls.run(key, lambda: self._pull(parsed, caller, force_pull))

    def _caller(self, reference: Reference, given: tuple[str, str] | None) -> _Caller:
        if given is not None:
            found = Credential(given[0], given[1])
            return _Caller(found, credential_hash(self._key, reference.registry, found), None)
        if self._docker_config is None:
            return _Caller(None, None, None)
        lookup = self._docker_config.lookup(reference.registry)
        identity = credential_hash(self._key, reference.registry, lookup.credential)
        return _Caller(lookup.credential, identity, lookup.note)

    def _complete(self, record: ImageRecord) -> bool:
        return all(chain in self._layer_sizes for chain in record.chain_ids)

    def _hit(self, record: ImageRecord) -> Image:
        self._images[record.reference] = record.used(self._clock.wall())
        self._dirty = True
        return self._image(record)

    def _image(self, record: ImageRecord) -> Image:
        return Image(
            reference=record.reference,
            digest=record.digest,
            config=types.MappingProxyType(dict(record.config)),
            layers=tuple(self._layers.fs(chain) for chain in record.chain_ids),
            size=record.size,
        )

    async def _pull(self, reference: Reference, caller: _Caller, force_pull: bool) -> Image:
        deadline = asyncio.timeout(self.settings.pull_timeout)
        try:
            async with deadline:
                return await self._pull_now(reference, caller, force_pull)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PullFailed(
                TIMEOUT,
                f"cannot pull {reference}: not done within the pull deadline of "
                f"{self.settings.pull_timeout:g} s",
            ) from None

    async def _pull_now(self, reference: Reference, caller: _Caller, force_pull: bool) -> Image:
        image = str(reference)
        repository = self._registry.repository(
            reference,
            credential=caller.credential,
            credential_id=caller.credential_id or "anonymous",
            note=caller.note,
        )
        known = self._images.get(image)
        # A tag is resolved once: without force_pull a known image is fetched by its digest
        # (a re-check of access, or the layers it lost).
        target = reference.target if force_pull or known is None else known.digest
        manifest = await resolve_manifest(repository, target, self.settings.platform, image)
        assert manifest.config is not None
        held = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        self._claims.update(held)
        try:
            config, diff_ids = await self._config(
                repository, manifest.config, len(manifest.layers), image
            )
            chains = chain_ids(diff_ids)
            self._claims.update(chains)
            try:
                await self._fetch_layers(repository, manifest, chains, diff_ids, image)
                record = self._record(
                    image, manifest, config, chains, diff_ids, repository, caller, known
                )
            finally:
                self._claims.subtract(chains)
        finally:
            self._claims.subtract(held)
            self._claims = +self._claims
        return self._image(record)

    async def _config(
        self, repository: Repository, descriptor: Descriptor, layer_count: int, image: str
    ) -> tuple[dict[str, Any], list[str]]:
        path = self._blob_path(descriptor.digest)
        if descriptor.digest not in self._blob_sizes:
            await self._blob_work.run(
                descriptor.digest, lambda: repository.download(descriptor, path)
            )
            self._add_blob(descriptor.digest, descriptor.size)
        body = await asyncio.to_thread(path.read_bytes)
        return parse_config(body, layer_count, image)

    async def _fetch_layers(
        self,
        repository: Repository,
        manifest: Manifest,
        chains: list[str],
        diff_ids: list[str],
        image: str,
    ) -> None:
        gate = asyncio.Semaphore(_PARALLEL_BLOBS)
        jobs = [
            self._layer_work.run(
                chain,
                functools.partial(
                    self._materialise, repository, descriptor, chain, diff_id, gate, image
                ),
            )
            for descriptor, chain, diff_id in zip(manifest.layers, chains, diff_ids, strict=True)
            if chain not in self._layer_sizes
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _materialise(
        self,
        repository: Repository,
        descriptor: Descriptor,
        chain: str,
        diff_id: str,
        gate: asyncio.Semaphore,
        image: str,
    ) -> None:
        if chain in self._layer_sizes:  # unpacked for another image meanwhile
            return
        blob = self._blob_path(descriptor.digest)
        if descriptor.digest not in self._blob_sizes:
            async with gate:
                await self._blob_work.run(
                    descriptor.digest, lambda: repository.download(descriptor, blob)
                )
            self._add_blob(descriptor.digest, descriptor.size)
        await self._unpack_layer(chain, blob, descriptor, diff_id, image)
        # The unpacked layer is what stays; its compressed blob is not needed again.
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()
        self._drop_blob(descriptor.digest)

    async def _unpack_layer(
        self, chain: str, blob: Path, descriptor: Descriptor, diff_id: str, image: str
    ) -> None:
        work = functools.partial(
            self._layers.unpack, chain, blob, descriptor.media_type, diff_id, self._unpack
        )
        future = asyncio.get_running_loop().run_in_executor(None, work)
        try:
            size = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be stopped: wait for it so that nobody else touches the
            # layer's directory meanwhile, and count the layer if it did finish.
            await asyncio.wait([future])
            if not future.cancelled() and future.exception() is None:
                self._add_layer(chain, future.result())
            raise
        except BaseException as error:
            await asyncio.to_thread(remove_tree, self._layers.directory(chain))
            raise _layer_failure(error, image, descriptor, self._layers.root) from None
        self._add_layer(chain, size)

    def _record(
        self,
        image: str,
        manifest: Manifest,
        config: dict[str, Any],
        chains: list[str],
        diff_ids: list[str],
        repository: Repository,
        caller: _Caller,
        known: ImageRecord | None,
    ) -> ImageRecord:
        assert manifest.config is not None
        now = self._clock.wall()
        if repository.used_credential and caller.credential_id is not None:
            previous = known.credentials if known and known.digest == manifest.digest else ()
            credentials = tuple(dict.fromkeys((*previous, caller.credential_id)))
        else:
            credentials = ()  # the registry served it without credentials: public
        layers = tuple(
            LayerRecord(chain, descriptor.digest, descriptor.media_type, diff_id)
            for chain, descriptor, diff_id in zip(chains, manifest.layers, diff_ids, strict=True)
        )
        record = ImageRecord(
            reference=image,
            digest=manifest.digest,
            config_digest=manifest.config.digest,
            config_size=manifest.config.size,
            layers=layers,
            config=config,
            size=sum(self._layer_sizes.get(chain, 0) for chain in chains) + manifest.config.size,
            last_used=now,
            pulled_at=known.pulled_at if known and known.digest == manifest.digest else now,
            credentials=credentials,
        )
        if known is not None and known.digest != record.digest:
            self._keep_previous(known)
        self._images[image] = record
        self._save_images()
        return record

    def _keep_previous(self, previous: ImageRecord) -> None:
        """A tag moved on: the image it named stays, under its digest, until GC removes it
        (tasks may still run it)."""
        others = (other for other in self._images.values() if other is not previous)
        if any(other.digest == previous.digest for other in others):
            return
        name = parse_reference(previous.reference, self.settings.default_registry)
        pinned = str(name.with_digest(previous.digest))
        self._images[pinned] = replace(previous, reference=pinned)

    # -- pins ---------------------------------------------------------------------------

    def use(self, task_id: str, image: Image) -> None:
        """Pin `image` for `task_id`: GC keeps it (and its layers) until `release`."""
        chains = tuple(f"sha256:{path.parent.name}" for path in image.layers)
        self._pins[task_id] = Pin(image.digest, chains)
        self._touch(image.digest)
        # Only the pin must be durable now (it keeps GC away); the use time is written at
        # release, and a pinned image is never collected meanwhile.
        save_pins(self.root / "pins.json", self._pins)

    def release(self, task_id: str) -> None:
        pin = self._pins.pop(task_id, None)
        if pin is None:
            return
        self._touch(pin.digest)  # the unused delay counts from now
        save_pins(self.root / "pins.json", self._pins)
        self._save_images()

    def _touch(self, digest: str) -> None:
        now = self._clock.wall()
        for reference, record in list(self._images.items()):
            if record.digest == digest:
                self._images[reference] = record.used(now)

    # -- garbage collection ---------------------------------------------------------------

    async def collect(self, now: float | None = None) -> list[str]:
        """Remove LRU unpinned images past the unused delay while above the high watermark
        (down to the low one), then every layer and blob no image needs. Returns what went:
        image references, then `layer:<chain id>` and `blob:<digest>` entries."""
        async with self._gc_lock:
            moment = self._clock.wall() if now is None else now
            usage, limit = self._usage()
            protected = set(self._claims) | set(self._layer_work.running())
            for pin in self._pins.values():
                protected.update(pin.layers)
            removed = plan_collection(
                [
                    Candidate(r.reference, r.digest, r.chain_ids, r.last_used)
                    for r in self._images.values()
                ],
                self._layer_sizes,
                usage=usage,
                marks=Watermarks(
                    limit, self.settings.gc_high, self.settings.gc_low, self.settings.gc_delay
                ),
                pinned_digests={pin.digest for pin in self._pins.values()},
                protected_layers=protected,
                now=moment,
            )
            for reference in removed:
                del self._images[reference]
            swept = self._sweep(protected)
            if removed or self._dirty:
                self._save_images()
            await asyncio.to_thread(self._layers.empty_trash)
            return removed + swept

    def _sweep(self, protected: set[str]) -> list[str]:
        """Move unreferenced layers to the trash and delete unreferenced blobs; no await in
        here, so no pull can claim what is being removed."""
        needed = set(protected) | set(self._blob_work.running())
        for record in self._images.values():
            needed.update(record.chain_ids)
            needed.add(record.config_digest)
        swept: list[str] = []
        for chain in [c for c in self._layer_sizes if c not in needed]:
            self._layers.trash(chain)
            self._size -= self._layer_sizes.pop(chain)
            swept.append(f"layer:{chain}")
        for digest in [d for d in self._blob_sizes if d not in needed]:
            with contextlib.suppress(FileNotFoundError):
                self._blob_path(digest).unlink()
            self._drop_blob(digest)
            swept.append(f"blob:{digest}")
        return swept

    def _usage(self) -> tuple[int, int]:
        if self.settings.limit_bytes is not None:
            return self._size, self.settings.limit_bytes
        # No limit: the filesystem's own fill decides, as the kubelet's does.
        status = os.statvfs(self.root)
        total = status.f_blocks * status.f_frsize
        return total - status.f_bfree * status.f_frsize, total

    # -- reading --------------------------------------------------------------------------

    def size_bytes(self) -> int:
        return self._size

    def images(self) -> list[ImageInfo]:
        users: dict[str, list[str]] = {}
        for task_id, pin in self._pins.items():
            users.setdefault(pin.digest, []).append(task_id)
        return [
            ImageInfo(
                r.reference,
                r.digest,
                r.size,
                r.last_used,
                r.pulled_at,
                tuple(sorted(users.get(r.digest, ()))),
            )
            for r in sorted(self._images.values(), key=lambda r: r.reference)
        ]

    async def close(self) -> None:
        if self._dirty:
            self._save_images()
        await self._registry.aclose()

    # -- bookkeeping ----------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        directory = self._blobs.parent / algorithm
        directory.mkdir(exist_ok=True)
        return directory / encoded

    def _add_blob(self, digest: str, size: int) -> None:
        if digest not in self._blob_sizes:
            self._blob_sizes[digest] = size
            self._size += size

    def _drop_blob(self, digest: str) -> None:
        self._size -= self._blob_sizes.pop(digest, 0)

    def _add_layer(self, chain: str, size: int) -> None:
        if chain not in self._layer_sizes:
            self._layer_sizes[chain] = size
            self._size += size

    def _save_images(self) -> None:
        save_images(self.root / "images.json", self._images)
        self._dirty = False


def _scan_blobs(directory: Path) -> dict[str, int]:
    """Blob sizes by digest; `.partial` leftovers of an interrupted download are removed."""
    sizes: dict[str, int] = {}
    for algorithm_dir in directory.parent.iterdir():
        if not algorithm_dir.is_dir():
            continue
        for entry in os.scandir(algorithm_dir):
            if ".partial" in entry.name or ".tmp" in entry.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            sizes[f"{algorithm_dir.name}:{entry.name}"] = entry.stat().st_size
    return sizes


def _layer_failure(error: BaseException, image: str, layer: Descriptor, where: Path) -> PullFailed:
    if isinstance(error, PullFailed):
        return error
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return PullFailed(DISK_FULL, f"cannot pull {image}: no space left on device in {where}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, LayerError) and "diff_id mismatch" in str(error):
        return PullFailed(DIGEST_MISMATCH, f"cannot pull {image}: layer {layer.digest}: {error}")
    return PullFailed(LAYER, f"cannot pull {image}: layer {layer.digest}: {error}")
