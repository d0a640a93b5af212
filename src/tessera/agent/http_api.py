"""The agent's HTTP API: task sandboxes (list, read with offset, follow) and cgroup usage.

Every route needs a sandbox grant from the master (security/grants.py) in `Authorization:
Bearer <grant>` or `token=<grant>`, checked here on each request, signature against the
cluster's public keys (agent/grant_keys.py): a grant names this agent (else 401), the task in
the URL (else 403) and `act=read`. `/v1/info` takes a grant for any task of this agent and
lists only that task among its tasks. A stream (`files/follow`) is checked when it starts and
runs to its end even if the grant expires meanwhile (grants only gate opening it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

import tessera
from tessera.agent.grant_keys import MasterKeys
from tessera.agent.sandbox_files import OutsideSandbox, open_file, regular_files
from tessera.http_errors import ApiError, install_error_handlers
from tessera.security.ca import cli_client_context
from tessera.security.credentials import PresentedToken, parse_authorization
from tessera.security.grants import GrantError, SandboxGrant, grant_key_id, verify_grant

if TYPE_CHECKING:
    from tessera.agent.daemon import AgentDaemon

log = logging.getLogger(__name__)

READ_LIMIT = 1024 * 1024
FOLLOW_POLL_SECONDS = 0.2
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tessera-agent"'}


def create_agent_app(daemon: AgentDaemon, keys: MasterKeys | None = None) -> FastAPI:
    """The API of `daemon`'s sandboxes; `keys` defaults to fetching from its masters."""
    master_keys = keys or MasterKeys(
        lambda: daemon.config.masters, daemon.clock, verify=_master_ca(daemon)
    )

    async def check_grant(request: Request) -> None:
        """Before every route: a valid grant for this agent and the URL's task."""
        request.state.grant = await _verified(request, master_keys, daemon)

    app = FastAPI(
        title="Tessera agent",
        version=tessera.__version__,
        # No unauthenticated schema or docs pages either.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(check_grant)],
    )
    install_error_handlers(app)

    def sandbox_of(task_id: str) -> Path:
        # Sandboxes outlive their tasks (and agent restarts): logs stay readable.
        try:
            sandbox: Path = daemon.executor.sandbox(task_id)
        except ValueError:
            raise ApiError(404, f"Task '{task_id}' has no sandbox on this agent") from None
        if not sandbox.is_dir():
            raise ApiError(404, f"Task '{task_id}' has no sandbox on this agent")
        return sandbox

    def opened(sandbox: Path, task_id: str, path: str) -> int:
        """A descriptor of the sandbox's regular file `path` (links are never followed)."""
        try:
            return open_file(sandbox, path)
        except OutsideSandbox as error:
            raise ApiError(422, str(error)) from None
        except FileNotFoundError:
            raise ApiError(
                404, f"File '{path}' does not exist in the sandbox of '{task_id}'"
            ) from None

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        # Only the granted task: other tasks' ids name other teams' apps.
        granted: SandboxGrant = request.state.grant
        tasks = (
            {granted.task_id: daemon.tasks[granted.task_id]}
            if granted.task_id in daemon.tasks
            else {}
        )
        return {
            "id": daemon.agent_id,
            "hostname": daemon.config.hostname,
            "version": tessera.__version__,
            "isolation": daemon.executor.isolation_info(),
            "resources": daemon.config.resources.to_json(),
            "attributes": dict(daemon.config.attributes),
            "tasks": {task_id: t.state.value for task_id, t in tasks.items()},
        }

    @app.get("/v1/sandboxes/{task_id}/files")
    async def list_files(task_id: str) -> dict[str, Any]:
        entries = [
            {"path": path, "size": info.st_size, "mtime": info.st_mtime}
            for path, info in regular_files(sandbox_of(task_id))
        ]
        return {"files": sorted(entries, key=lambda entry: entry["path"])}

    @app.get("/v1/sandboxes/{task_id}/files/read")
    async def read_file(
        task_id: str,
        path: Annotated[str, Query()] = "stdout",
        offset: Annotated[int, Query(ge=0)] = 0,
        length: Annotated[int, Query(ge=0, le=READ_LIMIT)] = READ_LIMIT,
    ) -> dict[str, Any]:
        with os.fdopen(opened(sandbox_of(task_id), task_id, path), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            data = handle.read(length)
        return {
            "path": path,
            "offset": offset,
            "size": size,
            "nextOffset": offset + len(data),
            "data": data.decode("utf-8", errors="replace"),
        }

    @app.get("/v1/sandboxes/{task_id}/files/follow")
    async def follow_file(
        task_id: str,
        path: Annotated[str, Query()] = "stdout",
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> StreamingResponse:
        sandbox = sandbox_of(task_id)
        os.close(opened(sandbox, task_id, path))  # 404 / 422 before the stream starts

        async def chunks() -> AsyncIterator[bytes]:
            position = offset
            while True:
                known = daemon.tasks.get(task_id)
                finished = known is None or known.state.terminal
                try:
                    data = _read_from(sandbox, path, position)
                except FileNotFoundError:
                    return  # replaced by a link or removed: the stream ends
                position += len(data)
                if data:
                    yield data
                elif finished:
                    return  # everything written before the task ended has been sent
                else:
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/v1/tasks/{task_id}/usage")
    async def usage(task_id: str) -> JSONResponse:
        sandbox_of(task_id)
        if task_id not in daemon.executor.running():
            raise ApiError(409, f"Task '{task_id}' is not running")
        return JSONResponse(daemon.executor.usage(task_id).to_json())

    return app


def _master_ca(daemon: AgentDaemon) -> ssl.SSLContext | bool:
    """The masters' API is HTTPS, checked against the cluster CA the agent got when it joined
    (or its --ca-file)."""
    joined = getattr(daemon, "credentials", None)
    ca_path = getattr(joined, "ca_path", None) or daemon.config.ca_file
    return cli_client_context(Path(ca_path)) if ca_path and Path(ca_path).exists() else True


async def _verified(request: Request, keys: MasterKeys, daemon: AgentDaemon) -> SandboxGrant:
    presented = parse_authorization(request.headers.get("authorization"))
    if not isinstance(presented, PresentedToken) or presented.scheme == "basic":
        raise ApiError(
            401, "a sandbox grant is required (tessera asks the master for one)", headers=CHALLENGE
        )
    task_id = request.path_params.get("task_id")
    try:
        known = await keys.keys_for(grant_key_id(presented.token))
        return verify_grant(
            presented.token,
            known,
            agent_id=daemon.agent_id,
            task_id=task_id if isinstance(task_id, str) else None,
            clock=daemon.clock,
        )
    except GrantError as error:
        log.info("sandbox grant refused for %s: %s", request.url.path, error.reason.value)
        headers = CHALLENGE if error.status == 401 else None
        raise ApiError(
            error.status, f"sandbox grant refused ({error.reason.value})", headers=headers
        ) from None


def _read_from(sandbox: Path, path: str, position: int) -> bytes:
    with os.fdopen(open_file(sandbox, path), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= position:
            return b""
        handle.seek(position)
        return handle.read(min(size - position, READ_LIMIT))
