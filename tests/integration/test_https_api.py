"""The master's API over HTTPS with the cluster CA, as a real `tessera master` serves it: what
it answers, what it refuses (plain HTTP, another CA, TLS 1.1), and `tessera login --ca-pin`."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tessera.clock import SystemClock
from tessera.security.ca import cli_client_context, load_cert, new_ca
from tessera.testing.cluster import Cluster, tessera_command


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    found = Cluster(tmp_path_factory.mktemp("https"))
    found.start_master()
    try:
        yield found
    finally:
        found.stop()


def test_the_api_answers_over_https_with_a_certificate_from_the_cluster_ca(
    cluster: Cluster,
) -> None:
    assert cluster.url.startswith("https://")
    assert cluster.http.get("/ping").text == "pong"
    assert cluster.get("/v1/agents") == {"agents": []}
    tls = cluster.root / "master" / "tls"
    assert (tls / "api.key").stat().st_mode & 0o777 == 0o600
    assert tls.stat().st_mode & 0o777 == 0o700
    cert = load_cert((tls / "api.crt").read_bytes())
    ca = load_cert(cluster.ca_file.read_bytes())
    cert.verify_directly_issued_by(ca)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=364) < life < timedelta(days=367)
    # The CA the API hands out is the one the master wrote for its clients.
    assert cluster.http.get("/ca/dcos-ca.crt").content == cluster.ca_file.read_bytes()


def test_plain_http_to_the_api_port_gets_no_answer(cluster: Cluster) -> None:
    plain = f"http://127.0.0.1:{cluster.port}/ping"
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain, timeout=5)


def test_a_client_trusting_another_ca_or_only_the_system_store_is_refused(
    cluster: Cluster,
) -> None:
    other = new_ca("elsewhere", SystemClock())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cluster.url + "/ping", verify=cli_client_context(other.cert_pem()), timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cluster.url + "/ping", timeout=5)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused(cluster: Cluster) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    # Let this client offer TLS 1.1 at all (OpenSSL 3 refuses it by default): the refusal
    # must come from the master.
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as raw,
        old.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    modern = cli_client_context(cluster.ca_file)
    with (
        socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as raw,
        modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _login(cluster: Cluster, home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    password = cluster.root / "master" / "admin-password"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TESSERA_CA", "TESSERA_TOKEN", "TESSERA_MASTER")
    }
    env["TESSERA_HOME"] = str(home)
    return subprocess.run(
        tessera_command(
            "login", cluster.url, "-u", "admin", "--password-file", str(password), *flags
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_login_checks_the_ca_pin_and_keeps_the_ca_with_the_profile(
    cluster: Cluster, tmp_path: Path
) -> None:
    _, pin = cluster.join_token(uses=1)
    home = tmp_path / "home"
    wrong = _login(cluster, home, "--ca-pin", "sha256:" + "0" * 64)
    assert wrong.returncode != 0
    assert "does not match the pin" in wrong.stderr and "refusing" in wrong.stderr
    assert not (home / "profiles").exists() or not list((home / "profiles").glob("*.json"))

    # Without a pin or a CA file the master's certificate is checked against the system's
    # store, which does not know the cluster CA.
    unknown = _login(cluster, home)
    assert unknown.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unknown.stderr

    right = _login(cluster, home, "--ca-pin", pin)
    assert right.returncode == 0, right.stderr
    profile_file = next((home / "profiles").glob("*.json"))
    profile = json.loads(profile_file.read_text())
    assert Path(profile["ca"]).read_bytes() == cluster.ca_file.read_bytes()
    assert profile["url"] == cluster.url
    # Every later command trusts the profile's CA, with no TESSERA_CA.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["TESSERA_HOME"] = str(home)
    listed = subprocess.run(
        tessera_command("agent", "list", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    by_file = _login(cluster, tmp_path / "other", "--ca-file", str(cluster.ca_file))
    assert by_file.returncode == 0, by_file.stderr


def test_insecure_no_auth_stays_plain_http_on_loopback(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, insecure=True)
    try:
        cluster.start_master()
        assert cluster.url.startswith("http://")
        assert httpx.get(cluster.url + "/v2/apps").status_code == 200
        assert not cluster.ca_file.exists()
    finally:
        cluster.stop()


def test_a_master_whose_cluster_key_does_not_open_the_keys_exits_before_serving(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    try:
        master = cluster.start_master()
        master.stop()
        (tmp_path / "master" / "cluster-key").write_text("ab" * 32 + "\n")
        assert master.process is not None
        master.start()
        assert master.process.wait(30) == 2
        assert "does not open the cluster's keys" in master.log()
    finally:
        cluster.stop()
