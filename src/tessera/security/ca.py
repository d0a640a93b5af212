"""The cluster CA: its key and pin, agent certificates from agent-made requests, their checks.

The master owns one EC P-256 CA (10 years, path length 0) and signs three kinds of leaf: an
agent's client certificate for the agent channel (`CN=agent:<id>`, `URI:tessera://agent/<id>`,
clientAuth only, 30 days), an agent's serving certificate for its sandbox API (serverAuth, DNS/IP
names, 30 days) and the master's own serving certificate (1 year). Agents make their key and a
certificate request themselves, so a private key never crosses the network; the master trusts
only the request's key and signature and writes subject and names itself. Clients check the CA by
its pin, `sha256:<hex SHA-256 of the SubjectPublicKeyInfo>` (kubeadm's discovery hash).

Everything here takes and returns keys, certificates and PEM bytes, and reads time from an
injected Clock; `save_key_pair`/`load_key_pair` are the only file helpers, and the `ssl`
context builders (at the end) are the only bridge to the stdlib TLS stack.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.clock import Clock

CA_LIFETIME = timedelta(days=3650)
AGENT_CERT_LIFETIME = timedelta(days=30)
MASTER_CERT_LIFETIME = timedelta(days=365)
# Leaves start a little in the past so an agent whose clock lags the master's can use them at once.
CLOCK_SKEW = timedelta(minutes=5)
RENEW_AT_FRACTION = 2 / 3  # Nomad renews node identities past 67 % of their life

AGENT_URI_PREFIX = "tessera://agent/"
AGENT_CN_PREFIX = "agent:"
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PIN = re.compile(r"sha256:([0-9a-fA-F]{64})")
_STRONG_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048

Usage = Literal["client", "server"]
CertificatePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
_USAGE_OID = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


class CsrRefused(ValueError):
    """A certificate request the master will not sign; the message says why (for the audit)."""


class CertificateRefused(ValueError):
    """A certificate that is not from this CA, not valid now, or not for this use."""


@dataclass(frozen=True)
class CertifiedKey:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return key_pem(self.key)


@dataclass(frozen=True)
class ClusterCA(CertifiedKey):
    @property
    def pin(self) -> str:
        return ca_pin(self.cert)

    @classmethod
    def from_pem(cls, cert: bytes, key: bytes) -> ClusterCA:
        pair = key_pair_from_pem(cert, key)
        if not _is_ca(pair.cert):
            raise CertificateRefused("not a CA certificate")
        return cls(pair.key, pair.cert)


# --- the CA ------------------------------------------------------------------------------------


def new_ca(cluster_id: str, clock: Clock, lifetime: timedelta = CA_LIFETIME) -> ClusterCA:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tessera"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Tessera cluster CA {cluster_id}"),
        ]
    )
    now = _now(clock)
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ClusterCA(key, cert)


def ca_pin(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def check_ca_pin(presented_pem: bytes, pin: str) -> x509.Certificate:
    """The CA certificate a joining agent or a new client downloaded, if it is the pinned CA.

    A malformed pin is a configuration error (ValueError), never a silent mismatch."""
    match = _PIN.fullmatch(pin.strip())
    if match is None:
        raise ValueError(f"a CA pin looks like sha256:<64 hex digits>, not {pin!r}")
    try:
        cert = x509.load_pem_x509_certificate(presented_pem)
    except ValueError as error:
        raise CertificateRefused("the presented CA certificate does not parse") from error
    if not hmac.compare_digest(ca_pin(cert), "sha256:" + match.group(1).lower()):
        raise CertificateRefused("the presented CA does not match the pin")
    if not _is_ca(cert):
        raise CertificateRefused("the pinned key is not in a CA certificate")
    return cert


# --- the agent side ----------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def certificate_request(
    key: ec.EllipticCurvePrivateKey, agent_id: str, names: Iterable[str] = ()
) -> x509.CertificateSigningRequest:
    """What the agent asks for; the master decides what it gets (see `sign_agent_client`)."""
    _check_agent_id(agent_id)
    sans = [*_general_names(names), x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_agent_name(agent_id))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )


# --- the master side ---------------------------------------------------------------------------


def sign_agent_client(
    csr: x509.CertificateSigningRequest,
    agent_id: str,
    ca: ClusterCA,
    clock: Clock,
    lifetime: timedelta = AGENT_CERT_LIFETIME,
) -> x509.Certificate:
    """The agent channel's client certificate for `agent_id`, the identity the master chose."""
    public_key = check_csr(csr, agent_id)
    sans = [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
    return _sign_leaf(public_key, _agent_name(agent_id), sans, "client", ca, clock, lifetime)


def sign_agent_serving(
    csr: x509.CertificateSigningRequest,
    agent_id: str,
    names: Sequence[str],
    ca: ClusterCA,
    clock: Clock,
    lifetime: timedelta = AGENT_CERT_LIFETIME,
) -> x509.Certificate:
    """The sandbox API's serving certificate; `names` are the host names and IPs the master
    knows the agent by, not the ones in the request."""
    public_key = check_csr(csr, agent_id)
    sans = [*_general_names(names), x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
    return _sign_leaf(public_key, _agent_name(agent_id), sans, "server", ca, clock, lifetime)


def master_serving_cert(
    ca: ClusterCA, names: Sequence[str], clock: Clock, lifetime: timedelta = MASTER_CERT_LIFETIME
) -> CertifiedKey:
    if not names:
        raise ValueError("a serving certificate needs at least one host name or IP address")
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tessera master")])
    sans = _general_names(names)
    return CertifiedKey(
        key, _sign_leaf(key.public_key(), subject, sans, "server", ca, clock, lifetime)
    )


def master_names(advertise_url: str | None, hostname: str, addresses: Iterable[str]) -> list[str]:
    """The names a master's serving certificate covers, in order, without repeats."""
    host = urlsplit(advertise_url).hostname if advertise_url else None
    names = [name for name in (host, hostname, *addresses) if name]
    return list(dict.fromkeys(names))


def serving_names(cert: x509.Certificate) -> frozenset[str]:
    """The DNS and IP names a certificate covers: the master re-issues its own when these change."""
    sans = _sans(cert)
    dns = sans.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return frozenset([*dns, *ips])


def check_csr(csr: x509.CertificateSigningRequest, agent_id: str) -> CertificatePublicKey:
    """The request's public key, if the request is signed by it, the key is strong enough, and
    it claims no agent identity other than `agent_id`. Its other names are ignored."""
    _check_agent_id(agent_id)
    try:
        signed = csr.is_signature_valid
        public_key = csr.public_key()
        claimed = _claimed_agent_ids(csr)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CsrRefused(f"unreadable certificate request: {error}") from error
    if not signed:
        raise CsrRefused("the certificate request's signature is invalid")
    others = claimed - {agent_id}
    if others:
        raise CsrRefused(f"the request claims agent {sorted(others)[0]!r}, not {agent_id!r}")
    return _strong_key(public_key)


# --- reading certificates back -----------------------------------------------------------------


def agent_id_of(cert: x509.Certificate) -> str:
    """The agent a certificate names; call it only on a certificate `verify_chain` accepted."""
    uris = _sans(cert).get_values_for_type(x509.UniformResourceIdentifier)
    common_names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return _agent_id_from(uris, [str(name) for name in common_names])


def agent_id_of_peercert(peercert: Mapping[str, Any]) -> str:
    """The same from `SSLSocket.getpeercert()`'s dict (websockets' `get_extra_info("peercert")`),
    which the ssl module fills only for a certificate it verified."""
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    common_names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return _agent_id_from(uris, common_names)


def serial_of_peercert(peercert: Mapping[str, Any]) -> int:
    try:
        return int(peercert["serialNumber"], 16)
    except (KeyError, TypeError, ValueError) as error:
        raise CertificateRefused("the peer certificate has no serial number") from error


def verify_chain(cert: x509.Certificate, ca: x509.Certificate, clock: Clock, usage: Usage) -> None:
    """Raise CertificateRefused unless the CA signed `cert`, both are valid now, and `cert` is a
    leaf for `usage`. Revocation is a separate question (`Revocations.is_revoked`)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise CertificateRefused("not signed by the cluster CA") from error
    now = _now(clock)
    for checked, what in ((cert, "certificate"), (ca, "CA certificate")):
        if not checked.not_valid_before_utc <= now <= checked.not_valid_after_utc:
            raise CertificateRefused(f"the {what} is not valid now")
    if _is_ca(cert):
        raise CertificateRefused("a CA certificate is not a leaf")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as error:
        raise CertificateRefused("the certificate has no extended key usage") from error
    if _USAGE_OID[usage] not in usages:
        raise CertificateRefused(f"the certificate is not for {usage} authentication")


def needs_renewal(cert: x509.Certificate, now: float) -> bool:
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return now >= start + (end - start) * RENEW_AT_FRACTION


@dataclass(frozen=True)
class Revocations:
    """The deny-list: revoked serial -> the certificate's expiry, after which it may be dropped."""

    entries: Mapping[int, float] = field(default_factory=dict)

    def revoke(self, cert: x509.Certificate) -> Revocations:
        expiry = cert.not_valid_after_utc.timestamp()
        return Revocations({**self.entries, cert.serial_number: expiry})

    def is_revoked(self, serial: int) -> bool:
        return serial in self.entries

    def prune(self, now: float) -> Revocations:
        """Forget certificates that have expired anyway (verification refuses them on time)."""
        return Revocations({serial: end for serial, end in self.entries.items() if end >= now})

    def to_json(self) -> dict[str, float]:
        return {format(serial, "x"): end for serial, end in sorted(self.entries.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, float]) -> Revocations:
        return cls({int(serial, 16): float(end) for serial, end in data.items()})


# --- PEM and files -----------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError as error:
        raise CsrRefused("the certificate request does not parse") from error


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def key_pair_from_pem(cert: bytes, key: bytes) -> CertifiedKey:
    private_key = serialization.load_pem_private_key(key, password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError("Tessera's keys are EC keys")
    certificate = load_cert(cert)
    if certificate.public_key() != private_key.public_key():
        raise ValueError("the key does not belong to the certificate")
    return CertifiedKey(private_key, certificate)


def save_key_pair(pair: CertifiedKey, directory: Path, name: str) -> None:
    """`<name>.key` and `<name>.crt` (both 0600) in `directory` (made 0700 if new), each replaced
    atomically so a crash never leaves half a key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(directory / f"{name}.key", pair.key_pem())
    write_private(directory / f"{name}.crt", pair.cert_pem())


def load_key_pair(directory: Path, name: str) -> CertifiedKey:
    return key_pair_from_pem(
        (directory / f"{name}.crt").read_bytes(), (directory / f"{name}.key").read_bytes()
    )


def write_private(path: Path, data: bytes | str) -> None:
    """Replace `path` atomically and durably with a file only its owner can read (0600):
    a reader never sees half a key or token."""
    if isinstance(data, str):
        data = data.encode()
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- ssl contexts ------------------------------------------------------------------------------

Pem = bytes | Path  # PEM bytes, or the file that holds them


def server_context(cert: Pem, key: Pem) -> ssl.SSLContext:
    """The master's HTTPS API (and an agent's sandbox API): TLS 1.2+, no client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    return context


def mutual_server_context(cert: Pem, key: Pem, client_ca: Pem) -> ssl.SSLContext:
    """The agent channel's listener: a client without a certificate from `client_ca`, or with a
    certificate not for client authentication, is cut off during the handshake."""
    context = server_context(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, client_ca)
    return context


def agent_client_context(ca: Pem, cert: Pem, key: Pem) -> ssl.SSLContext:
    context = cli_client_context(ca)
    _load_chain(context, cert, key)
    return context


def cli_client_context(ca: Pem) -> ssl.SSLContext:
    """Trusts the cluster CA only (not the system store) and checks the server's host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca)
    return context


def _load_ca(context: ssl.SSLContext, ca: Pem) -> None:
    if isinstance(ca, Path):
        context.load_verify_locations(cafile=ca)
    else:
        context.load_verify_locations(cadata=ca.decode("ascii"))


def _load_chain(context: ssl.SSLContext, cert: Pem, key: Pem) -> None:
    if isinstance(cert, Path) and isinstance(key, Path):
        context.load_cert_chain(cert, key)
        return
    # ssl reads a certificate chain only from files: a private temporary directory (0700) holds
    # the PEM for the moment it takes to load.
    with tempfile.TemporaryDirectory(prefix="tessera-tls-") as directory:
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = Path(directory) / name
            path.write_bytes(data.read_bytes() if isinstance(data, Path) else data)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])


# --- helpers -----------------------------------------------------------------------------------


def _now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.wall(), tz=UTC)


def _check_agent_id(agent_id: str) -> None:
    if not _AGENT_ID.fullmatch(agent_id):
        raise ValueError(f"not an agent id: {agent_id!r}")


def _agent_name(agent_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AGENT_CN_PREFIX + agent_id)])


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        labels = name.removesuffix(".").split(".")
        if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"not a host name or IP address: {name!r}")
        general.append(x509.DNSName(name.removesuffix(".").lower()))
    return general


def _sign_leaf(
    public_key: CertificatePublicKey,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    usage: Usage,
    ca: ClusterCA,
    clock: Clock,
    lifetime: timedelta,
) -> x509.Certificate:
    now = _now(clock)
    ca_key_id = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([_USAGE_OID[usage]]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def _strong_key(public_key: object) -> CertificatePublicKey:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _STRONG_CURVES):
            raise CsrRefused(f"curve {public_key.curve.name} is not accepted (P-256 or larger)")
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CsrRefused(f"RSA-{public_key.key_size} is too weak (RSA-{MIN_RSA_BITS} or more)")
        return public_key
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    raise CsrRefused(f"{type(public_key).__name__} keys are not accepted")


def _claimed_agent_ids(csr: x509.CertificateSigningRequest) -> set[str]:
    claimed = {
        str(attribute.value).removeprefix(AGENT_CN_PREFIX)
        for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if str(attribute.value).startswith(AGENT_CN_PREFIX)
    }
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return claimed
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        # Any tessera:// name is an identity claim; one that is not an agent's claims "itself".
        if uri.startswith("tessera://"):
            claimed.add(uri.removeprefix(AGENT_URI_PREFIX))
    return claimed


def _agent_id_from(uris: Sequence[str], common_names: Sequence[str]) -> str:
    ids = {uri.removeprefix(AGENT_URI_PREFIX) for uri in uris if uri.startswith(AGENT_URI_PREFIX)}
    if len(ids) != 1:
        raise CertificateRefused("the certificate does not name exactly one agent")
    (agent_id,) = ids
    if AGENT_CN_PREFIX + agent_id not in common_names or not _AGENT_ID.fullmatch(agent_id):
        raise CertificateRefused("the certificate's subject and agent name disagree")
    return agent_id


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
