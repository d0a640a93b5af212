"""Marathon groups: a tree of apps and groups with dependencies, parsed and rendered.

Apps are kept flat by id; a group exists when it was created explicitly or when an app
lives under it. `parse_group` flattens a posted group tree into groups and apps (ids made
absolute); `group_tree` renders the tree back as Marathon's JSON.

Roles (DC/OS 2.0): a top-level group `/team-a` with `enforceRole` makes every app below it
run under the role `team-a`, the role its quota limits (`effective_role`, `role_error`).
New top-level groups enforce their role unless the request says otherwise; groups stored
before the field existed do not (DC/OS's upgrade rule); only top-level groups may set it.
A top-level group that exists only because an app lives under it counts as new.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
    enforce_role: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dependencies": list(self.dependencies),
            "version": self.version,
            "enforceRole": self.enforce_role,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> GroupSpec:
        return GroupSpec(
            id=str(data["id"]),
            dependencies=tuple(str(d) for d in data.get("dependencies", ())),
            version=str(data.get("version", "")),
            # Stored before enforceRole existed: an existing group, which DC/OS leaves off.
            enforce_role=bool(data.get("enforceRole", False)),
        )


@dataclass(frozen=True, slots=True)
class GroupContent:
    """A posted group, flattened: itself, every group below it, and every app."""

    group: GroupSpec
    groups: tuple[GroupSpec, ...]
    apps: tuple[AppSpec, ...]
    # Groups whose definition named `enforceRole`; the others keep a stored group's value
    # (`keep_enforce_role`) or take the default for a new group.
    stated_enforce_role: frozenset[str] = frozenset()


def parse_group(raw: object, base: str = "/", where: str = "") -> GroupContent:
    """Validate a Marathon group tree; ids are resolved against `base` (the URL's group)."""
    errors: list[FieldError] = []
    groups: list[GroupSpec] = []
    apps: list[AppSpec] = []
    stated: set[str] = set()
    top = _read_group(raw, base, where, errors, groups, apps, stated, top_level=True)
    if errors:
        raise InvalidApp(errors)
    seen: set[str] = set()
    for app in apps:
        if app.id in seen:
            errors.append(FieldError(where or "/", f"app {app.id} is defined twice"))
        seen.add(app.id)
    if errors:
        raise InvalidApp(errors)
    return GroupContent(top, tuple(groups), tuple(apps), frozenset(stated))


def _read_group(
    raw: object,
    base: str,
    where: str,
    errors: list[FieldError],
    groups: list[GroupSpec],
    apps: list[AppSpec],
    stated: set[str],
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
    if group_id == "/" and not top_level:
        # `{"id": ""}` or `".."` inside a group would stand for the root itself.
        errors.append(FieldError(f"{where}/id", "a nested group cannot be the root group"))
        return GroupSpec(base)
    if group_id != "/":
        problem = path_errors(group_id)
        if problem:
            errors.append(FieldError(f"{where}/id", problem))
        elif not top_level and parent_path(group_id) != base:
            errors.append(FieldError(f"{where}/id", f"must be a direct child of group {base}"))
    if raw.get("pods"):
        errors.append(FieldError(f"{where}/pods", "pods are not supported by Tessera yet"))
    dependencies = _dependencies(raw.get("dependencies"), group_id, f"{where}/dependencies", errors)
    enforce_role = _enforce_role(raw, group_id, f"{where}/enforceRole", errors)
    if "enforceRole" in raw:
        stated.add(group_id)
    group = GroupSpec(group_id, dependencies, enforce_role=enforce_role)
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
        _read_group(sub, group_id, f"{where}/groups/{index}", errors, groups, apps, stated)
    return group


def _enforce_role(
    raw: Mapping[str, Any], group_id: str, where: str, errors: list[FieldError]
) -> bool:
    """The stated value, else the default of a new group: on for a top-level group."""
    top_level = group_id != "/" and parent_path(group_id) == "/"
    value = raw.get("enforceRole")
    if value is None:
        return top_level
    if not isinstance(value, bool):
        errors.append(FieldError(where, "must be a boolean"))
        return top_level
    # `false` is what GET shows on every nested group, so clients send it back; only
    # turning it on below the top is an error (Marathon's rule).
    if value and not top_level:
        errors.append(FieldError(where, "only a top-level group can enforce its role"))
    return value and top_level


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
        "enforceRole": enforces_role(group_id, groups),
    }


# ---- roles ------------------------------------------------------------------------------

DEFAULT_ROLE = "*"


def top_level_group(path: str) -> str | None:
    """`/team-a/web/api` -> `/team-a`; None for the root and for what lies directly in it."""
    parts = [part for part in path.split("/") if part]
    return "/" + parts[0] if len(parts) > 1 else None


def enforces_role(group_id: str, groups: Mapping[str, GroupSpec]) -> bool:
    """Whether a group enforces its role; a top-level group with no record is new."""
    if group_id == "/" or parent_path(group_id) != "/":
        return False
    group = groups.get(group_id)
    return group.enforce_role if group is not None else True


def keep_enforce_role(content: GroupContent, stored: Mapping[str, GroupSpec]) -> GroupContent:
    """An update that does not name `enforceRole` leaves a stored group's value alone."""

    def settled(group: GroupSpec) -> GroupSpec:
        previous = stored.get(group.id)
        if previous is None or group.id in content.stated_enforce_role:
            return group
        return replace(group, enforce_role=previous.enforce_role)

    return replace(
        content, group=settled(content.group), groups=tuple(settled(g) for g in content.groups)
    )


def effective_role(
    app_id: str, groups: Mapping[str, GroupSpec], requested: str = DEFAULT_ROLE
) -> str:
    """The role an app runs under: its top-level group's name when that group enforces its
    role, else the role the app asked for (`*` when it named none)."""
    top = top_level_group(app_id)
    if top is not None and enforces_role(top, groups):
        return top.lstrip("/")
    return requested


def group_role(group_id: str, groups: Mapping[str, GroupSpec]) -> str:
    """The role of a native one-off task placed in `group_id` (`/team-a/batch` -> `team-a`
    when `/team-a` enforces its role, else `*`): what its app would get there."""
    parts = [part for part in group_id.split("/") if part]
    return effective_role("/" + "/".join([*parts, "task"]), groups) if parts else DEFAULT_ROLE


def role_error(
    app_id: str,
    requested: str,
    groups: Mapping[str, GroupSpec],
    previous: str | None = None,
) -> str | None:
    """Why an app may not ask for `requested` (an error for `/role`), or None.

    After Marathon: below a top-level group that enforces its role, only that role; below
    one that does not, `*`, the group's role or the role the app already had; in the root
    group, `*` or the role it already had. `*` always passes: parsers give it to an app
    that names no role, and `effective_role` turns it into the enforced one."""
    top = top_level_group(app_id)
    allowed = {DEFAULT_ROLE}
    if top is not None:
        allowed.add(top.lstrip("/"))
    if previous is not None and not (top is not None and enforces_role(top, groups)):
        allowed.add(previous)
    if requested in allowed:
        return None
    choices = " or ".join(sorted(allowed))
    return f"must be {choices} for an app under {top or '/'}"


def job_role(job_id: str, groups: Mapping[str, GroupSpec], requested: str = DEFAULT_ROLE) -> str:
    """The role a Metronome job's runs use: `team-a.nightly` runs under `team-a` when the
    group `/team-a` exists and enforces its role (a team), else under what the job asks for.

    DC/OS leaves jobs outside quotas; Tessera counts them against their team's. A job id's
    first label is its team by the same convention as permissions (`jobs:team-a`). Jobs
    create no groups, so here only a stored group counts, never an implicit one."""
    team = job_id.split(".", 1)[0]
    group = groups.get("/" + team)
    if group is not None and group.enforce_role:
        return team
    return requested
