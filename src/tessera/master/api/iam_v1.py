"""DC/OS's identity API under /acs/api/v1: login, users, service accounts, groups and ACLs.

Shapes follow DC/OS's Bouncer (`{"array": [...]}` lists, `PUT` to create, rids in URLs with
`/` written as `%252F`). Logins are rate limited per user and per address (429 with
`Retry-After`); an unknown user and a wrong password answer the same, in the same time.
Nobody grants what they do not hold: giving an action on a rid, or a membership in a group,
needs every permission it passes on (superusers hold them all).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.http_errors import ApiError, invalid
from tessera.master.auth import CHALLENGE, Authority, principal_of
from tessera.master.core import Master
from tessera.master.iam import Acl, Group, IamConflict, IamNotFound, User
from tessera.model.permissions import (
    Action,
    InvalidRid,
    Principal,
    allowed,
    escaped_rid,
    may_grant,
    parse_rid,
)
from tessera.security.ratelimit import address_key
from tessera.security.tokens import public_key_from_pem

log = logging.getLogger(__name__)

router = APIRouter(prefix="/acs/api/v1", tags=["iam"])

_UID = r"^[a-z0-9][a-z0-9_.@\-]{0,95}$"
Uid = Annotated[str, Field(pattern=_UID)]


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uid: str = Field(max_length=96)
    password: str | None = Field(None, max_length=1024)
    # A service account's login JWT, signed with its private key (DC/OS's `dcos-uid-servicekey`).
    token: str | None = Field(None, max_length=8192)

    @model_validator(mode="after")
    def _one_credential(self) -> LoginIn:
        if (self.password is None) == (self.token is None):
            raise ValueError("give exactly one of password and token")
        return self


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=512)
    password: str | None = Field(None, min_length=8, max_length=1024)
    public_key: str | None = Field(None, max_length=16384)
    # DC/OS clients send these; Tessera has no remote users yet.
    provider_type: Literal["internal"] | None = None
    provider_id: str | None = None


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=512)
    password: str | None = Field(None, min_length=8, max_length=1024)


class DescriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=512)
    provider_type: Literal["internal"] | None = None


def authority(request: Request) -> Authority:
    found: Authority = request.app.state.master.auth
    return found


def _not_found(error: IamNotFound) -> ApiError:
    return ApiError(404, str(error), code="ERR_UNKNOWN_RESOURCE_ID")


def _conflict(error: IamConflict) -> ApiError:
    return ApiError(409, str(error), code="ERR_ALREADY_EXISTS")


def _rid_param(raw: str) -> str:
    """DC/OS writes `/` in a rid as `%252F`; the router has undone one level of escaping."""
    rid = unquote(raw)
    try:
        parse_rid(rid)
    except (InvalidRid, ValueError) as error:
        raise invalid("/rid", str(error)) from None
    return rid


def _action_param(raw: str) -> Action:
    try:
        return Action(raw)
    except ValueError:
        raise invalid("/action", f"actions are {', '.join(Action)}") from None


def _check_uid(uid: str, where: str = "/uid") -> None:
    if not re.fullmatch(_UID, uid):
        raise invalid(where, "lowercase letters, digits, _ . @ -")


# ---- login ---------------------------------------------------------------------------------


@router.post("/auth/login")
async def login(body: LoginIn, request: Request, response: Response) -> dict[str, str]:
    auth = authority(request)
    address = request.client.host if request.client else "unknown"
    decision = auth.limiter.check(body.uid, address)
    if not decision.allowed:
        raise ApiError(
            429,
            "too many failed logins; retry later",
            headers={"Retry-After": str(decision.retry_after_seconds)},
        )
    user = auth.iam.users.get(body.uid)
    if body.password is not None:
        ok = await auth.check_password(user, body.password)
    else:
        ok = auth.check_service_login(user, body.uid, body.token or "")
    audit = request.app.state.master.audit
    await audit.record_login(body.uid[:96], address, ok and user is not None)
    if not ok or user is None:
        auth.limiter.record_failure(body.uid, address)
        log.info("login refused for %r from %s", body.uid[:96], address_key(address))
        raise ApiError(
            401,
            "Invalid credentials",
            headers=CHALLENGE,
            title="Invalid authentication credentials",
            description="The uid, password or service login token is wrong.",
            code="ERR_INVALID_CREDENTIALS",
        )
    auth.limiter.record_success(body.uid)
    issued = auth.issue(user.uid, "service" if user.type == "service" else "user")
    log.info("login of %s (%s)", user.uid, user.type)
    return {"token": issued.token}


@router.post("/auth/logout")
async def logout() -> dict[str, str]:
    # Tokens are bearer tokens: the client forgets its own. (Revoke with `tessera token
    # revoke-all`.)
    return {}


@router.get("/auth/jwks")
async def jwks(request: Request) -> dict[str, Any]:
    return authority(request).jwks()


@router.get("/auth/providers")
async def providers() -> dict[str, Any]:
    return {
        "dcos-users": {
            "authentication-type": "dcos-uid-password",
            "client-method": "dcos-credential-post-receive-authtoken",
            "config": {"start_flow_url": "/acs/api/v1/auth/login"},
            "description": "Default: Tessera users (uid and password)",
            "provider_id": "dcos-users",
        },
        "dcos-services": {
            "authentication-type": "dcos-uid-servicekey",
            "client-method": "dcos-usercredential-post-receive-authtoken",
            "config": {"start_flow_url": "/acs/api/v1/auth/login"},
            "description": "Default: service accounts (uid and RS256 login token)",
            "provider_id": "dcos-services",
        },
    }


# ---- users ---------------------------------------------------------------------------------


@router.get("/users")
async def list_users(
    request: Request, type: Annotated[Literal["service", "user"] | None, Query()] = None
) -> dict[str, Any]:
    users = authority(request).iam.users.values()
    wanted = [u for u in users if type is None or u.type == type]
    return {"array": [u.view() for u in sorted(wanted, key=lambda u: u.uid)]}


@router.get("/users/{uid}")
async def show_user(uid: str, request: Request) -> dict[str, Any]:
    user = authority(request).iam.users.get(uid)
    if user is None:
        raise ApiError(404, f"user {uid} not found", code="ERR_UNKNOWN_USER_ID")
    return user.view()


@router.put("/users/{uid}", status_code=201, response_class=Response)
async def create_user(uid: str, body: UserIn, request: Request) -> Response:
    _check_uid(uid)
    auth = authority(request)
    if (body.password is None) == (body.public_key is None):
        raise invalid("/", "give a password (user) or a public_key (service)")
    if body.public_key is not None:
        try:
            public_key_from_pem(body.public_key)
        except ValueError as error:
            raise invalid("/public_key", str(error)) from None
        user = User(uid, "service", body.description, public_key=body.public_key)
    else:
        if uid in auth.iam.users:
            raise _conflict(IamConflict(f"user {uid} already exists"))
        hashed = await auth.hash_password(body.password or "")
        user = User(uid, "user", body.description, password_hash=hashed)
    try:
        await auth.iam.put_user(user, create=True)
    except IamConflict as error:
        raise _conflict(error) from None
    return Response(status_code=201)


@router.patch("/users/{uid}", status_code=204, response_class=Response)
async def update_user(uid: str, body: UserPatch, request: Request) -> Response:
    auth = authority(request)
    user = auth.iam.users.get(uid)
    if user is None:
        raise ApiError(404, f"user {uid} not found", code="ERR_UNKNOWN_USER_ID")
    changed = replace(user, description=body.description or user.description)
    if body.password is not None:
        if user.type != "user":
            raise invalid("/password", "service accounts have no password")
        changed = replace(changed, password_hash=await auth.hash_password(body.password))
    await auth.iam.put_user(changed, create=False)
    if body.password is not None:
        await auth.revoke_all(uid)  # a new password ends every session of the old one
    return Response(status_code=204)


@router.delete("/users/{uid}", status_code=204, response_class=Response)
async def delete_user(uid: str, request: Request) -> Response:
    auth = authority(request)
    if uid == principal_of(request).uid:
        raise ApiError(409, "you cannot delete yourself")
    try:
        await auth.iam.delete_user(uid)
    except IamNotFound as error:
        raise _not_found(error) from None
    auth.revocations.revoke_before(uid, auth.clock.wall())
    return Response(status_code=204)


@router.get("/users/{uid}/permissions")
async def user_permissions(uid: str, request: Request) -> dict[str, Any]:
    auth = authority(request)
    if uid not in auth.iam.users:
        raise ApiError(404, f"user {uid} not found", code="ERR_UNKNOWN_USER_ID")
    return auth.iam.permissions_of(uid)


# ---- groups --------------------------------------------------------------------------------


@router.get("/groups")
async def list_groups(request: Request) -> dict[str, Any]:
    groups = sorted(authority(request).iam.groups.values(), key=lambda g: g.gid)
    return {"array": [g.view() for g in groups]}


@router.get("/groups/{gid}")
async def show_group(gid: str, request: Request) -> dict[str, Any]:
    group = authority(request).iam.groups.get(gid)
    if group is None:
        raise ApiError(404, f"group {gid} not found", code="ERR_UNKNOWN_GROUP_ID")
    return group.view()


@router.put("/groups/{gid}", status_code=201, response_class=Response)
async def create_group(gid: str, body: DescriptionIn, request: Request) -> Response:
    _check_uid(gid, "/gid")
    try:
        await authority(request).iam.put_group(Group(gid, body.description), create=True)
    except IamConflict as error:
        raise _conflict(error) from None
    return Response(status_code=201)


@router.patch("/groups/{gid}", status_code=204, response_class=Response)
async def update_group(gid: str, body: DescriptionIn, request: Request) -> Response:
    iam = authority(request).iam
    group = iam.groups.get(gid)
    if group is None:
        raise ApiError(404, f"group {gid} not found", code="ERR_UNKNOWN_GROUP_ID")
    await iam.put_group(Group(gid, body.description, group.members), create=False)
    return Response(status_code=204)


@router.delete("/groups/{gid}", status_code=204, response_class=Response)
async def delete_group(gid: str, request: Request) -> Response:
    try:
        await authority(request).iam.delete_group(gid)
    except IamNotFound as error:
        raise _not_found(error) from None
    return Response(status_code=204)


@router.get("/groups/{gid}/users")
async def group_members(gid: str, request: Request) -> dict[str, Any]:
    iam = authority(request).iam
    group = iam.groups.get(gid)
    if group is None:
        raise ApiError(404, f"group {gid} not found", code="ERR_UNKNOWN_GROUP_ID")
    members = [iam.users[uid] for uid in sorted(group.members) if uid in iam.users]
    return {
        "array": [
            {"user": u.view(), "membershipurl": f"/acs/api/v1/groups/{gid}/users/{u.uid}"}
            for u in members
        ]
    }


def _group_grants(acls: dict[str, Acl], gid: str) -> list[tuple[str, list[Action]]]:
    return [(a.rid, sorted(a.groups[gid])) for a in acls.values() if gid in a.groups]


def _require_may_grant(granter: Principal, grants: list[tuple[str, list[Action]]]) -> None:
    for rid, actions in grants:
        if not may_grant(granter, rid, actions):
            raise ApiError(403, f"{granter.uid} cannot pass on {rid} {','.join(actions)}")


@router.put("/groups/{gid}/users/{uid}", status_code=204, response_class=Response)
async def add_member(gid: str, uid: str, request: Request) -> Response:
    iam = authority(request).iam
    # Joining a group passes on the group's permissions: only to those who hold them.
    _require_may_grant(principal_of(request), _group_grants(iam.acls, gid))
    try:
        await iam.set_member(gid, uid, True)
    except IamNotFound as error:
        raise _not_found(error) from None
    except IamConflict:
        pass  # DC/OS answers 409; scripts re-running `team create` want it idempotent
    return Response(status_code=204)


@router.delete("/groups/{gid}/users/{uid}", status_code=204, response_class=Response)
async def remove_member(gid: str, uid: str, request: Request) -> Response:
    try:
        await authority(request).iam.set_member(gid, uid, False)
    except IamNotFound as error:
        raise _not_found(error) from None
    return Response(status_code=204)


# ---- ACLs ----------------------------------------------------------------------------------


def _acl_view(acl: Acl) -> dict[str, Any]:
    escaped = escaped_rid(acl.rid)
    return {"rid": acl.rid, "url": f"/acs/api/v1/acls/{escaped}", "description": acl.description}


# The per-action routes first: `{rid:path}` would swallow `/users/<uid>/<action>`.


async def _set_action(
    request: Request, rid: str, holder: Literal["users", "groups"], name: str, action: str, on: bool
) -> Response:
    parsed_rid, parsed_action = _rid_param(rid), _action_param(action)
    granter = principal_of(request)
    if on and not may_grant(granter, parsed_rid, [parsed_action]):
        raise ApiError(403, f"{granter.uid} cannot grant {parsed_rid} {parsed_action}")
    if not on and not allowed(granter, parsed_action, parsed_rid):
        raise ApiError(403, f"{granter.uid} cannot revoke {parsed_rid} {parsed_action}")
    try:
        await authority(request).iam.set_action(parsed_rid, holder, name, parsed_action, on)
    except IamNotFound as error:
        raise _not_found(error) from None
    return Response(status_code=204)


@router.put("/acls/{rid:path}/users/{uid}/{action}", status_code=204, response_class=Response)
async def grant_user(rid: str, uid: str, action: str, request: Request) -> Response:
    return await _set_action(request, rid, "users", uid, action, True)


@router.delete("/acls/{rid:path}/users/{uid}/{action}", status_code=204, response_class=Response)
async def revoke_user(rid: str, uid: str, action: str, request: Request) -> Response:
    return await _set_action(request, rid, "users", uid, action, False)


@router.put("/acls/{rid:path}/groups/{gid}/{action}", status_code=204, response_class=Response)
async def grant_group(rid: str, gid: str, action: str, request: Request) -> Response:
    return await _set_action(request, rid, "groups", gid, action, True)


@router.delete("/acls/{rid:path}/groups/{gid}/{action}", status_code=204, response_class=Response)
async def revoke_group(rid: str, gid: str, action: str, request: Request) -> Response:
    return await _set_action(request, rid, "groups", gid, action, False)


@router.get("/acls")
async def list_acls(request: Request) -> dict[str, Any]:
    acls = sorted(authority(request).iam.acls.values(), key=lambda a: a.rid)
    return {"array": [_acl_view(a) for a in acls]}


@router.get("/acls/{rid:path}")
async def show_acl(rid: str, request: Request) -> dict[str, Any]:
    acl = authority(request).iam.acls.get(_rid_param(rid))
    if acl is None:
        raise ApiError(404, f"ACL for {rid} not found", code="ERR_UNKNOWN_RESOURCE_ID")
    return {
        **_acl_view(acl),
        "users": [
            {"uid": uid, "actions": [{"name": a} for a in sorted(actions)]}
            for uid, actions in sorted(acl.users.items())
        ],
        "groups": [
            {"gid": gid, "actions": [{"name": a} for a in sorted(actions)]}
            for gid, actions in sorted(acl.groups.items())
        ],
    }


@router.put("/acls/{rid:path}", status_code=201, response_class=Response)
async def create_acl(rid: str, body: DescriptionIn, request: Request) -> Response:
    try:
        await authority(request).iam.put_acl(Acl(_rid_param(rid), body.description), create=True)
    except IamConflict as error:
        raise _conflict(error) from None
    return Response(status_code=201)


@router.patch("/acls/{rid:path}", status_code=204, response_class=Response)
async def update_acl(rid: str, body: DescriptionIn, request: Request) -> Response:
    iam = authority(request).iam
    acl = iam.acls.get(_rid_param(rid))
    if acl is None:
        raise ApiError(404, f"ACL for {rid} not found", code="ERR_UNKNOWN_RESOURCE_ID")
    await iam.put_acl(Acl(acl.rid, body.description, acl.users, acl.groups), create=False)
    return Response(status_code=204)


@router.delete("/acls/{rid:path}", status_code=204, response_class=Response)
async def delete_acl(rid: str, request: Request) -> Response:
    try:
        await authority(request).iam.delete_acl(_rid_param(rid))
    except IamNotFound as error:
        raise _not_found(error) from None
    return Response(status_code=204)


def install(app: FastAPI, master: Master) -> None:
    app.include_router(router)
