"""Image references as Docker writes them, parsed and normalised; pure (no I/O, no asyncio).

The grammar is distribution's (`distribution/reference`): `[registry/]path[:tag][@digest]`.
The first component is a registry when it holds a `.` or a `:` or is `localhost`; otherwise
the reference is on the default registry. On Docker Hub a one-component name gains
`library/`. Neither tag nor digest means `latest`. Repository components are lowercase:
`UPPER/case` is refused, as Docker refuses it. The master validates image fields with
`parse_reference` too, so the message of `InvalidReference` is written for a 422.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
# Where Docker Hub's registry API answers; `docker.io` itself is only a name.
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_MAX_NAME = 255
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}")
_KNOWN_DIGESTS = {"sha256": 64, "sha512": 128}
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


class InvalidReference(ValueError):
    """The text is not an image reference; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference. `tag` is None only when a digest is given; `str()` is the
    canonical form, e.g. `docker.io/library/busybox:latest`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API for this reference."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What the manifest is fetched by: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to `digest`, without a tag."""
        return Reference(self.registry, self.repository, None, digest)


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse and normalise `text`; raises InvalidReference with a one-line reason."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("image reference is empty")
    if text != text.strip() or any(character.isspace() for character in text):
        raise InvalidReference(f"image reference {text!r} contains whitespace")
    remainder, digest = _split_digest(text)
    name, tag = _split_tag(remainder, text)
    registry, path = _split_registry(name, default_registry)
    _check_path(path, text)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(f"{registry}/{path}") > _MAX_NAME:
        raise InvalidReference(f"image reference {text!r}: name longer than {_MAX_NAME}")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def normalise_registry(registry: str) -> str:
    """`index.docker.io` and friends are all Docker Hub, spelt `docker.io`."""
    lowered = registry.lower()
    return DOCKER_HUB if lowered in _HUB_ALIASES else registry


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    remainder, _, digest = text.partition("@")
    if not _DIGEST.fullmatch(digest):
        raise InvalidReference(f"image reference {text!r}: invalid digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    expected = _KNOWN_DIGESTS.get(algorithm)
    if expected is None:
        raise InvalidReference(
            f"image reference {text!r}: unsupported digest algorithm {algorithm!r}"
        )
    if len(encoded) != expected:
        raise InvalidReference(
            f"image reference {text!r}: a {algorithm} digest has {expected} hex digits"
        )
    return remainder, f"{algorithm}:{encoded.lower()}"


def _split_tag(remainder: str, text: str) -> tuple[str, str | None]:
    # A colon after the last slash starts the tag; one before it belongs to a registry port.
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= slash:
        return remainder, None
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise InvalidReference(
            f"image reference {text!r}: invalid tag {tag!r} "
            "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
        )
    return name, tag


def _split_registry(name: str, default_registry: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # Newer distribution code also takes an uppercase first component for a registry;
    # Docker's CLI refuses `UPPER/case` as not lowercase, and so do we.
    looks_like_registry = "." in first or ":" in first or first == "localhost"
    if not slash or not looks_like_registry:
        return normalise_registry(default_registry), name
    if not _REGISTRY.fullmatch(first):
        raise InvalidReference(f"image reference {name!r}: invalid registry {first!r}")
    return normalise_registry(first), rest


def _check_path(path: str, text: str) -> None:
    if not path:
        raise InvalidReference(f"image reference {text!r} has no repository name")
    if _IMAGE_ID.fullmatch(path):
        raise InvalidReference(
            f"image reference {text!r}: a 64-digit hexadecimal string is an image ID, "
            "not a repository name"
        )
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise InvalidReference(f"image reference {text!r}: repository name must be lowercase")
        raise InvalidReference(
            f"image reference {text!r}: invalid repository name component {component!r} "
            "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
        )
