"""Marathon groups: a tree of apps and groups with dependencies, parsed and rendered.

Apps are kept flat by id; a group exists when it was created explicitly or when an app
lives under it. `parse_group` flattens a posted group tree into groups and apps (ids made
absolute); `group_tree` renders the tree back as Marathon's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.model.app import (
    AppSpec,
    InvalidApp,
    canonical_path,
    is_under,
    parent_path,
    parse_app,
    path_errors,
)
from tessera.model.health import FieldError

GROUP_FIELDS = frozenset(
    {"id", "apps", "groups", "dependencies", "version", "pods", "enforceRole", "scaleBy"}
)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    id: str
    dependencies: tuple[str, ...] = ()
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "dependencies": list(self.dependencies), "version": self.version}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> GroupSpec:
        return GroupSpec(
            id=str(data["id"]),
            dependencies=tuple(str(d) for d in data.get("dependencies", ())),
            version=str(data.get("version", "")),
        )


@dataclass(frozen=True, slots=True)
class GroupContent:
    """A posted group, flattened: itself, every group below it, and every app."""

    group: GroupSpec
    groups: tuple[GroupSpec, ...]
    apps: tuple[AppSpec, ...]


def parse_group(raw: object, base: str = "/", where: str = "") -> GroupContent:
    """Validate a Marathon group tree; ids are resolved against `base` (the URL's group)."""
    errors: list[FieldError] = []
    groups: list[GroupSpec] = []
    apps: list[AppSpec] = []
    top = _read_group(raw, base, where, errors, groups, apps, top_level=True)
    if errors:
        raise InvalidApp(errors)
    seen: set[str] = set()
    for app in apps:
        if app.id in seen:
            errors.append(FieldError(where or "/", f"app {app.id} is defined twice"))
        seen.add(app.id)
    if errors:
        raise InvalidApp(errors)
    return GroupContent(top, tuple(groups), tuple(apps))


def _read_group(
    raw: object,
    base: str,
    where: str,
    errors: list[FieldError],
    groups: list[GroupSpec],
    apps: list[AppSpec],
    top_level: bool = False,
) -> GroupSpec:
    if not isinstance(raw, Mapping):
        errors.append(FieldError(where or "/", "must be a JSON object"))
        return GroupSpec(base)
    for name in raw:
        if name not in GROUP_FIELDS:
            errors.append(FieldError(f"{where}/{name}", "unknown field"))
    raw_id = raw.get("id")
    if raw_id is None and top_level:
        group_id = base
    elif not isinstance(raw_id, str):
        errors.append(FieldError(f"{where}/id", "is required"))
        return GroupSpec(base)
    else:
        group_id = canonical_path(raw_id, base)
    if group_id != "/":
        problem = path_errors(group_id)
        if problem:
            errors.append(FieldError(f"{where}/id", problem))
        elif not top_level and parent_path(group_id) != base:
            errors.append(FieldError(f"{where}/id", f"must be a direct child of group {base}"))
    if raw.get("pods"):
        errors.append(FieldError(f"{where}/pods", "pods are not supported by Tessera yet"))
    dependencies = _dependencies(raw.get("dependencies"), group_id, f"{where}/dependencies", errors)
    group = GroupSpec(group_id, dependencies)
    if not top_level:
        groups.append(group)
    for index, app_raw in enumerate(_list(raw.get("apps"), f"{where}/apps", errors)):
        app_where = f"{where}/apps/{index}"
        try:
            app = parse_app(app_raw, app_where, base=group_id)
        except InvalidApp as error:
            errors.extend(error.errors)
            continue
        if parent_path(app.id) != group_id:
            errors.append(FieldError(f"{app_where}/id", f"must be a direct child of {group_id}"))
        apps.append(app)
    for index, sub in enumerate(_list(raw.get("groups"), f"{where}/groups", errors)):
        _read_group(sub, group_id, f"{where}/groups/{index}", errors, groups, apps)
    return group


def _list(raw: object, where: str, errors: list[FieldError]) -> Sequence[Any]:
    if raw is None:
        return ()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        errors.append(FieldError(where, "must be a list"))
        return ()
    return raw


def _dependencies(
    raw: object, group_id: str, where: str, errors: list[FieldError]
) -> tuple[str, ...]:
    found: list[str] = []
    for index, item in enumerate(_list(raw, where, errors)):
        if not isinstance(item, str) or not item.strip("/"):
            errors.append(FieldError(f"{where}/{index}", "must be an app or group id"))
            continue
        path = canonical_path(item, group_id)
        problem = path_errors(path)
        if problem:
            errors.append(FieldError(f"{where}/{index}", problem))
        elif path not in found:
            found.append(path)
    return tuple(found)


# ---- the tree -------------------------------------------------------------------------------


def group_ids(apps: Mapping[str, AppSpec], groups: Mapping[str, GroupSpec]) -> set[str]:
    """Every group that exists: the explicit ones, and every ancestor of an app or group."""
    found = {"/"}
    for path in [*apps, *groups]:
        node = parent_path(path) if path in apps else path
        while node != "/":
            found.add(node)
            node = parent_path(node)
    return found


def group_version(
    group_id: str, apps: Mapping[str, AppSpec], groups: Mapping[str, GroupSpec]
) -> str:
    """The newest version of anything in the group."""
    versions = [app.version for app in apps.values() if is_under(app.id, group_id)]
    versions += [g.version for g in groups.values() if is_under(g.id, group_id)]
    return max((v for v in versions if v), default="")


def group_tree(
    group_id: str,
    apps: Mapping[str, AppSpec],
    groups: Mapping[str, GroupSpec],
    render_app: Callable[[AppSpec], dict[str, Any]],
    existing: set[str] | None = None,
) -> dict[str, Any]:
    """Marathon's group JSON: id, apps, groups, pods, dependencies, version."""
    existing = existing if existing is not None else group_ids(apps, groups)
    children = sorted(g for g in existing if g != "/" and parent_path(g) == group_id)
    explicit = groups.get(group_id)
    return {
        "id": group_id,
        "apps": [render_app(apps[a]) for a in sorted(apps) if parent_path(a) == group_id],
        "groups": [group_tree(c, apps, groups, render_app, existing) for c in children],
        "pods": [],
        "dependencies": list(explicit.dependencies) if explicit else [],
        "version": group_version(group_id, apps, groups),
    }
