"""Agents joining: the CA certificate, join tokens, `POST /v1/join` and agent revocation.

`GET /ca/dcos-ca.crt` and `POST /v1/join` are public: a joining agent has no credentials yet,
only its join token. Every refused join answers the same 401, whatever the reason (unknown
token, wrong secret, expired, used up, wrong host); the reason goes to the audit log only.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tessera.http_errors import ApiError
from tessera.master.agent_listener import AgentListener, audit_impersonation
from tessera.master.auth import CHALLENGE, principal_of
from tessera.master.core import Master
from tessera.master.join import JoinService
from tessera.security.audit_chain import Decision, EventKind
from tessera.security.ca import CsrRefused
from tessera.security.join_tokens import JoinRefused, JoinTokenInfo

log = logging.getLogger(__name__)

router = APIRouter(tags=["agents"])
REFUSED = "the join token was not accepted"


class JoinTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: float = Field(3600.0, gt=0, le=366 * 86400, description="seconds the token lasts")
    uses: int = Field(1, ge=1, le=100_000)
    hostname: str | None = Field(None, max_length=253, description="the only host it admits")
    description: str = Field("", max_length=512)


class JoinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(max_length=256)
    csr: str = Field(max_length=16384, description="PEM certificate request made by the agent")
    hostname: str = Field(max_length=253)
    agent_id: str | None = Field(None, max_length=200)


def token_json(info: JoinTokenInfo) -> dict[str, Any]:
    return {
        "id": info.token_id,
        "createdAt": info.created_at,
        "expiresAt": info.expires_at,
        "usesLeft": info.uses_left,
        "hostname": info.hostname,
        "description": info.description,
    }


def joins(request: Request) -> JoinService:
    service: JoinService = request.app.state.joins
    return service


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get(
    "/ca/dcos-ca.crt",
    response_class=Response,
    responses={
        200: {
            "description": "The cluster CA's certificate (PEM); clients check it against the pin",
            "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
        }
    },
)
async def ca_certificate(request: Request) -> Response:
    ca = await joins(request).ca()
    # Agents learn each master's agent channel here (before they have credentials).
    headers = {"Tessera-Agent-Url": joins(request).agent_url()}
    return Response(ca.cert_pem(), media_type="application/x-pem-file", headers=headers)


@router.get("/v1/join-tokens")
async def list_join_tokens(request: Request) -> dict[str, Any]:
    tokens = await joins(request).list_tokens()
    return {"tokens": [token_json(info) for info in tokens]}


@router.post("/v1/join-tokens", status_code=201)
async def create_join_token(request: Request, body: JoinTokenIn) -> dict[str, Any]:
    service = joins(request)
    ca = await service.ca()
    try:
        issued = await service.create_token(body.ttl, body.uses, body.hostname, body.description)
    except ValueError as error:
        raise ApiError(422, str(error)) from None
    master: Master = request.app.state.master
    await master.audit.record_event(
        EventKind.JOIN,
        principal_of(request),
        f"join-token:{issued.info.token_id}",
        f"join token {issued.info.token_id} created ({body.uses} uses, {body.ttl:.0f} s)",
        action="create",
        source=_source(request),
    )
    return {"token": issued.token, "caPin": ca.pin, **token_json(issued.info)}


@router.delete("/v1/join-tokens/{token_id}")
async def revoke_join_token(request: Request, token_id: str) -> dict[str, Any]:
    if not await joins(request).revoke_token(token_id):
        raise ApiError(404, f"no join token {token_id!r}")
    master: Master = request.app.state.master
    await master.audit.record_event(
        EventKind.JOIN,
        principal_of(request),
        f"join-token:{token_id}",
        f"join token {token_id} revoked",
        action="delete",
        source=_source(request),
    )
    return {"id": token_id, "revoked": True}


@router.post("/v1/join")
async def join(request: Request, body: JoinIn) -> dict[str, Any]:
    master: Master = request.app.state.master
    source = _source(request)
    address = _ip(source)
    try:
        joined = await joins(request).join(
            body.token, body.csr, body.hostname, body.agent_id, address
        )
    except JoinRefused as refused:
        await master.audit.record_event(
            EventKind.JOIN,
            None,
            f"host:{body.hostname[:80]}",
            f"join refused: {refused.reason}",
            action="use",
            source=source,
            decision=Decision.DENY,
        )
        raise ApiError(401, REFUSED, headers=CHALLENGE) from None
    except (CsrRefused, ValueError) as error:
        raise ApiError(422, f"cannot sign this request: {error}") from None
    await master.audit.record_event(
        EventKind.JOIN,
        None,
        f"agent:{joined.agent_id}",
        f"agent {joined.agent_id} joined from host {body.hostname}",
        action="use",
        source=source,
    )
    log.info("agent %s joined (host %s, from %s)", joined.agent_id, body.hostname, source)
    return joined.to_json()


@router.post("/v1/agents/{agent_id}/revoke")
async def revoke_agent(request: Request, agent_id: str) -> dict[str, Any]:
    master: Master = request.app.state.master
    try:
        count = await joins(request).revoke_agent(agent_id)
    except LookupError:
        raise ApiError(404, f"no certificate was issued to agent {agent_id!r}") from None
    master.channel.drop(agent_id, "this agent's certificate was revoked")
    await master.audit.record_event(
        EventKind.CERTIFICATE,
        principal_of(request),
        f"agent:{agent_id}",
        f"certificates of agent {agent_id} revoked ({count})",
        action="revoke",
        source=_source(request),
    )
    return {"agent_id": agent_id, "revoked": count}


def _ip(source: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(source or ""))
    except ValueError:
        return None  # a test client's "testclient": no address to put in a certificate


def install(app: FastAPI, master: Master) -> AgentListener:
    """Routes, certificate renewal on the agent channel, and its listener (to start and stop
    with the app)."""
    service = JoinService(master)
    app.state.joins = service
    master.channel.renew = service.renew
    master.channel.audit = lambda agent_id, summary: audit_impersonation(master, agent_id, summary)
    app.include_router(router)
    listener = AgentListener(master, service)
    app.state.agent_listener = listener
    return listener
