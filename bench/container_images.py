"""The container benchmark's images and its pull references: a 3-layer busybox image, a
~150 MB image of real files, Tessera's `ImageStore.ensure` in-process, and `skopeo copy` +
`umoci unpack` (bench-only tools, not product dependencies)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.images.build import (
    DEFAULT_PATH,
    ContainerConfig,
    Entry,
    build_image,
    build_layer,
    busybox_entries,
    directory,
    file,
    find_busybox,
    tree_entries,
)
from tessera.agent.images.push import push_image
from tessera.agent.images.store import ImageSettings, ImageStore

# Real files of this machine for the big layer: many small files, as in a real image.
BIG_TREES = ("usr/lib/python3.11", "usr/share/doc")
CONFIG = ContainerConfig(env=(DEFAULT_PATH,), cmd=("sh",))


@dataclass(frozen=True)
class Pushed:
    reference: str  # <registry>/<repository>:<tag>
    layers: int
    compressed_bytes: int
    content_bytes: int  # of the files in its layers


def push_small(registry: str, repository: str) -> Pushed:
    """busybox (gzip), a small gzip layer and a small zstd layer; a nonce in the first makes
    its content new to every store."""
    nonce = file("etc/bench-nonce", uuid.uuid4().hex.encode())
    entries = [
        [*busybox_entries(), nonce],
        [file("etc/motd", b"layer two\n"), directory("srv")],
        [file("srv/layer-three", b"zstd\n")],
    ]
    layers = [
        build_layer(entries[0]),
        build_layer(entries[1]),
        build_layer(entries[2], compression="zstd"),
    ]
    push_image(registry, repository, build_image(layers, config=CONFIG))
    content = sum(len(e.data) for layer in entries for e in layer) + find_busybox().stat().st_size
    return Pushed(f"{registry}/{repository}:latest", 3, sum(b.size for b in layers), content)


def _under(prefix: str, root: Path) -> Iterator[Entry]:
    parts = prefix.split("/")
    for depth in range(1, len(parts) + 1):
        yield directory("/".join(parts[:depth]))
    for entry in tree_entries(root):
        target = f"{prefix}/{entry.target}" if entry.kind == "hardlink" else entry.target
        yield dataclasses.replace(entry, path=f"{prefix}/{entry.path}", target=target)


def push_big(registry: str, repository: str, work: Path) -> Pushed:
    """busybox plus one big gzip layer of this machine's files (umoci can unpack it too)."""
    entries = [e for tree in BIG_TREES for e in _under(tree, Path("/") / tree)]
    entries.append(file("etc/bench-nonce", uuid.uuid4().hex.encode()))
    work.mkdir(parents=True, exist_ok=True)
    layers = [
        build_layer(busybox_entries()),
        build_layer(entries, out=work / "big-layer.tar.gz"),
    ]
    push_image(registry, repository, build_image(layers, config=CONFIG))
    content = sum(tree_bytes(Path("/") / tree) for tree in BIG_TREES)
    return Pushed(f"{registry}/{repository}:latest", 2, sum(b.size for b in layers), content)


def tree_bytes(root: Path) -> int:
    total = 0
    for current, _, files in os.walk(root):
        for name in files:
            total += (Path(current) / name).lstat().st_size
    return total


def drop_caches() -> str | None:
    """Empty the page cache (so a cold pull reads the registry's blobs from disk); None when
    done, else why not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        return f"cannot drop the page cache: {error}"
    return None


def ensure_seconds(reference: str, registry: str, root: Path) -> float:
    """Pull and unpack into a new store through `ImageStore.ensure`, in this process."""

    async def pull() -> float:
        store = ImageStore(root, ImageSettings(insecure_registries=frozenset({registry})))
        try:
            started = time.perf_counter()
            await store.ensure(reference)
            return time.perf_counter() - started
        finally:
            await store.close()

    return asyncio.run(pull())


def skopeo_umoci_missing() -> str | None:
    missing = [tool for tool in ("skopeo", "umoci") if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (bench-only tools, not product "
            "dependencies: apt-get install skopeo umoci); the pull comparison is skipped"
        )
    return None


@dataclass(frozen=True)
class ReferencePull:
    skopeo_s: float  # skopeo copy docker:// -> oci:
    umoci_s: float  # umoci unpack (rootfs + config.json + an mtree manifest of every file)
    umoci_raw_s: float  # umoci raw unpack (the rootfs only), from the same layout

    @property
    def total_s(self) -> float:
        return self.skopeo_s + self.umoci_s

    @property
    def raw_total_s(self) -> float:
        return self.skopeo_s + self.umoci_raw_s


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def skopeo_umoci(reference: str, root: Path) -> ReferencePull:
    """`skopeo copy` into an OCI layout, then `umoci unpack` and `umoci raw unpack` of it."""
    layout = f"{root / 'oci'}:bench"
    copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}"]
    return ReferencePull(
        _timed([*copy, f"oci:{layout}"]),
        _timed(["umoci", "unpack", "--image", layout, str(root / "bundle")]),
        _timed(["umoci", "raw", "unpack", "--image", layout, str(root / "rootfs")]),
    )
