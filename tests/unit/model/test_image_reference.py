"""Image references: Docker's grammar, normalisation and the refusals a 422 shows."""

from __future__ import annotations

import pytest

from tessera.model.image_reference import InvalidReference, Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox", "latest")),
        ("library/busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
        ("team/app", Reference("docker.io", "team/app", "latest")),
        ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest")),
        ("index.docker.io/busybox:1", Reference("docker.io", "library/busybox", "1")),
        ("registry:5000/team/app@" + DIGEST, Reference("registry:5000", "team/app", None, DIGEST)),
        ("host.example/name:tag@" + DIGEST, Reference("host.example", "name", "tag", DIGEST)),
        ("localhost/app", Reference("localhost", "app", "latest")),
        ("localhost:5000/a/b/c:v1.2-rc_3", Reference("localhost:5000", "a/b/c", "v1.2-rc_3")),
        ("127.0.0.1:5000/app", Reference("127.0.0.1:5000", "app", "latest")),
        ("[::1]:5000/app:x", Reference("[::1]:5000", "app", "x")),
        ("Registry.Example/app", Reference("Registry.Example", "app", "latest")),
        ("a__b/c-d--e/f.g:T", Reference("docker.io", "a__b/c-d--e/f.g", "T")),
    ],
)
def test_references_normalise_as_docker_does(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_canonical_string_and_api_host() -> None:
    hub = parse_reference("busybox")
    assert str(hub) == "docker.io/library/busybox:latest"
    assert hub.api_host == "registry-1.docker.io"
    pinned = parse_reference("registry:5000/team/app:v1@" + DIGEST)
    assert str(pinned) == f"registry:5000/team/app:v1@{DIGEST}"
    assert pinned.api_host == "registry:5000"
    assert pinned.target == DIGEST
    assert parse_reference(str(pinned)) == pinned


def test_default_registry_is_configurable() -> None:
    reference = parse_reference("team/app", default_registry="mirror.local:5000")
    assert reference == Reference("mirror.local:5000", "team/app", "latest")
    # Only Docker Hub gets `library/`.
    assert parse_reference("app", default_registry="mirror.local").repository == "app"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("busy box", "whitespace"),
        (" busybox", "whitespace"),
        ("UPPER/case", "lowercase"),
        ("BusyBox", "lowercase"),
        ("team/App:v1", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "a" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("busybox@sha256:" + "a" * 63 + "g", "invalid digest"),
        ("busybox@sha256:" + "a" * 66, "64 hex digits"),
        ("team//app", "invalid repository name component"),
        ("team/-app", "invalid repository name component"),
        ("host:port/app", "invalid registry"),
        ("registry:5000/", "no repository"),
        ("a" * 64, "image ID"),
        ("x/" + "a" * 260, "longer than"),
    ],
)
def test_invalid_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_digest_is_lowercased_and_tag_kept_with_digest() -> None:
    reference = parse_reference("app:v1@sha256:" + "AB" * 32)
    assert reference.digest == DIGEST
    assert reference.tag == "v1"
    assert reference.with_digest(DIGEST) == Reference("docker.io", "library/app", None, DIGEST)
