"""Agents joining the cluster: join tokens in the store, certificates signed by the cluster CA,
their renewal and revocation.

Join tokens (security/join_tokens.py) live in the store (kind `join_tokens`), so any leader
accepts them; spending one use is one store commit made on the revision it was read at
(`expect_revision`), so two agents racing for a single-use token cannot both get in, even
through two masters of an etcd cluster. Every certificate the master signs for an agent is
recorded (kind `agent_certs`, by agent id) so that `revoke` can put all of them on the deny
list (kind `cert_revocations`), which the agent channel reads at every connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tessera.http_errors import ApiError
from tessera.master.keys import load_existing, read_cluster_key
from tessera.model.protocol import AGENT_STREAM_PATH
from tessera.security.ca import (
    ClusterCA,
    CsrRefused,
    Revocations,
    cert_pem,
    check_csr,
    load_csr,
    sign_agent_client,
    sign_agent_serving,
)
from tessera.security.join_tokens import (
    IssuedToken,
    JoinRefused,
    JoinTokenInfo,
    JoinTokenRegistry,
)
from tessera.store import Put, StaleRevision

if TYPE_CHECKING:
    from tessera.master.core import Master

log = logging.getLogger(__name__)

TOKENS_KIND = "join_tokens"
TOKENS_KEY = "registry"
CERTS_KIND = "agent_certs"
REVOKED_KIND = "cert_revocations"
REVOKED_KEY = "agents"
# A busy leader writes often; a join retries on a newer revision this many times.
COMMIT_ATTEMPTS = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Joined:
    agent_id: str
    client_cert: bytes
    serving_cert: bytes
    ca_cert: bytes
    agent_url: str

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "certificate": self.client_cert.decode(),
            "serving_certificate": self.serving_cert.decode(),
            "ca": self.ca_cert.decode(),
            "agent_url": self.agent_url,
        }


class JoinService:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.config = master.config
        self.store = master.store
        self.clock = master.clock
        self._ca: ClusterCA | None = None
        # One consumer at a time in this process; expect_revision covers other masters.
        self._lock = asyncio.Lock()

    # ---- the CA ---------------------------------------------------------------------------

    async def ca(self) -> ClusterCA:
        """The cluster CA from the sealed keys (cached: it never changes)."""
        if self._ca is None:
            path = self.config.cluster_key_file or self.config.work_dir / "cluster-key"
            if not path.exists():
                raise ApiError(503, "the cluster's keys are not created yet (no leader); retry")
            keys = await load_existing(self.store, read_cluster_key(path, create=False))
            if keys is None or keys.ca is None:
                raise ApiError(503, "the cluster CA is not created yet (no leader); retry")
            self._ca = keys.ca
        return self._ca

    def agent_url(self) -> str:
        """Where agents reach this master's agent channel (mutual TLS)."""
        host = urlsplit(self.config.url).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"wss://{host}:{self.config.agent_port}{AGENT_STREAM_PATH}"

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.config.agent_cert_lifetime)

    # ---- join tokens ----------------------------------------------------------------------

    async def _registry(self) -> JoinTokenRegistry:
        record = await self.store.get(TOKENS_KIND, TOKENS_KEY)
        if record is None:
            return JoinTokenRegistry(self.clock)
        return JoinTokenRegistry.from_json(record, self.clock)

    async def _update_tokens(self, change: Any) -> Any:
        """Apply `change(registry)` and write the registry back in one commit made on the
        revision it was read at; retried when anything else was written meanwhile."""
        async with self._lock:
            for _ in range(COMMIT_ATTEMPTS):
                revision = await self.store.revision()
                registry = await self._registry()
                result = change(registry)
                try:
                    await self.store.commit(
                        [Put(TOKENS_KIND, TOKENS_KEY, registry.to_json())],
                        expect_revision=revision,
                    )
                except StaleRevision:
                    continue
                return result
        raise ApiError(503, "the store is too busy to update join tokens; retry")

    async def create_token(
        self, ttl: float, uses: int, hostname: str | None, description: str = ""
    ) -> IssuedToken:
        def create(registry: JoinTokenRegistry) -> IssuedToken:
            registry.prune()  # used-up and expired tokens go when a new one comes
            return registry.create(ttl, uses, hostname, description=description)

        issued: IssuedToken = await self._update_tokens(create)
        return issued

    async def list_tokens(self) -> list[JoinTokenInfo]:
        return (await self._registry()).list_tokens()

    async def revoke_token(self, token_id: str) -> bool:
        revoked: bool = await self._update_tokens(lambda registry: registry.revoke(token_id))
        return revoked

    async def consume(self, token: str, hostname: str | None) -> JoinTokenInfo:
        """Spend one use of `token`, or raise JoinRefused (nothing is written then)."""
        info: JoinTokenInfo = await self._update_tokens(
            lambda registry: registry.consume(token, hostname)
        )
        return info

    # ---- joining --------------------------------------------------------------------------

    async def join(
        self, token: str, csr_pem: str, hostname: str, agent_id: str | None, address: str | None
    ) -> Joined:
        """Raises JoinRefused (token), CsrRefused or ValueError (request)."""
        csr = load_csr(csr_pem.encode())
        ca = await self.ca()
        chosen = self._agent_id(agent_id, hostname)
        names = [name for name in (hostname, address) if name]
        # A request the master would not sign does not spend the token.
        check_csr(csr, chosen)
        sign_agent_serving(csr, chosen, names, ca, self.clock, self.lifetime)
        await self.consume(token, hostname)
        client = sign_agent_client(csr, chosen, ca, self.clock, self.lifetime)
        serving = sign_agent_serving(csr, chosen, names, ca, self.clock, self.lifetime)
        await self._record_certs(chosen, hostname, [client, serving])
        return Joined(chosen, cert_pem(client), cert_pem(serving), ca.cert_pem(), self.agent_url())

    def _agent_id(self, wanted: str | None, hostname: str) -> str:
        """The agent keeps the id it asks for (an agent that was in the cluster before it had
        a certificate keeps its tasks) unless another host is known under that id."""
        known = self.master.state.agents.get(wanted or "")
        if wanted and _valid_id(wanted) and (known is None or known.hostname == hostname):
            return wanted
        base = _UNSAFE.sub("-", hostname).strip("-.")[:60] or "agent"
        return f"{base}-{uuid.uuid4().hex[:8]}"

    async def _record_certs(self, agent_id: str, hostname: str, certs: list[Any]) -> None:
        record = await self.store.get(CERTS_KIND, agent_id) or {"serials": {}}
        now = self.clock.wall()
        serials = {s: end for s, end in record.get("serials", {}).items() if end >= now}
        for cert in certs:
            serials[format(cert.serial_number, "x")] = cert.not_valid_after_utc.timestamp()
        value = {"agent_id": agent_id, "hostname": hostname, "serials": serials}
        await self.store.commit([Put(CERTS_KIND, agent_id, value)])

    async def renew(self, agent_id: str, csr_pem: str, address: str | None) -> tuple[bytes, bytes]:
        """New client and serving certificates for a connected agent: its identity is the
        verified one of its channel (the request may carry a new key); the serving names are
        its host name and the address its channel comes from."""
        csr = load_csr(csr_pem.encode())
        ca = await self.ca()
        record = await self.store.get(CERTS_KIND, agent_id) or {}
        hostname = str(record.get("hostname", ""))
        names = [name for name in (hostname, address) if name]
        client = sign_agent_client(csr, agent_id, ca, self.clock, self.lifetime)
        serving = sign_agent_serving(csr, agent_id, names, ca, self.clock, self.lifetime)
        await self._record_certs(agent_id, hostname, [client, serving])
        return cert_pem(client), cert_pem(serving)

    # ---- revocation -----------------------------------------------------------------------

    async def revocations(self) -> Revocations:
        record = await self.store.get(REVOKED_KIND, REVOKED_KEY)
        return Revocations.from_json(record) if record else Revocations()

    async def revoke_agent(self, agent_id: str) -> int:
        """Deny every certificate issued to the agent; how many. LookupError if none was."""
        record = await self.store.get(CERTS_KIND, agent_id)
        if record is None:
            raise LookupError(agent_id)
        revoked = await self.revocations()
        entries = dict(revoked.entries)
        for serial, end in record.get("serials", {}).items():
            entries[int(serial, 16)] = float(end)
        pruned = Revocations(entries).prune(self.clock.wall())
        await self.store.commit([Put(REVOKED_KIND, REVOKED_KEY, pruned.to_json())])
        return len(record.get("serials", {}))


def _valid_id(agent_id: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", agent_id) is not None


__all__ = ["CsrRefused", "JoinRefused", "JoinService", "Joined"]
