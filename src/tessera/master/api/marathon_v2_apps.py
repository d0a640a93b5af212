"""`/v2/apps`: list, create, update (partial by default, as Marathon), scale, restart,
delete, versions and rollback to a version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from tessera.http_errors import ApiError
from tessera.http_errors import invalid as invalid_field
from tessera.master.api.marathon_v2 import (
    VERSION_USERS,
    app_json,
    conflict,
    cyclic,
    deployment_result,
    embeds,
    invalid,
    json_body,
    not_found,
    post_event,
    services,
)
from tessera.master.audit import acting_user, note_deploy
from tessera.master.auth import REQUEST_STATE, can_read_app
from tessera.master.controllers.deployments import DeploymentConflict
from tessera.master.controllers.services import ServicesController
from tessera.model.app import (
    AppSpec,
    InvalidApp,
    app_to_json,
    canonical_path,
    is_under,
    merge_update,
    parent_path,
    parse_app,
)
from tessera.model.group import GroupSpec, effective_role, group_ids, role_error
from tessera.model.health import FieldError
from tessera.reconcile.deployments import CyclicDependencies, Deployment

router = APIRouter()

Force = Annotated[bool, Query()]
Embed = Annotated[list[str] | None, Query()]


async def deploy(
    controller: ServicesController,
    changes: Mapping[str, AppSpec | None],
    force: bool,
    **options: Any,
) -> Deployment:
    """Start a deployment, turning conflicts and dependency cycles into Marathon's errors."""
    changes = with_roles(controller, changes, options.get("groups") or {})
    state = REQUEST_STATE.get()
    if state is not None:
        note_deploy(state, controller.state.apps, changes, options.get("restart", ()))
        options.setdefault("user", acting_user(state))
    try:
        return await controller.deployments.deploy(changes, force=force, **options)
    except DeploymentConflict as error:
        raise conflict(error) from None
    except CyclicDependencies as error:
        raise cyclic(error) from None


def with_roles(
    controller: ServicesController,
    changes: Mapping[str, AppSpec | None],
    groups: Mapping[str, GroupSpec | None],
) -> dict[str, AppSpec | None]:
    """Each app's role as DC/OS 2 decides it: under a top-level group that enforces its role
    (a team), that role and no other (422 at `/role` otherwise, so a team cannot take
    another team's role or quota); elsewhere `*`, the group's name or the role it had."""
    after = {**controller.state.groups, **{i: g for i, g in groups.items() if g is not None}}
    settled: dict[str, AppSpec | None] = {}
    for app_id, app in changes.items():
        if app is None:
            settled[app_id] = None
            continue
        old = controller.state.apps.get(app_id)
        why = role_error(app_id, app.role, after, old.role if old is not None else None)
        if why is not None:
            raise invalid_field("/role", why)
        settled[app_id] = app.with_changes(role=effective_role(app_id, after, app.role))
    return settled


def check_paths(controller: ServicesController, app_ids: list[str]) -> None:
    """An app may not take a group's id, nor live under another app."""
    state = controller.state
    groups = group_ids(state.apps, state.groups)
    for app_id in app_ids:
        if app_id in groups:
            raise ApiError(409, f"A group with id {app_id} already exists.")
        node = parent_path(app_id)
        while node != "/":
            if node in state.apps:
                raise ApiError(409, f"{node} is an app; an app cannot contain {app_id}")
            node = parent_path(node)


def parse_or_422(raw: object, where: str = "", base: str = "/") -> AppSpec:
    try:
        return parse_app(raw, where, base)
    except InvalidApp as error:
        raise invalid(error) from None


def updated_app(
    controller: ServicesController, app_id: str, body: object, partial: bool, where: str = ""
) -> AppSpec:
    if not isinstance(body, Mapping):
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": where or "/", "errors": ["must be an object"]}],
        )
    current = controller.state.apps.get(app_id)
    raw = dict(body)
    if current is not None and partial:
        raw = merge_update(current, raw)
    raw["id"] = app_id
    return parse_or_422(raw, where)


def label_matches(labels: Mapping[str, str], selector: str) -> bool:
    """Marathon's label selector: `key`, `key==value`, `key!=value`, joined by commas."""
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "==" in term:
            key, value = (p.strip() for p in term.split("==", 1))
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


@router.get("/v2/apps")
async def list_apps(
    request: Request,
    cmd: str | None = None,
    id_part: Annotated[str | None, Query(alias="id")] = None,
    label: str | None = None,
    embed: Embed = None,
) -> dict[str, Any]:
    controller = services(request)
    wanted = embeds(embed)
    apps = []
    for app_id in sorted(controller.state.apps):
        app = controller.state.apps[app_id]
        if not can_read_app(request, app_id):
            continue
        if cmd is not None and cmd not in (app.cmd or ""):
            continue
        if id_part is not None and id_part not in app_id:
            continue
        if label is not None and not label_matches(app.labels, label):
            continue
        apps.append(app_json(controller, app, wanted))
    return {"apps": apps}


@router.post("/v2/apps", status_code=201)
async def create_app(request: Request, force: Force = False) -> JSONResponse:
    controller = services(request)
    app = parse_or_422(await json_body(request))
    async with controller.lock:
        if app.id in controller.state.apps:
            raise ApiError(409, f"An app with id [{app.id}] already exists.")
        check_paths(controller, [app.id])
        deployment = await deploy(controller, {app.id: app}, force)
    created = controller.state.apps[app.id]
    post_event(controller, request, created, app.id)
    body = app_json(controller, created, set())
    headers = {"Location": f"/v2/apps{app.id}", "Marathon-Deployment-Id": deployment.id}
    return JSONResponse(body, status_code=201, headers=headers)


async def _bulk(request: Request, force: bool, partial: bool) -> JSONResponse:
    controller = services(request)
    body = await json_body(request)
    if not isinstance(body, list) or not body:
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": "/", "errors": ["must be a list of apps"]}],
        )
    async with controller.lock:
        changes: dict[str, AppSpec | None] = {}
        errors: list[FieldError] = []
        for index, item in enumerate(body):
            raw_id = item.get("id") if isinstance(item, Mapping) else None
            if not isinstance(raw_id, str) or not raw_id.strip("/"):
                errors.append(FieldError(f"{index}/id", "is required"))
                continue
            app_id = canonical_path(raw_id)
            try:
                changes[app_id] = updated_app(controller, app_id, item, partial, f"/{index}")
            except ApiError as error:
                for detail in error.extra.get("details", []):
                    errors.extend(FieldError(detail["path"], m) for m in detail["errors"])
        if errors:
            raise invalid(InvalidApp(errors))
        check_paths(controller, [a for a in changes if a not in controller.state.apps])
        deployment = await deploy(controller, changes, force)
    for app_id, app in changes.items():
        post_event(controller, request, app, app_id)
    return deployment_result(deployment)


@router.put("/v2/apps")
async def replace_apps(request: Request, force: Force = False) -> JSONResponse:
    return await _bulk(request, force, partial=True)


@router.patch("/v2/apps")
async def patch_apps(request: Request, force: Force = False) -> JSONResponse:
    return await _bulk(request, force, partial=True)


@router.get("/v2/apps/{app_id:path}/versions/{version}")
async def app_version(
    app_id: str, version: str, request: Request, embed: Embed = None
) -> dict[str, Any]:
    controller = services(request)
    app_id = canonical_path(app_id)
    if app_id not in controller.state.apps:
        raise not_found(app_id)
    app = await controller.state.app_at(app_id, version)
    if app is None:
        raise ApiError(404, f"App '{app_id}' does not exist in version {version}")
    return app_to_json(app, users=bool(embeds(embed) & VERSION_USERS))


@router.get("/v2/apps/{app_id:path}/versions")
async def app_versions(app_id: str, request: Request) -> dict[str, Any]:
    controller = services(request)
    app_id = canonical_path(app_id)
    if app_id not in controller.state.apps:
        raise not_found(app_id)
    return {"versions": controller.state.app_versions(app_id)}


@router.post("/v2/apps/{app_id:path}/restart")
async def restart_app(app_id: str, request: Request, force: Force = False) -> JSONResponse:
    controller = services(request)
    app_id = canonical_path(app_id)
    async with controller.lock:
        app = controller.state.apps.get(app_id)
        if app is None:
            raise not_found(app_id)
        deployment = await deploy(controller, {app_id: app}, force, restart=frozenset({app_id}))
    return deployment_result(deployment)


@router.get("/v2/apps/{app_id:path}")
async def show_app(app_id: str, request: Request, embed: Embed = None) -> dict[str, Any]:
    controller = services(request)
    if app_id.rstrip("/").endswith("*"):
        # Marathon's `GET /v2/apps/{group}/*`: every app in the group, under "*".
        group = canonical_path(app_id.rstrip("/")[:-1])
        wanted = embeds(embed)
        found = [
            app_json(controller, app, wanted)
            for app_id, app in sorted(controller.state.apps.items())
            if is_under(app_id, group) and can_read_app(request, app_id)
        ]
        return {"*": found}
    app_id = canonical_path(app_id)
    app = controller.state.apps.get(app_id)
    if app is None:
        raise not_found(app_id)
    wanted = embeds(embed) or {"app.tasks", "app.readiness", "app.lastTaskFailure"}
    return {"app": app_json(controller, app, wanted)}


async def _update(
    app_id: str, request: Request, force: bool, partial: bool, create: bool
) -> JSONResponse:
    controller = services(request)
    app_id = canonical_path(app_id)
    body = await json_body(request)
    async with controller.lock:
        exists = app_id in controller.state.apps
        if not exists and not create:
            raise not_found(app_id)
        if isinstance(body, Mapping) and set(body) == {"version"}:
            app = await _at_version(controller, app_id, body["version"])
        else:
            app = updated_app(controller, app_id, body, partial)
        if not exists:
            check_paths(controller, [app_id])
        deployment = await deploy(controller, {app_id: app}, force)
    post_event(controller, request, controller.state.apps.get(app_id), app_id)
    if exists:
        return deployment_result(deployment)
    return deployment_result(deployment, 201, location=f"/v2/apps{app_id}")


async def _at_version(controller: ServicesController, app_id: str, version: object) -> AppSpec:
    if not isinstance(version, str):
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": "/version", "errors": ["must be a string"]}],
        )
    app = await controller.state.app_at(app_id, version)
    if app is None:
        raise ApiError(404, f"App '{app_id}' does not exist in version {version}")
    return app


@router.put("/v2/apps/{app_id:path}")
async def replace_app(
    app_id: str,
    request: Request,
    force: Force = False,
    partial_update: Annotated[bool, Query(alias="partialUpdate")] = True,
) -> JSONResponse:
    return await _update(app_id, request, force, partial_update, create=True)


@router.patch("/v2/apps/{app_id:path}")
async def patch_app(app_id: str, request: Request, force: Force = False) -> JSONResponse:
    return await _update(app_id, request, force, partial=True, create=False)


@router.delete("/v2/apps/{app_id:path}")
async def delete_app(app_id: str, request: Request, force: Force = False) -> Response:
    controller = services(request)
    app_id = canonical_path(app_id)
    async with controller.lock:
        if app_id not in controller.state.apps:
            raise not_found(app_id)
        deployment = await deploy(controller, {app_id: None}, force)
    post_event(controller, request, None, app_id)
    return deployment_result(deployment)
