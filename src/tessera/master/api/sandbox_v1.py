"""`POST /v1/tasks/{task_id}/sandbox-grant`: a short-lived grant to read a task's sandbox.

The grant (security/grants.py) is what the task's agent asks for on every request of its
HTTP API; the master never reads sandboxes on a caller's behalf. Before the handler runs the
auth dependency has checked `read` on what the task hangs on (its app, its one-off task's
group, its job) and refused unknown tasks to everyone but superusers. The handler adds the
sandbox permission itself, `dcos:mesos:agent:sandbox:app_id:<path> read`, where `<path>` is
the app's id, the one-off task's group, or for a Metronome job `team-a.nightly` the path
`/team-a/nightly` (so a team's `sandbox:/team-a` grant covers its jobs' tasks as well).
Reading the app without that permission (a team viewer) does not open its sandboxes.

Unknown task, a task not placed yet, or one whose agent is gone: 404 (only callers who may
read the task get that far, so the answer tells nobody else anything).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from tessera.http_errors import ApiError
from tessera.master.api.native_v1 import iso
from tessera.master.auth import principal_of
from tessera.master.core import Master
from tessera.model.permissions import (
    JOBS,
    SERVICES,
    Action,
    Rid,
    allowed,
    sandbox_rid,
)
from tessera.security.grants import issue_grant

router = APIRouter(tags=["tasks"])


def install(app: FastAPI, master: Master) -> None:
    app.include_router(router)


def sandbox_rid_of(owner: Rid) -> Rid | None:
    """The sandbox permission of a task whose permissions hang on `owner` (None: only a
    superuser may read it)."""
    if owner.family == SERVICES:
        return sandbox_rid(owner.tail or "/")
    if owner.family == JOBS and owner.tail is not None:
        return sandbox_rid("/" + owner.tail.replace(".", "/"))
    return None


@router.post("/v1/tasks/{task_id}/sandbox-grant")
async def sandbox_grant(task_id: str, request: Request) -> dict[str, Any]:
    master: Master = request.app.state.master
    principal = principal_of(request)
    if not principal.grants.superuser:
        owner = master.auth.task_rid(task_id)
        needed = sandbox_rid_of(owner) if owner is not None else None
        if needed is None or not allowed(principal.grants, Action.READ, needed):
            raise ApiError(403, f"{principal.uid} may not read the sandbox of task '{task_id}'")
    task = master.state.tasks.get(task_id)
    if task is None:
        raise ApiError(404, f"Task '{task_id}' does not exist")
    agent = master.state.agents.get(task.agent_id) if task.agent_id else None
    if agent is None or not agent.http_url:
        raise ApiError(
            404, f"Task '{task_id}' has no sandbox on any agent (state {task.state.value})"
        )
    issued = issue_grant(
        master.auth.signing_key(),
        master.auth.cluster_id,
        agent_id=agent.id,
        task_id=task_id,
        uid=principal.uid,
        clock=master.clock,
    )
    return {
        "grant": issued.token,
        "agentUrl": agent.http_url,
        "agentId": agent.id,
        "taskId": task_id,
        "expiresAt": iso(issued.grant.expires_at),
    }
