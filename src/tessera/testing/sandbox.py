"""Reading a task's sandbox in tests: a grant from the master, then the agent's API with it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class SandboxAccess:
    agent_url: str
    headers: dict[str, str]
    verify: ssl.SSLContext

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET `path` (e.g. `/v1/info`) on the task's agent, grant attached."""
        return httpx.get(
            self.agent_url + path, headers=self.headers, timeout=10, verify=self.verify, **kwargs
        )

    def client(self) -> httpx.Client:
        """A client for the agent's API (HTTPS, the cluster CA trusted), without the grant."""
        return httpx.Client(base_url=self.agent_url, timeout=10, verify=self.verify)


def sandbox_access(master: httpx.Client, task_id: str, verify: ssl.SSLContext) -> SandboxAccess:
    """`master` carries the caller's credentials (Cluster.http carries the superuser's);
    `verify` trusts the cluster CA, which signs the agents' serving certificates
    (Cluster.ssl_context)."""
    answer = master.post(f"/v1/tasks/{task_id}/sandbox-grant")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    grant = {"Authorization": f"Bearer {body['grant']}"}
    return SandboxAccess(body["agentUrl"], grant, verify)
