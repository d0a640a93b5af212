"""Manifests, indexes and image configs as the OCI image-spec and Docker schema 2 write them:
media types, parsing with clear errors, and chain IDs. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.agent.images.errors import INVALID, UNSUPPORTED, PullFailed

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Without an Accept naming these four, distribution 2.8 answers with schema 1 (pitfall 2).
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
MANIFEST_LIMIT = 4 << 20  # distribution's own limit for a manifest body
CONFIG_LIMIT = 16 << 20

_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]


@dataclass(frozen=True, slots=True)
class Manifest:
    """An index (`entries` set) or an image manifest (`config` and `layers` set)."""

    media_type: str
    digest: str
    entries: tuple[Mapping[str, Any], ...] = ()
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def digest_of(body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def parse_manifest(body: bytes, content_type: str, digest: str, image: str) -> Manifest:
    """Classify and check a manifest body; PullFailed names the image when it is refused."""
    try:
        document = json.loads(body)
    except ValueError:
        raise PullFailed(INVALID, f"cannot pull {image}: the manifest is not JSON") from None
    if not isinstance(document, dict):
        raise PullFailed(INVALID, f"cannot pull {image}: the manifest is not a JSON object")
    media_type = _media_type(document, content_type)
    if document.get("schemaVersion") == 1 or media_type in _SCHEMA1_TYPES:
        raise PullFailed(
            UNSUPPORTED,
            f"cannot pull {image}: the registry sent a schema 1 manifest, which Tessera does "
            "not support (push the image again with a current client)",
        )
    if media_type in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise PullFailed(INVALID, f"cannot pull {image}: the index has no `manifests` list")
        return Manifest(media_type, digest, entries=tuple(entries))
    if media_type not in MANIFEST_TYPES:
        raise PullFailed(
            UNSUPPORTED, f"cannot pull {image}: unsupported manifest media type {media_type!r}"
        )
    config = _descriptor(document.get("config"), image, "config")
    if config.media_type not in CONFIG_TYPES:
        raise PullFailed(
            UNSUPPORTED,
            f"cannot pull {image}: not a container image (config media type {config.media_type!r})",
        )
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise PullFailed(INVALID, f"cannot pull {image}: the manifest has no `layers` list")
    layers = tuple(_descriptor(item, image, "layer") for item in raw_layers)
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise PullFailed(
                UNSUPPORTED,
                f"cannot pull {image}: unsupported layer media type {layer.media_type!r}",
            )
    return Manifest(media_type, digest, config=config, layers=layers)


def _media_type(document: Mapping[str, Any], content_type: str) -> str:
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = content_type.split(";", 1)[0].strip()
    if header in INDEX_TYPES | MANIFEST_TYPES | _SCHEMA1_TYPES:
        return header
    # OCI allows leaving `mediaType` out; the shape tells which one it is.
    if "manifests" in document:
        return OCI_INDEX
    if "layers" in document:
        return OCI_MANIFEST
    return header or "(none)"


def _descriptor(value: object, image: str, what: str) -> Descriptor:
    if isinstance(value, dict):
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if (
            isinstance(media_type, str)
            and is_digest(digest)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 0
        ):
            assert isinstance(digest, str)
            return Descriptor(media_type, digest, size)
    raise PullFailed(INVALID, f"cannot pull {image}: a {what} descriptor is malformed")


def entry_descriptor(entry: Mapping[str, Any], image: str) -> Descriptor:
    """The descriptor of an index entry, which must point at an image manifest."""
    descriptor = _descriptor(dict(entry), image, "manifest")
    if descriptor.media_type in INDEX_TYPES:
        raise PullFailed(UNSUPPORTED, f"cannot pull {image}: nested indexes are not supported")
    return descriptor


def parse_config(body: bytes, layer_count: int, image: str) -> tuple[dict[str, Any], list[str]]:
    """The image config's `config` object (Env, Cmd, …) and its `rootfs.diff_ids`."""
    try:
        document = json.loads(body)
    except ValueError:
        raise PullFailed(INVALID, f"cannot pull {image}: the image config is not JSON") from None
    if not isinstance(document, dict):
        raise PullFailed(INVALID, f"cannot pull {image}: the image config is not an object")
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(is_digest(d) for d in diff_ids):
        raise PullFailed(INVALID, f"cannot pull {image}: the image config has no valid diff_ids")
    if len(diff_ids) != layer_count:
        raise PullFailed(
            INVALID,
            f"cannot pull {image}: the manifest has {layer_count} layers but the config "
            f"lists {len(diff_ids)} diff_ids",
        )
    config = document.get("config")
    return (dict(config) if isinstance(config, dict) else {}), [str(d) for d in diff_ids]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """image-spec's ChainID: the first layer's DiffID, then sha256("<parent> <diff_id>")."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append(digest_of(f"{chains[-1]} {diff_id}".encode()))
    return chains
