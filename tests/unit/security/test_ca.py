"""The cluster CA, agent certificates from agent-made requests, their checks, and real mutual-TLS
handshakes over a socket pair with the ssl contexts built from them."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.security.ca import (
    AGENT_CERT_LIFETIME,
    CLOCK_SKEW,
    CertificateRefused,
    CertifiedKey,
    ClusterCA,
    CsrRefused,
    Revocations,
    agent_client_context,
    agent_id_of,
    agent_id_of_peercert,
    ca_pin,
    cert_pem,
    certificate_request,
    check_ca_pin,
    check_csr,
    cli_client_context,
    csr_pem,
    key_pem,
    load_csr,
    load_key_pair,
    master_names,
    master_serving_cert,
    mutual_server_context,
    needs_renewal,
    new_ca,
    new_key,
    save_key_pair,
    serial_of_peercert,
    server_context,
    serving_names,
    sign_agent_client,
    sign_agent_serving,
    verify_chain,
)
from tessera.testing.clock import FakeClock

NOW = 1_800_000_000.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return new_ca("c1", FakeClock(wall=NOW))


@pytest.fixture(scope="module")
def other_ca() -> ClusterCA:
    return new_ca("c2", FakeClock(wall=NOW))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=NOW)


@dataclass(frozen=True)
class Agent:
    client: CertifiedKey
    serving: CertifiedKey


def _agent(ca: ClusterCA, agent_id: str, clock: FakeClock) -> Agent:
    key = new_key()
    csr = certificate_request(key, agent_id, ["node1.example", "10.0.0.7"])
    client = sign_agent_client(csr, agent_id, ca, clock)
    serving = sign_agent_serving(csr, agent_id, ["localhost", "127.0.0.1"], ca, clock)
    return Agent(CertifiedKey(key, client), CertifiedKey(key, serving))


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(kind)


# --- the CA ------------------------------------------------------------------------------------


def test_the_ca_is_a_p256_ca_that_signs_leaves_only(ca: ClusterCA) -> None:
    cert = ca.cert
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = _extension(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    key_id = _extension(cert, x509.SubjectKeyIdentifier).value
    assert key_id == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    cert.verify_directly_issued_by(cert)  # self-signed
    assert "c1" in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_the_ca_lives_ten_years(ca: ClusterCA) -> None:
    assert ca.cert.not_valid_before_utc.timestamp() == NOW - CLOCK_SKEW.total_seconds()
    assert ca.cert.not_valid_after_utc.timestamp() == NOW + 3650 * DAY


def test_the_pin_is_the_spki_hash_and_survives_pem(ca: ClusterCA, other_ca: ClusterCA) -> None:
    assert ca.pin.startswith("sha256:") and len(ca.pin) == len("sha256:") + 64
    reloaded = ClusterCA.from_pem(ca.cert_pem(), ca.key_pem())
    assert reloaded.pin == ca.pin == ca_pin(ca.cert)
    assert other_ca.pin != ca.pin


def test_a_presented_ca_is_checked_against_the_pin(ca: ClusterCA, other_ca: ClusterCA) -> None:
    assert check_ca_pin(ca.cert_pem(), ca.pin) == ca.cert
    assert check_ca_pin(ca.cert_pem(), ca.pin.upper().replace("SHA256", "sha256")) == ca.cert
    with pytest.raises(CertificateRefused, match="does not match"):
        check_ca_pin(other_ca.cert_pem(), ca.pin)
    with pytest.raises(CertificateRefused, match="parse"):
        check_ca_pin(b"-----BEGIN CERTIFICATE-----\nnope\n", ca.pin)
    with pytest.raises(ValueError, match="sha256:<64 hex digits>"):
        check_ca_pin(ca.cert_pem(), "md5:abc")


def test_a_leaf_with_the_pinned_key_is_not_a_ca(ca: ClusterCA, clock: FakeClock) -> None:
    agent = _agent(ca, "a1", clock)
    with pytest.raises(CertificateRefused, match="not in a CA"):
        check_ca_pin(agent.client.cert_pem(), ca_pin(agent.client.cert))


def test_a_ca_is_loaded_only_with_its_own_key(ca: ClusterCA, other_ca: ClusterCA) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        ClusterCA.from_pem(ca.cert_pem(), other_ca.key_pem())


# --- requests and signed certificates ----------------------------------------------------------


def test_a_request_round_trips_through_pem() -> None:
    csr = load_csr(csr_pem(certificate_request(new_key(), "node1-abcd", ["node1", "10.0.0.7"])))
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=agent:node1-abcd"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node1"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "tessera://agent/node1-abcd"
    ]


def test_the_client_certificate_names_the_agent_for_client_auth_only(
    ca: ClusterCA, clock: FakeClock
) -> None:
    cert = _agent(ca, "node1-abcd", clock).client.cert
    assert cert.subject.rfc4514_string() == "CN=agent:node1-abcd"
    assert cert.issuer == ca.cert.subject
    sans = _extension(cert, x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier("tessera://agent/node1-abcd")]
    assert list(_extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _extension(cert, x509.BasicConstraints).value.ca
    authority = _extension(cert, x509.AuthorityKeyIdentifier).value
    assert authority.key_identifier == _extension(ca.cert, x509.SubjectKeyIdentifier).value.digest
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == AGENT_CERT_LIFETIME + CLOCK_SKEW
    assert agent_id_of(cert) == "node1-abcd"
    verify_chain(cert, ca.cert, clock, "client")
    with pytest.raises(CertificateRefused, match="server"):
        verify_chain(cert, ca.cert, clock, "server")


def test_the_serving_certificate_carries_the_names_the_master_chose(
    ca: ClusterCA, clock: FakeClock
) -> None:
    cert = _agent(ca, "a1", clock).serving.cert
    assert list(_extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert serving_names(cert) == {"localhost", "127.0.0.1"}  # not the request's node1/10.0.0.7
    assert agent_id_of(cert) == "a1"
    verify_chain(cert, ca.cert, clock, "server")


def test_the_master_sets_subject_and_names_whatever_the_request_asks(
    ca: ClusterCA, clock: FakeClock
) -> None:
    key = new_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superuser")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("master.example")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert = sign_agent_client(greedy, "a1", ca, clock)
    assert cert.subject.rfc4514_string() == "CN=agent:a1"
    assert not _extension(cert, x509.BasicConstraints).value.ca
    assert serving_names(cert) == frozenset()
    assert agent_id_of(cert) == "a1"


@pytest.mark.parametrize(
    "claimed_cn, claimed_uri",
    [
        ("agent:a2", "tessera://agent/a1"),
        ("agent:a1", "tessera://agent/a2"),
        (None, "tessera://master"),
    ],
)
def test_a_request_for_another_identity_is_refused(
    ca: ClusterCA, clock: FakeClock, claimed_cn: str | None, claimed_uri: str
) -> None:
    builder = x509.CertificateSigningRequestBuilder().add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(claimed_uri)]), critical=False
    )
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, claimed_cn)] if claimed_cn else []
    csr = builder.subject_name(x509.Name(attributes)).sign(new_key(), hashes.SHA256())
    with pytest.raises(CsrRefused, match="claims"):
        sign_agent_client(csr, "a1", ca, clock)


def test_a_request_with_a_bad_signature_is_refused(ca: ClusterCA, clock: FakeClock) -> None:
    der = certificate_request(new_key(), "a1").public_bytes(serialization.Encoding.DER)
    assert der.count(b"agent:a1") == 1
    forged = x509.load_der_x509_csr(der.replace(b"agent:a1", b"agent:b1"))
    with pytest.raises(CsrRefused, match="signature"):
        sign_agent_client(forged, "b1", ca, clock)
    with pytest.raises(CsrRefused, match="parse"):
        load_csr(b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n")


@pytest.mark.parametrize(
    "key, accepted",
    [
        (ec.generate_private_key(ec.SECP384R1()), True),
        (ed25519.Ed25519PrivateKey.generate(), True),
        (rsa.generate_private_key(65537, 2048), True),
        (rsa.generate_private_key(65537, 1024), False),
        (ec.generate_private_key(ec.SECP256K1()), False),
    ],
    ids=["p384", "ed25519", "rsa2048", "rsa1024", "secp256k1"],
)
def test_weak_keys_are_refused(key: Any, accepted: bool) -> None:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent:a1")]))
        .sign(key, algorithm)
    )
    if accepted:
        assert check_csr(csr, "a1") == key.public_key()
    else:
        with pytest.raises(CsrRefused, match=r"weak|not accepted"):
            check_csr(csr, "a1")


def test_agent_ids_and_names_are_validated(ca: ClusterCA, clock: FakeClock) -> None:
    csr = certificate_request(new_key(), "a1")
    for bad_id in ("", "a/b", "../x", "a b", "-a"):
        with pytest.raises(ValueError, match="agent id"):
            sign_agent_client(csr, bad_id, ca, clock)
    for bad_name in ("*.example", "under_score", "a..b", "-a.example"):
        with pytest.raises(ValueError, match="host name"):
            sign_agent_serving(csr, "a1", [bad_name], ca, clock)


# --- verification, revocation, renewal ---------------------------------------------------------


def test_verify_chain_refuses_expired_early_and_foreign_certificates(
    ca: ClusterCA, other_ca: ClusterCA, clock: FakeClock
) -> None:
    cert = _agent(ca, "a1", clock).client.cert
    clock.advance(AGENT_CERT_LIFETIME.total_seconds() + 1)
    with pytest.raises(CertificateRefused, match="not valid now"):
        verify_chain(cert, ca.cert, clock, "client")
    early = FakeClock(wall=NOW - CLOCK_SKEW.total_seconds() - 1)
    with pytest.raises(CertificateRefused, match="not valid now"):
        verify_chain(cert, ca.cert, early, "client")
    with pytest.raises(CertificateRefused, match="not signed"):
        verify_chain(cert, other_ca.cert, FakeClock(wall=NOW), "client")
    with pytest.raises(CertificateRefused, match="not a leaf"):
        verify_chain(ca.cert, ca.cert, FakeClock(wall=NOW), "client")


def test_leaves_never_outlive_the_ca(clock: FakeClock) -> None:
    short_ca = new_ca("short", clock, lifetime=timedelta(days=10))
    cert = _agent(short_ca, "a1", clock).client.cert
    assert cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


def test_revoked_serials_are_denied_until_the_certificate_expires(
    ca: ClusterCA, clock: FakeClock
) -> None:
    first, second = (_agent(ca, name, clock).client.cert for name in ("a1", "a2"))
    revocations = Revocations().revoke(first)
    assert revocations.is_revoked(first.serial_number)
    assert not revocations.is_revoked(second.serial_number)
    assert Revocations.from_json(revocations.to_json()) == revocations
    end = first.not_valid_after_utc.timestamp()
    assert revocations.prune(end).is_revoked(first.serial_number)
    assert not revocations.prune(end + 1).is_revoked(first.serial_number)


def test_renewal_is_due_at_two_thirds_of_the_lifetime(ca: ClusterCA, clock: FakeClock) -> None:
    cert = _agent(ca, "a1", clock).client.cert
    start = cert.not_valid_before_utc.timestamp()
    two_thirds = start + (cert.not_valid_after_utc.timestamp() - start) * 2 / 3
    assert not needs_renewal(cert, NOW)
    assert not needs_renewal(cert, two_thirds - 1)
    assert needs_renewal(cert, two_thirds)
    assert 19 * DAY < two_thirds - NOW < 21 * DAY


def test_the_master_certificate_covers_its_advertised_names(
    ca: ClusterCA, clock: FakeClock
) -> None:
    names = master_names("https://m1.example:5050", "m1", ["10.0.0.1", "m1", "::1"])
    assert names == ["m1.example", "m1", "10.0.0.1", "::1"]
    master = master_serving_cert(ca, names, clock)
    assert serving_names(master.cert) == set(names)
    lifetime = master.cert.not_valid_after_utc - master.cert.not_valid_before_utc
    assert lifetime == timedelta(days=365) + CLOCK_SKEW
    verify_chain(master.cert, ca.cert, clock, "server")
    assert master_names(None, "m1", []) == ["m1"]


def test_key_pairs_are_saved_private_and_load_back(
    ca: ClusterCA, other_ca: ClusterCA, tmp_path: Path
) -> None:
    directory = tmp_path / "pki"
    save_key_pair(ca, directory, "ca")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("ca.key", "ca.crt"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    loaded = load_key_pair(directory, "ca")
    assert loaded.key_pem() == key_pem(ca.key) and loaded.cert == ca.cert
    save_key_pair(other_ca, directory, "ca")  # replaced, not appended to
    assert load_key_pair(directory, "ca").cert == other_ca.cert
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key"]


def test_the_peercert_dict_must_name_one_agent_consistently() -> None:
    good = {
        "subject": ((("commonName", "agent:a1"),),),
        "subjectAltName": (("URI", "tessera://agent/a1"),),
        "serialNumber": "0A1B",
    }
    assert agent_id_of_peercert(good) == "a1"
    assert serial_of_peercert(good) == 0x0A1B
    for bad in (
        {},
        {**good, "subject": ((("commonName", "agent:a2"),),)},
        {**good, "subjectAltName": (("URI", "tessera://agent/a1"), ("URI", "tessera://agent/a2"))},
        {**good, "subjectAltName": (("DNS", "a1"),)},
    ):
        with pytest.raises(CertificateRefused):
            agent_id_of_peercert(bad)
    with pytest.raises(CertificateRefused):
        serial_of_peercert({})


# --- real handshakes ---------------------------------------------------------------------------


@dataclass
class Exchange:
    echoed: bytes = b""
    client_error: Exception | None = None
    server_error: Exception | None = None
    peercert: dict[str, Any] | None = None


def _exchange(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> Exchange:
    """One `ping` from client to server and back over a socket pair, the server in a thread."""
    result = Exchange()
    server_end, client_end = socket.socketpair()
    for end in (server_end, client_end):
        end.settimeout(5)

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                result.peercert = tls.getpeercert()
                tls.sendall(tls.recv(4))
        except (ssl.SSLError, OSError) as error:
            result.server_error = error

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_end, server_hostname=hostname) as tls:
            tls.sendall(b"ping")
            result.echoed = tls.recv(4)
    except (ssl.SSLError, OSError) as error:
        result.client_error = error
    thread.join(5)
    assert not thread.is_alive()
    return result


# OpenSSL checks validity against the real time: these certificates are made at it.


@pytest.fixture(scope="module")
def live_ca() -> ClusterCA:
    return new_ca("live", FakeClock())


@pytest.fixture(scope="module")
def live_other_ca() -> ClusterCA:
    return new_ca("other", FakeClock())


@pytest.fixture(scope="module")
def master(live_ca: ClusterCA) -> CertifiedKey:
    return master_serving_cert(live_ca, ["localhost", "127.0.0.1"], FakeClock())


def _listener(ca: ClusterCA, master: CertifiedKey) -> ssl.SSLContext:
    return mutual_server_context(master.cert_pem(), master.key_pem(), ca.cert_pem())


def _agent_context(ca: ClusterCA, identity: CertifiedKey) -> ssl.SSLContext:
    return agent_client_context(ca.cert_pem(), identity.cert_pem(), identity.key_pem())


def test_mutual_tls_with_the_cluster_certificate_names_the_agent(
    live_ca: ClusterCA, master: CertifiedKey
) -> None:
    agent = _agent(live_ca, "node1-abcd", FakeClock())
    exchange = _exchange(_listener(live_ca, master), _agent_context(live_ca, agent.client))
    assert exchange.echoed == b"ping", exchange
    assert exchange.peercert is not None
    assert agent_id_of_peercert(exchange.peercert) == "node1-abcd"
    assert serial_of_peercert(exchange.peercert) == agent.client.cert.serial_number


def test_the_listener_cuts_off_a_client_without_a_certificate(
    live_ca: ClusterCA, master: CertifiedKey
) -> None:
    exchange = _exchange(_listener(live_ca, master), cli_client_context(live_ca.cert_pem()))
    assert exchange.echoed != b"ping"
    assert isinstance(exchange.server_error, ssl.SSLError)
    assert "certificate" in str(exchange.server_error).lower()


def test_the_listener_cuts_off_a_certificate_from_another_ca(
    live_ca: ClusterCA, live_other_ca: ClusterCA, master: CertifiedKey
) -> None:
    stranger = _agent(live_other_ca, "node1-abcd", FakeClock())
    exchange = _exchange(_listener(live_ca, master), _agent_context(live_ca, stranger.client))
    assert exchange.echoed != b"ping"
    assert isinstance(exchange.server_error, ssl.SSLCertVerificationError)
    assert "issuer" in exchange.server_error.verify_message


def test_the_listener_cuts_off_a_serving_certificate_used_as_a_client(
    live_ca: ClusterCA, master: CertifiedKey
) -> None:
    agent = _agent(live_ca, "a1", FakeClock())
    exchange = _exchange(_listener(live_ca, master), _agent_context(live_ca, agent.serving))
    assert exchange.echoed != b"ping"
    assert isinstance(exchange.server_error, ssl.SSLCertVerificationError)
    assert "purpose" in exchange.server_error.verify_message


def test_the_cli_checks_the_master_name_and_ca(
    live_ca: ClusterCA, live_other_ca: ClusterCA, master: CertifiedKey
) -> None:
    api = server_context(master.cert_pem(), master.key_pem())
    assert api.minimum_version == ssl.TLSVersion.TLSv1_2
    assert _exchange(api, cli_client_context(live_ca.cert_pem()), "127.0.0.1").echoed == b"ping"
    wrong_name = _exchange(api, cli_client_context(live_ca.cert_pem()), "m2.example")
    assert isinstance(wrong_name.client_error, ssl.SSLCertVerificationError)
    wrong_ca = _exchange(api, cli_client_context(live_other_ca.cert_pem()), "localhost")
    assert isinstance(wrong_ca.client_error, ssl.SSLCertVerificationError)


def test_contexts_load_from_files_too(
    live_ca: ClusterCA, master: CertifiedKey, tmp_path: Path
) -> None:
    agent = _agent(live_ca, "a1", FakeClock())
    save_key_pair(master, tmp_path, "master")
    save_key_pair(agent.client, tmp_path, "agent")
    (tmp_path / "ca.pem").write_bytes(cert_pem(live_ca.cert))
    listener = mutual_server_context(
        tmp_path / "master.crt", tmp_path / "master.key", tmp_path / "ca.pem"
    )
    client = agent_client_context(
        tmp_path / "ca.pem", tmp_path / "agent.crt", tmp_path / "agent.key"
    )
    assert _exchange(listener, client).echoed == b"ping"
