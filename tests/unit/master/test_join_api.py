"""Joining in-process: the CA, join tokens in the store, POST /v1/join, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from tessera.clock import SystemClock
from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.master.join import JoinService
from tessera.master.keys import KEY, KIND, ClusterKeys, load_or_create
from tessera.security.ca import (
    agent_id_of,
    certificate_request,
    check_ca_pin,
    csr_pem,
    load_cert,
    new_key,
    verify_chain,
)
from tessera.security.join_tokens import JoinRefused
from tessera.store import MemoryStore, Put
from tessera.testing.auth import auth_headers


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = MasterConfig(work_dir=tmp_path, agent_port=0)
    app = create_app(config, store=MemoryStore())
    with TestClient(app) as test_client:
        test_client.headers.update(auth_headers(tmp_path))
        yield test_client


def _csr(agent_id: str | None = None) -> str:
    if agent_id is None:  # what an agent sends: no identity claim, the master decides
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tessera agent")])
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        return csr_pem(builder.sign(new_key(), hashes.SHA256())).decode()
    return csr_pem(certificate_request(new_key(), agent_id)).decode()


def _token(client: TestClient, **body: object) -> str:
    response = client.post("/v1/join-tokens", json=body)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def test_ca_is_public_and_matches_the_pin(client: TestClient) -> None:
    created = client.post("/v1/join-tokens", json={"ttl": 60}).json()
    anonymous = client.get("/ca/dcos-ca.crt", headers={"Authorization": ""})
    assert anonymous.status_code == 200
    assert check_ca_pin(anonymous.content, created["caPin"])
    assert anonymous.headers["Tessera-Agent-Url"].startswith("wss://")


def test_join_signs_client_and_serving_certificates(client: TestClient) -> None:
    token = _token(client, ttl=60)
    answer = client.post(
        "/v1/join",
        json={"token": token, "csr": _csr("a-1"), "hostname": "node1", "agent_id": "a-1"},
        headers={"Authorization": ""},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["agent_id"] == "a-1"
    ca = load_cert(body["ca"].encode())
    clock = SystemClock()
    client_cert = load_cert(body["certificate"].encode())
    verify_chain(client_cert, ca, clock, "client")
    assert agent_id_of(client_cert) == "a-1"
    serving = load_cert(body["serving_certificate"].encode())
    verify_chain(serving, ca, clock, "server")
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node1" in names.get_values_for_type(x509.DNSName)


def test_every_refusal_is_the_same_401(client: TestClient) -> None:
    token = _token(client, ttl=60, uses=1, hostname="only-here")
    tokens = [
        token,  # wrong host
        token[:-4] + "AAAA",  # wrong secret
        "tsr1.0123456789abcdef." + "A" * 43,  # unknown id
        "garbage",
    ]
    answers = [
        client.post("/v1/join", json={"token": t, "csr": _csr(), "hostname": "elsewhere"})
        for t in tokens
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1
    # The token was not spent by the refused attempts.
    assert client.get("/v1/join-tokens").json()["tokens"][0]["usesLeft"] == 1


def test_single_use_token_is_spent_once(client: TestClient) -> None:
    token = _token(client, ttl=60, uses=1)
    first = client.post("/v1/join", json={"token": token, "csr": _csr(), "hostname": "h"})
    second = client.post("/v1/join", json={"token": token, "csr": _csr(), "hostname": "h"})
    assert (first.status_code, second.status_code) == (200, 401)


def test_a_csr_for_another_agent_is_refused(client: TestClient) -> None:
    token = _token(client, ttl=60, uses=2)
    answer = client.post(
        "/v1/join",
        json={"token": token, "csr": _csr("victim"), "hostname": "h", "agent_id": "mine"},
    )
    assert answer.status_code == 422


def test_token_list_revoke_and_rules(client: TestClient) -> None:
    created = client.post("/v1/join-tokens", json={"ttl": 60, "uses": 3}).json()
    listed = client.get("/v1/join-tokens").json()["tokens"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0] and "sha256" not in listed[0]
    assert client.delete(f"/v1/join-tokens/{created['id']}").status_code == 200
    assert client.delete(f"/v1/join-tokens/{created['id']}").status_code == 404
    joined = client.post(
        "/v1/join", json={"token": created["token"], "csr": _csr(), "hostname": "h"}
    )
    assert joined.status_code == 401
    anonymous = {"Authorization": ""}
    assert client.get("/v1/join-tokens", headers=anonymous).status_code == 401
    assert client.post("/v1/join-tokens", json={}, headers=anonymous).status_code == 401


def test_revoke_agent_puts_its_serials_on_the_deny_list(client: TestClient) -> None:
    token = _token(client, ttl=60)
    body = client.post(
        "/v1/join", json={"token": token, "csr": _csr("r-1"), "hostname": "h", "agent_id": "r-1"}
    ).json()
    serial = load_cert(body["certificate"].encode()).serial_number
    assert client.post("/v1/agents/r-1/revoke").status_code == 200
    assert client.post("/v1/agents/nobody/revoke").status_code == 404
    service: JoinService = client.app.state.joins  # type: ignore[attr-defined]
    revoked = client.portal.call(service.revocations)  # type: ignore[union-attr]
    assert revoked.is_revoked(serial)


async def test_single_use_token_raced_twice_one_wins(tmp_path: Path) -> None:
    """Two consumers on two services (two masters) over one store: exactly one gets in."""
    store = MemoryStore()
    config = MasterConfig(work_dir=tmp_path)

    class FakeMaster:
        def __init__(self) -> None:
            self.config = config
            self.store = store
            self.clock = SystemClock()

    first = JoinService(FakeMaster())  # type: ignore[arg-type]
    second = JoinService(FakeMaster())  # type: ignore[arg-type]
    issued = await first.create_token(60, 1, None)
    outcomes = await asyncio.gather(
        first.consume(issued.token, "h"), second.consume(issued.token, "h"), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["JoinRefused", "JoinTokenInfo"]
    assert isinstance(next(o for o in outcomes if isinstance(o, Exception)), JoinRefused)


async def test_a_bundle_without_a_ca_gets_one(tmp_path: Path) -> None:
    store = MemoryStore()
    key = b"k" * 32
    old = ClusterKeys.new()
    await store.commit(
        [Put(KIND, KEY, ClusterKeys(old.cluster_id, old.signing_key, old.kek).seal(key))]
    )
    upgraded = await load_or_create(store, key)
    assert upgraded.ca is not None and upgraded.cluster_id == old.cluster_id
    again = await load_or_create(store, key)
    assert again.ca is not None and again.ca.pin == upgraded.ca.pin
