"""`/v2/groups`: the tree of apps and groups; create, replace (apps left out are stopped),
scale by a factor, roll back to a version, delete."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from tessera.http_errors import ApiError
from tessera.master.api.marathon_v2 import (
    app_json,
    deployment_result,
    embeds,
    invalid,
    json_body,
    post_event,
    services,
)
from tessera.master.api.marathon_v2_apps import check_paths, deploy
from tessera.master.auth import can_read_app, principal_of
from tessera.master.controllers.services import ServicesController
from tessera.model.app import AppSpec, InvalidApp, canonical_path, is_under, path_errors
from tessera.model.group import (
    GroupContent,
    GroupSpec,
    enforces_role,
    group_ids,
    group_tree,
    keep_enforce_role,
    parse_group,
)
from tessera.model.permissions import Action, allowed, service_rid

router = APIRouter()

Force = Annotated[bool, Query()]


def _group_id(raw: str) -> str:
    group_id = canonical_path(raw)
    problem = path_errors(group_id) if group_id != "/" else None
    if problem:
        raise ApiError(422, "Object is not valid", details=[{"path": "/id", "errors": [problem]}])
    return group_id


def readable_tree(
    request: Request, apps: Mapping[str, AppSpec], groups: Mapping[str, GroupSpec]
) -> tuple[Mapping[str, AppSpec], Mapping[str, GroupSpec]]:
    """The apps the caller may read, and the groups that hold them or that it may read:
    a team sees its own subtree and the path down to it, nothing of other teams."""
    if principal_of(request).grants.superuser:
        return apps, groups
    seen_apps = {i: a for i, a in apps.items() if can_read_app(request, i)}
    seen_groups = {
        i: g
        for i, g in groups.items()
        if can_read_app(request, i) or any(is_under(a, i) for a in seen_apps)
    }
    return seen_apps, seen_groups


def guard_enforce_role(
    request: Request, content: GroupContent, stored: Mapping[str, GroupSpec]
) -> None:
    """Turning a team's `enforceRole` off (or creating a team without it) would let it run
    under any role, outside its quota: that needs `full` on the root, not the team's grant."""
    grants = principal_of(request).grants
    if grants.superuser or allowed(grants, Action.FULL, service_rid("/")):
        return
    for group in (content.group, *content.groups):
        if group.id not in content.stated_enforce_role:
            continue
        before = enforces_role(group.id, stored)
        if group.enforce_role != before:
            raise ApiError(403, f"changing enforceRole of {group.id} needs full on /")


def _exists(controller: ServicesController, group_id: str) -> bool:
    return group_id in group_ids(controller.state.apps, controller.state.groups)


def _parse(body: object, base: str) -> GroupContent:
    try:
        return parse_group(body, base)
    except InvalidApp as error:
        raise invalid(error) from None


@router.get("/v2/groups")
async def root_group(request: Request) -> dict[str, Any]:
    return await show_group("/", request)


@router.get("/v2/groups/{group_id:path}/versions")
async def group_versions(group_id: str, request: Request) -> list[str]:
    controller = services(request)
    group_id = _group_id(group_id)
    if not _exists(controller, group_id):
        raise ApiError(404, f"Group '{group_id}' does not exist")
    state = controller.state
    versions = {
        v
        for app_id, entries in state.versions.items()
        if is_under(app_id, group_id)
        for v, _ in entries
    }
    versions.update(g.version for g in state.groups.values() if is_under(g.id, group_id))
    return sorted((v for v in versions if v), reverse=True)


@router.get("/v2/groups/{group_id:path}")
async def show_group(
    group_id: str, request: Request, embed: Annotated[list[str] | None, Query()] = None
) -> dict[str, Any]:
    controller = services(request)
    group_id = _group_id(group_id)
    state = controller.state
    if not _exists(controller, group_id):
        raise ApiError(404, f"Group '{group_id}' does not exist")
    wanted = {e.replace("group.apps.", "apps.") for e in embeds(embed)}
    apps, groups = readable_tree(request, state.apps, state.groups)
    return group_tree(group_id, apps, groups, lambda app: app_json(controller, app, wanted))


@router.post("/v2/groups", status_code=201)
async def create_root_group(request: Request, force: Force = False) -> JSONResponse:
    return await create_group("/", request, force)


@router.post("/v2/groups/{group_id:path}", status_code=201)
async def create_group(group_id: str, request: Request, force: Force = False) -> JSONResponse:
    controller = services(request)
    content = _parse(await json_body(request), _group_id(group_id))
    guard_enforce_role(request, content, controller.state.groups)
    async with controller.lock:
        if content.group.id == "/" or _exists(controller, content.group.id):
            raise ApiError(
                409,
                f"Group {content.group.id} is already created. Use PUT to change this group.",
            )
        check_paths(controller, [a.id for a in content.apps])
        changes: dict[str, AppSpec | None] = {a.id: a for a in content.apps}
        groups: dict[str, GroupSpec | None] = {g.id: g for g in (content.group, *content.groups)}
        deployment = await deploy(
            controller, changes, force, groups=groups, group_id=content.group.id
        )
    for app in content.apps:
        post_event(controller, request, controller.state.apps.get(app.id), app.id)
    return deployment_result(deployment, 201, location=f"/v2/groups{content.group.id}")


@router.put("/v2/groups")
async def update_root_group(request: Request, force: Force = False) -> JSONResponse:
    return await update_group("/", request, force)


@router.put("/v2/groups/{group_id:path}")
async def update_group(group_id: str, request: Request, force: Force = False) -> JSONResponse:
    controller = services(request)
    group_id = _group_id(group_id)
    body = await json_body(request)
    async with controller.lock:
        existed = _exists(controller, group_id)
        if isinstance(body, Mapping) and "scaleBy" in body:
            changes = _scaled(controller, group_id, body["scaleBy"])
            groups: dict[str, GroupSpec | None] = {}
        elif isinstance(body, Mapping) and set(body) <= {"version", "id"} and "version" in body:
            changes, groups = await _as_of(controller, group_id, body["version"])
        elif isinstance(body, Mapping):
            content = _parse({**body, "id": group_id}, "/")
            guard_enforce_role(request, content, controller.state.groups)
            content = keep_enforce_role(content, controller.state.groups)
            changes, groups = _replacement(controller, content)
        else:
            raise ApiError(
                422, "Object is not valid", details=[{"path": "/", "errors": ["must be an object"]}]
            )
        deployment = await deploy(controller, changes, force, groups=groups, group_id=group_id)
    for app_id, app in changes.items():
        post_event(controller, request, app, app_id)
    if existed:
        return deployment_result(deployment)
    return deployment_result(deployment, 201, location=f"/v2/groups{group_id}")


def _scaled(
    controller: ServicesController, group_id: str, factor: object
) -> dict[str, AppSpec | None]:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 <= factor <= 1000:
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": "/scaleBy", "errors": ["must be a number between 0 and 1000"]}],
        )
    if not _exists(controller, group_id):
        raise ApiError(404, f"Group '{group_id}' does not exist")
    return {
        app.id: app.with_changes(instances=math.ceil(app.instances * factor - 1e-9))
        for app in controller.state.apps.values()
        if is_under(app.id, group_id)
    }


async def _as_of(
    controller: ServicesController, group_id: str, version: object
) -> tuple[dict[str, AppSpec | None], dict[str, GroupSpec | None]]:
    """Every app under the group back as it was at `version` (or gone, if it was not)."""
    if not isinstance(version, str):
        raise ApiError(
            422,
            "Object is not valid",
            details=[{"path": "/version", "errors": ["must be a string"]}],
        )
    state = controller.state
    changes: dict[str, AppSpec | None] = {}
    for app_id in state.versions:
        if not is_under(app_id, group_id):
            continue
        then = state.app_as_of(app_id, version)
        if then is None:
            if app_id in state.apps:
                changes[app_id] = None
        elif then != (state.apps[app_id].version if app_id in state.apps else None):
            app = await state.app_at(app_id, then)
            if app is not None:
                changes[app_id] = app
    if not changes and not any(v <= version for v in _all_versions(controller, group_id)):
        raise ApiError(404, f"Group '{group_id}' does not exist in version {version}")
    return changes, {}


def _all_versions(controller: ServicesController, group_id: str) -> list[str]:
    return [
        v
        for app_id, entries in controller.state.versions.items()
        if is_under(app_id, group_id)
        for v, _ in entries
    ]


def _replacement(
    controller: ServicesController, content: GroupContent
) -> tuple[dict[str, AppSpec | None], dict[str, GroupSpec | None]]:
    state = controller.state
    group_id = content.group.id
    check_paths(controller, [a.id for a in content.apps if a.id not in state.apps])
    changes: dict[str, AppSpec | None] = {a.id: a for a in content.apps}
    for app_id in state.apps:
        if is_under(app_id, group_id) and app_id not in changes:
            changes[app_id] = None
    groups: dict[str, GroupSpec | None] = {g.id: g for g in content.groups}
    groups[group_id] = content.group
    for existing in state.groups:
        if is_under(existing, group_id) and existing not in groups:
            groups[existing] = None
    return changes, groups


@router.delete("/v2/groups")
async def delete_root_group(request: Request, force: Force = False) -> JSONResponse:
    return await delete_group("/", request, force)


@router.delete("/v2/groups/{group_id:path}")
async def delete_group(group_id: str, request: Request, force: Force = False) -> JSONResponse:
    controller = services(request)
    group_id = _group_id(group_id)
    state = controller.state
    async with controller.lock:
        if group_id != "/" and not _exists(controller, group_id):
            raise ApiError(404, f"Group '{group_id}' does not exist")
        changes: dict[str, AppSpec | None] = {
            app_id: None for app_id in state.apps if is_under(app_id, group_id)
        }
        groups: dict[str, GroupSpec | None] = {
            g: None for g in state.groups if is_under(g, group_id)
        }
        deployment = await deploy(controller, changes, force, groups=groups, group_id=group_id)
    for app_id in changes:
        post_event(controller, request, None, app_id)
    return deployment_result(deployment)
