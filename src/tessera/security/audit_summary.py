"""Change summaries for the audit log: one line saying what a write changed, never its values.

`describe_app_change(before, after)` reads two Marathon app JSONs (`model.app.app_to_json`'s
shape; None for "did not exist") and says "created /team-a/web", "scaled /team-a/web 3→10",
"changed image a→b of /team-a/web", "restarted /team-a/web", "deleted /team-a/web", or
"updated /team-a/web: cpus 0.5→1, env +TOKEN ~MODE, labels". `describe_group_change` and
`describe_job_change` do the same for Marathon groups and Metronome jobs; `describe_deploy`
summarises a deployment's changes from the specs the Marathon handlers hold.

What a summary may show: instance counts, resources (cpus, mem, disk, gpus) and image names.
Everything else is named, not shown: env and secrets by key (`+` added, `-` removed, `~`
changed), other fields by name (`cmd`, `labels`, `healthChecks`, ...), since a command line,
a label or an env value may carry a password. Summaries are cut at `MAX_SUMMARY` characters.

Every function here is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tessera.model.app import AppSpec, app_to_json

MAX_SUMMARY = 400
MAX_ITEMS = 8  # changed fields (or apps of a group) listed before "and N more"
_MAX_VALUE = 120  # an image name longer than this is cut

_RESOURCES = ("cpus", "mem", "disk", "gpus")
# Fields that change with every deployment or are live state, not configuration.
_APP_IGNORED = frozenset(
    {
        "id",
        "version",
        "versionInfo",
        "tasks",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "readinessCheckResults",
        "lastTaskFailure",
        "taskStats",
    }
)
_APP_SHOWN = frozenset({"instances", "container", "env", "secrets", *_RESOURCES})
_JOB_IGNORED = frozenset({"id", "history", "historySummary", "activeRuns"})
_RUN_SHOWN = frozenset({"docker", "ucr", "env", "secrets", *_RESOURCES})


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


def _listed(items: list[str], separator: str = ", ") -> str:
    shown = items[:MAX_ITEMS]
    more = len(items) - len(shown)
    return separator.join(shown) + (f"{separator}and {more} more" if more else "")


def _keys_changed(name: str, before: Any, after: Any) -> str | None:
    """`env +NEW -OLD ~CHANGED`: key names only, values compared but never shown."""
    old = before if isinstance(before, Mapping) else {}
    new = after if isinstance(after, Mapping) else {}
    marks = [f"+{k}" for k in sorted(new.keys() - old.keys())]
    marks += [f"-{k}" for k in sorted(old.keys() - new.keys())]
    marks += [f"~{k}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    return f"{name} {' '.join(marks)}" if marks else None


def _image(holder: Mapping[str, Any] | None) -> str | None:
    """The image of an app's `container` or a job's `run` (docker, or UCR's image id)."""
    if not isinstance(holder, Mapping):
        return None
    docker = holder.get("docker")
    if isinstance(docker, Mapping) and docker.get("image"):
        return str(docker["image"])
    ucr = holder.get("ucr")
    image = ucr.get("image") if isinstance(ucr, Mapping) else None
    if isinstance(image, Mapping) and image.get("id"):
        return str(image["id"])
    return None


def _spec_changes(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    ignored: frozenset[str],
    shown: frozenset[str],
    image_holder: str | None,
) -> list[str]:
    """What differs between two definitions, values only where they are safe to show."""
    parts: list[str] = []
    if before.get("instances") != after.get("instances") and "instances" in shown:
        parts.append(
            f"instances {_value(before.get('instances'))}→{_value(after.get('instances'))}"
        )
    old_holder, new_holder = _holder(before, image_holder), _holder(after, image_holder)
    old_image, new_image = _image(old_holder), _image(new_holder)
    if old_image != new_image:
        parts.append(f"image {_value(old_image)}→{_value(new_image)}")
    for name in _RESOURCES:
        if before.get(name) != after.get(name):
            parts.append(f"{name} {_value(before.get(name))}→{_value(after.get(name))}")
    for name in ("env", "secrets"):
        changed = _keys_changed(name, before.get(name), after.get(name))
        if changed:
            parts.append(changed)
    names = (before.keys() | after.keys()) - ignored - shown
    if image_holder is not None:
        names.discard(image_holder)
    # A container whose image stayed may still have changed elsewhere (volumes, ports).
    if _without_image(old_holder) != _without_image(new_holder):
        parts.append(image_holder or "docker")
    parts.extend(sorted(n for n in names if before.get(n) != after.get(n)))
    return parts


def _holder(definition: Mapping[str, Any], image_holder: str | None) -> Any:
    """Where the image lives: an app's `container`, or a job run's `docker` and `ucr`."""
    if image_holder is not None:
        return definition.get(image_holder)
    return {"docker": definition.get("docker"), "ucr": definition.get("ucr")}


def _without_image(holder: Any) -> Any:
    if not isinstance(holder, Mapping):
        return holder
    trimmed = dict(holder)
    for name in ("docker", "ucr"):
        inner = trimmed.get(name)
        if isinstance(inner, Mapping):
            trimmed[name] = {k: v for k, v in inner.items() if k not in ("image",)}
    return trimmed


# ---- Marathon apps ----------------------------------------------------------------------------


def _app_id(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    for definition in (after, before):
        if definition is not None and definition.get("id"):
            return str(definition["id"])
    return "?"


def describe_app_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """One line for a change of one Marathon app (None: the app did not exist, or no longer)."""
    app_id = _app_id(before, after)
    if before is None and after is None:
        return f"no change to {app_id}"
    if before is None:
        return f"created {app_id}"
    if after is None:
        return f"deleted {app_id}"
    parts = _spec_changes(
        before, after, ignored=_APP_IGNORED, shown=_APP_SHOWN, image_holder="container"
    )
    if not parts:
        restarted = before.get("version") != after.get("version")
        return f"restarted {app_id}" if restarted else f"no change to {app_id}"
    if len(parts) == 1 and parts[0].startswith("instances "):
        return _cut(f"scaled {app_id} {parts[0].removeprefix('instances ')}")
    if len(parts) == 1 and parts[0].startswith("image "):
        return _cut(f"changed image {parts[0].removeprefix('image ')} of {app_id}")
    return _cut(f"updated {app_id}: {_listed(parts)}")


def describe_deploy(
    current: Mapping[str, AppSpec],
    changes: Mapping[str, AppSpec | None],
    restart: Iterable[str] = (),
) -> str:
    """A deployment's changes as the Marathon handlers hold them: the apps now (`current`,
    by id), the new specs (None: delete), and the apps restarted without a change."""
    restarted = frozenset(restart)
    lines: list[str] = []
    for app_id in sorted(changes):
        old, new = current.get(app_id), changes[app_id]
        if app_id in restarted and old is not None and (new is None or new == old):
            lines.append(f"restarted {app_id}")
            continue
        before = app_to_json(old) if old is not None else None
        after = app_to_json(new) if new is not None else None
        lines.append(describe_app_change(before, after))
    return _cut(_listed(lines, "; ")) if lines else "no change"


# ---- Marathon groups --------------------------------------------------------------------------


def _flatten(group: Mapping[str, Any] | None) -> tuple[dict[str, Any], set[str]]:
    """Every app (by id) and every group id of a group tree."""
    apps: dict[str, Any] = {}
    groups: set[str] = set()
    pending = [group] if group is not None else []
    while pending:
        node = pending.pop()
        if node.get("id"):
            groups.add(str(node["id"]))
        for app in node.get("apps") or ():
            if isinstance(app, Mapping) and app.get("id"):
                apps[str(app["id"])] = app
        pending.extend(g for g in node.get("groups") or () if isinstance(g, Mapping))
    return apps, groups


def describe_group_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """One line for a change of a Marathon group tree (None: it did not exist, or no longer)."""
    group_id = _app_id(before, after)
    old_apps, old_groups = _flatten(before)
    new_apps, new_groups = _flatten(after)
    if before is None and after is not None:
        count = len(new_apps)
        return f"created group {group_id}" + (f" with {count} apps" if count else "")
    if after is None:
        return f"deleted group {group_id}" if before is not None else f"no change to {group_id}"
    lines = [f"created group {g}" for g in sorted(new_groups - old_groups)]
    lines += [f"deleted group {g}" for g in sorted(old_groups - new_groups)]
    for app_id in sorted(old_apps.keys() | new_apps.keys()):
        old, new = old_apps.get(app_id), new_apps.get(app_id)
        if old != new:
            lines.append(describe_app_change(old, new))
    if not lines:
        return f"no change to group {group_id}"
    return _cut(f"updated group {group_id}: {_listed(lines, '; ')}")


# ---- Metronome jobs ---------------------------------------------------------------------------


def describe_job_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """One line for a change of a Metronome job (None: it did not exist, or no longer)."""
    job_id = _app_id(before, after)
    if before is None:
        return f"created job {job_id}" if after is not None else f"no change to job {job_id}"
    if after is None:
        return f"deleted job {job_id}"
    run_before, run_after = before.get("run") or {}, after.get("run") or {}
    parts = _spec_changes(
        run_before, run_after, ignored=frozenset(), shown=_RUN_SHOWN, image_holder=None
    )
    # The run's own image field names are shown above; its other fields by name (run.cmd).
    parts = [p if " " in p else f"run.{p}" for p in parts]
    names = (before.keys() | after.keys()) - _JOB_IGNORED - {"run"}
    parts.extend(sorted(n for n in names if before.get(n) != after.get(n)))
    if not parts:
        return f"no change to job {job_id}"
    if len(parts) == 1 and parts[0].startswith("image "):
        return _cut(f"changed image {parts[0].removeprefix('image ')} of job {job_id}")
    return _cut(f"updated job {job_id}: {_listed(parts)}")
