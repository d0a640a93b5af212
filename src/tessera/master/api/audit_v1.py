"""`GET /v1/audit`: the audit log, filtered to what the caller may read.

`path` (a Marathon group or app path, segment-wise: `/team-a` covers `/team-a/web` and the
jobs `team-a.*`, never `/team-ab`) needs read on `services:<path>` (checked by the auth
dependency before this runs). Each record is then shown only if the caller may read the
object it is about: the rid of the permission it records, else its service path; records
about no object (logins, tokens, joins) need read on `dcos:adminrouter:acs` (IAM readers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Query, Request

from tessera.http_errors import invalid
from tessera.master.audit import AuditLog
from tessera.master.auth import principal_of
from tessera.model.permissions import (
    ACS,
    Action,
    InvalidRid,
    PathRefused,
    Principal,
    allowed,
    parse_rid,
    service_path,
    service_rid,
)
from tessera.security.audit_chain import AuditRecord, permission_rids, to_json

router = APIRouter()

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class _WithAudit(Protocol):
    audit: AuditLog


def install(app: FastAPI, master: _WithAudit) -> None:
    app.state.audit = master.audit
    app.include_router(router)


def may_see(principal: Principal, record: AuditRecord) -> bool:
    """Read on what the record is about (see the module's docstring); a record that checked
    several rids (a bulk request) is shown to readers of any of them."""
    try:
        rids = permission_rids(record.permission)
        if rids:
            return any(allowed(principal, Action.READ, parse_rid(rid)) for rid in rids)
        if record.resource and record.resource.startswith("/"):
            return allowed(principal, Action.READ, service_rid(record.resource))
    except (InvalidRid, PathRefused):
        return principal.grants.superuser
    return allowed(principal, Action.READ, ACS)


def parse_since(raw: str | None) -> float | None:
    """Epoch seconds, or an ISO 8601 time (`2026-12-06T14:02:11Z`; naive times are UTC)."""
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid("/since", "expected epoch seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@router.get("/v1/audit")
async def audit_records(
    request: Request,
    path: str | None = None,
    since: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> dict[str, Any]:
    principal = principal_of(request)
    audit: AuditLog = request.app.state.audit
    try:
        canonical = service_path(path) if path is not None else None
    except PathRefused as refused:
        raise invalid("/path", refused.reason) from None
    page = await audit.query(
        canonical,
        parse_since(since),
        limit,
        lambda record: may_see(principal, record),
    )
    return {"records": [to_json(r) for r in page.records], "verified": page.verified}
