"""WWW-Authenticate parsing, the token cache, and docker config.json lookups."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tessera.agent.images.auth import Challenge, TokenCache, parse_challenges
from tessera.agent.images.credentials import (
    Credential,
    DockerConfig,
    credential_hash,
    registry_key,
)
from tessera.agent.images.errors import PullFailed
from tessera.testing.clock import FakeClock


def test_bearer_challenge_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert parse_challenges([header]) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:samalba/my-app:pull,push",
            },
        )
    ]


def test_several_challenges_spaces_escapes_and_tokens() -> None:
    header = (
        'Basic realm="Registry \\"Realm\\"" , Bearer  realm = "https://a/t" ,'
        " service=plain, error=insufficient_scope"
    )
    assert parse_challenges([header, "Negotiate"]) == [
        Challenge("basic", {"realm": 'Registry "Realm"'}),
        Challenge(
            "bearer", {"realm": "https://a/t", "service": "plain", "error": "insufficient_scope"}
        ),
        Challenge("negotiate", {}),
    ]


def test_garbage_does_not_hang() -> None:
    assert parse_challenges(['=,"', 'Bearer realm="unterminated']) == [
        Challenge("bearer", {"realm": "unterminated"})
    ]


def test_token_cache_expires_tokens_early() -> None:
    clock = FakeClock()
    cache = TokenCache(clock)
    key = ("realm", "service", "repository:a:pull", "anonymous")
    cache.put(key, "t1", 60)
    assert cache.get(key) == "t1"
    clock.advance(49)
    assert cache.get(key) == "t1"
    clock.advance(2)  # renewed 10 s before its announced end
    assert cache.get(key) is None
    cache.put(key, "t2", 60)
    cache.drop(key, "other")
    assert cache.get(key) == "t2"
    cache.drop(key, "t2")
    assert cache.get(key) is None


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("registry:5000", "registry:5000"),
        ("https://registry:5000", "registry:5000"),
        ("http://registry:5000/v2/", "registry:5000"),
        ("registry.example/v1/", "registry.example"),
    ],
)
def test_config_keys(key: str, registry: str) -> None:
    assert registry_key(key) == registry


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_config_lookups(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _auth("hub", "p:w:x")},
                "registry:5000": {"username": "alice", "password": "secret"},
                "https://other.example": {"identitytoken": "refresh"},
            },
            "credHelpers": {"helped.example": "ecr-login"},
        },
    )
    config = DockerConfig(path)
    assert config.lookup("docker.io").credential == Credential("hub", "p:w:x")
    assert config.lookup("registry:5000").credential == Credential("alice", "secret")
    assert config.lookup("unknown.example").credential is None
    assert config.lookup("unknown.example").note is None
    token_only = config.lookup("other.example")
    assert token_only.credential is None
    assert token_only.note is not None and "identity token" in token_only.note
    helped = config.lookup("helped.example")
    assert helped.credential is None
    assert helped.note is not None and "docker-credential-ecr-login" in helped.note
    assert "secret" not in repr(config.lookup("registry:5000"))


def test_docker_config_is_read_again_when_changed(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.json", {"auths": {}})
    config = DockerConfig(path)
    assert config.lookup("registry:5000").credential is None
    _write(path, {"auths": {"registry:5000": {"auth": _auth("bob", "pw")}}, "x": 1})
    assert config.lookup("registry:5000").credential == Credential("bob", "pw")


def test_creds_store_is_named_when_no_auth(tmp_path: Path) -> None:
    config = DockerConfig(_write(tmp_path / "c.json", {"credsStore": "desktop"}))
    note = config.lookup("registry:5000").note
    assert note is not None and "docker-credential-desktop" in note


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"auths": []}', '{"auths": {"r": {"auth": "!!"}}}']
)
def test_broken_docker_config_is_invalid(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(PullFailed) as caught:
        DockerConfig(path).lookup("r")
    assert caught.value.kind == "invalid"
    assert str(path) in caught.value.message


def test_missing_docker_config_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(PullFailed, match="cannot read docker config"):
        DockerConfig(tmp_path / "absent.json").lookup("r")


def test_credential_hash_is_keyed() -> None:
    first = credential_hash(b"k1", "r", Credential("u", "p"))
    assert first == credential_hash(b"k1", "r", Credential("u", "p"))
    assert first != credential_hash(b"k2", "r", Credential("u", "p"))
    assert first != credential_hash(b"k1", "r", Credential("u", "q"))
    assert first != credential_hash(b"k1", "other", Credential("u", "p"))
    assert credential_hash(b"k1", "r", None) is None
