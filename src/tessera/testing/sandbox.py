"""Reading a task's sandbox in tests: a grant from the master, then the agent's API with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class SandboxAccess:
    agent_url: str
    headers: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET `path` (e.g. `/v1/info`) on the task's agent, grant attached."""
        return httpx.get(self.agent_url + path, headers=self.headers, timeout=10, **kwargs)


def sandbox_access(master: httpx.Client, task_id: str) -> SandboxAccess:
    """`master` carries the caller's credentials (Cluster.http carries the superuser's)."""
    answer = master.post(f"/v1/tasks/{task_id}/sandbox-grant")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return SandboxAccess(body["agentUrl"], {"Authorization": f"Bearer {body['grant']}"})
