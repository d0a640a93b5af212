"""DC/OS's secrets API, `/secrets/v1/secret/default/<path>`: create, read, update, delete, list.

`PUT` creates (201; 409 if the path holds a secret), `PATCH` changes the value or the
description (204), `GET` answers `{"value", "author", "created", "description"}`, `DELETE`
removes (204); an unknown path is 404. `GET ...?list=true` answers `{"array": [...]}`: the
names below the path, relative to it, filtered to those the caller may list
(`dcos:secrets:list:default:<path>` read), so one team never learns another's names. The
global auth dependency checks each route's rule (model/permissions.py PLANNED_ROUTES)
before a handler runs. The body is `{"value": "<text>"}` (with an optional `description`);
a value is at most 1 MiB (413 above it). Values never appear in logs or errors.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.http_errors import ApiError, invalid, validation_details
from tessera.master.auth import principal_of
from tessera.master.core import Master
from tessera.master.secrets import SecretExists, SecretNotFound, SecretStore, SecretUnavailable
from tessera.model.permissions import Action, PathRefused, allowed, secret_list_rid, secret_path
from tessera.security.secret_box import MAX_VALUE_BYTES

router = APIRouter(prefix="/secrets/v1", tags=["secrets"])
ROUTE = "/secret/default/{path:path}"

ModelT = TypeVar("ModelT", bound=BaseModel)

# JSON escaping makes a body longer than its value; past this the body is refused unread.
MAX_BODY_BYTES = MAX_VALUE_BYTES + 64 * 1024


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str
    description: str = Field("", max_length=1024)
    # DC/OS clients send these; the author is always the caller, labels are not kept.
    author: str | None = None
    labels: list[str] = Field(default_factory=list)


class SecretPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str | None = None
    description: str | None = Field(None, max_length=1024)
    author: str | None = None
    labels: list[str] | None = None


def secrets_of(request: Request) -> SecretStore:
    store = request.app.state.secrets
    assert isinstance(store, SecretStore)
    return store


def _canonical(raw: str, *, root_allowed: bool = False) -> str:
    try:
        path = secret_path(raw)
    except PathRefused as refused:
        raise invalid("/path", refused.reason) from None
    if path == "/" and not root_allowed:
        raise invalid("/path", "names no secret: give a path such as team-a/db")
    return path


async def _body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise invalid("/", 'the body must be JSON: {"value": "..."}') from None


def _too_large() -> ApiError:
    return ApiError(413, f"a secret value is at most {MAX_VALUE_BYTES} bytes")


def _parse(model: type[ModelT], raw: Any) -> ModelT:
    if not isinstance(raw, dict):
        raise invalid("/", 'the body must be a JSON object: {"value": "..."}')
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        # Pydantic would echo the input (the value) in `input`: only paths and wording.
        raise ApiError(
            422, "Object is not valid", details=validation_details(error.errors())
        ) from None


def _encoded(value: str) -> bytes:
    data = value.encode()
    if len(data) > MAX_VALUE_BYTES:
        raise _too_large()
    return data


@router.put(ROUTE, status_code=201)
async def create_secret(path: str, request: Request) -> Response:
    canonical = _canonical(path)
    body = _parse(SecretIn, await _body(request))
    author = principal_of(request).uid
    try:
        await secrets_of(request).create(canonical, _encoded(body.value), author, body.description)
    except SecretExists:
        raise ApiError(409, f"a secret already exists at {canonical.lstrip('/')}") from None
    return Response(status_code=201)


@router.patch(ROUTE, status_code=204)
async def update_secret(path: str, request: Request) -> Response:
    canonical = _canonical(path)
    body = _parse(SecretPatch, await _body(request))
    value = _encoded(body.value) if body.value is not None else None
    try:
        await secrets_of(request).update(
            canonical, value, body.description, principal_of(request).uid
        )
    except SecretNotFound:
        raise _not_found(canonical) from None
    return Response(status_code=204)


@router.get(ROUTE, response_model=None)
async def read_secret(path: str, request: Request) -> JSONResponse:
    if request.query_params.get("list") == "true":
        return await _list(path, request)
    canonical = _canonical(path)
    try:
        info, value = await secrets_of(request).read(canonical)
    except SecretNotFound:
        raise _not_found(canonical) from None
    except SecretUnavailable as error:
        raise ApiError(500, str(error)) from None
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise ApiError(500, "the secret is not UTF-8 text") from None
    return JSONResponse(
        {
            "author": info.author,
            "created": info.created,
            "description": info.description,
            "value": text,
        }
    )


async def _list(path: str, request: Request) -> JSONResponse:
    base = _canonical(path, root_allowed=True)
    prefix = "/" if base == "/" else base + "/"
    grants = principal_of(request).grants
    names = [
        found[len(prefix) :]
        for found in await secrets_of(request).paths()
        if found.startswith(prefix) and allowed(grants, Action.READ, secret_list_rid(found))
    ]
    return JSONResponse({"array": names})


@router.delete(ROUTE, status_code=204)
async def delete_secret(path: str, request: Request) -> Response:
    canonical = _canonical(path)
    try:
        await secrets_of(request).delete(canonical)
    except SecretNotFound:
        raise _not_found(canonical) from None
    return Response(status_code=204)


def _not_found(path: str) -> ApiError:
    return ApiError(404, f"no secret at {path.lstrip('/')}")


def install(app: FastAPI, master: Master) -> None:
    """The routes, and the master's secret store: launches of tasks with secrets get their
    values from it (agent_channel.py)."""
    store = SecretStore(master.store, master.auth.kek, master.clock)
    app.state.secrets = store
    master.channel.resolve_secrets = store.deliver
    app.include_router(router)
