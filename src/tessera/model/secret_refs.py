"""References to secrets in apps and jobs: the `secrets` section, who may read what, task uses.

An app or job names the secrets it needs (`"secrets": {"secret0": {"source": "team-a/db"}}`)
and uses them by that name: as an environment variable (`"env": {"DB": {"secret":
"secret0"}}`) or as a file in its sandbox (a volume `{"containerPath": "db", "secret":
"secret0"}`). Only references live in specs, the store, task JSON and API answers; values
are resolved by the master at launch and travel in the launch message only.

Spaces, as DC/OS: a secret may be read by a service whose path lies in the secret's own
directory or below it, segment-wise (`/team-a/db` by `/team-a/web` and `/team-a/x/web`,
never by `/team-ab/web`; `/team-a/x/db` not by `/team-a/web`). Unlike DC/OS, a root-level
secret (`/db`) is readable only by root-level services. Metronome job ids are dotted
(`team-a.nightly`): they count as the path `/team-a/nightly`. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.model.permissions import PathRefused, secret_path

_SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# The executor's own files in a sandbox: a secret file must not replace them.
_RESERVED_FILES = frozenset({"stdout", "stderr"})


@dataclass(frozen=True, slots=True)
class SecretUse:
    """One use of a secret by a task: environment variable `env` or sandbox file `file`."""

    source: str  # canonical secret path, `/team-a/db`
    env: str | None = None
    file: str | None = None  # relative to the sandbox, no `..`

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "env": self.env, "file": self.file}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> SecretUse:
        return SecretUse(str(data["source"]), data.get("env"), data.get("file"))


def owner_path_of_job(job_id: str) -> str:
    """The path a Metronome job counts as for secret spaces: `a.b` -> `/a/b`."""
    return "/" + job_id.replace(".", "/")


def readable_by(secret: str, owner: str) -> bool:
    """May the service (app or job) at canonical path `owner` read the secret at `secret`?"""
    directory = secret.rstrip("/").rsplit("/", 1)[0] or "/"
    group = owner.rstrip("/").rsplit("/", 1)[0] or "/"
    if directory == "/":
        return group == "/"
    return group == directory or group.startswith(directory + "/")


def space_error(source: str, owner: str) -> str | None:
    """Why the service at `owner` may not use the secret `source` (canonical), or None."""
    if readable_by(source, owner):
        return None
    directory = source.rsplit("/", 1)[0] or "/"
    if directory == "/":
        return f"the root-level secret {source!r} is readable only by root-level services"
    return (
        f"the secret {source!r} may be used only by services in {directory!r} and below, "
        f"not by {owner!r}"
    )


Fail = Callable[[str, str], None]  # (field path, message)


def read_secrets(raw: object, owner: str, where: str, fail: Fail) -> dict[str, str]:
    """The `secrets` section: name -> source as given (validated, in `owner`'s space)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        fail(where, 'must be an object of {"source": path}')
        return {}
    found: dict[str, str] = {}
    for name, entry in raw.items():
        at = f"{where}/{name}"
        if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name):
            fail(at, "is not a valid secret name")
            continue
        if not isinstance(entry, Mapping) or set(entry) - {"source"}:
            fail(at, 'must be {"source": "<secret path>"}')
            continue
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip("/"):
            fail(f"{at}/source", "must be a secret path such as team-a/db")
            continue
        try:
            canonical = secret_path(source)
        except PathRefused as refused:
            fail(f"{at}/source", refused.reason)
            continue
        problem = space_error(canonical, owner)
        if problem:
            fail(f"{at}/source", problem)
            continue
        found[name] = source
    return found


def secret_reference(item: Mapping[str, Any]) -> object:
    """The name in an env value `{"secret": name}` (whatever it is, for the caller to check)."""
    return item.get("secret")


def reference_error(name: object, secrets: Mapping[str, str]) -> str | None:
    if not isinstance(name, str) or not name:
        return 'must be {"secret": "<name in secrets>"}'
    if name not in secrets:
        return f"references the unknown secret {name!r}: declare it in secrets"
    return None


def file_path_error(path: str) -> str | None:
    """Why `path` is not a place for a secret file in the sandbox, or None."""
    if path.startswith("/"):
        return "a secret file's containerPath is relative to the sandbox (e.g. secrets/db)"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must be a relative path without empty, '.' or '..' segments"
    if parts[0] in _RESERVED_FILES:
        return f"{parts[0]!r} is the task's log file"
    if "\x00" in path:
        return "must not contain NUL"
    return None


def task_uses(
    secrets: Mapping[str, str],
    env: Mapping[str, str],
    files: Iterable[tuple[str, str]],
) -> tuple[SecretUse, ...]:
    """What a task built from these references needs: `env` maps variable -> secret name,
    `files` holds (sandbox path, secret name)."""
    uses = [SecretUse(secret_path(secrets[name]), env=var) for var, name in env.items()]
    uses += [SecretUse(secret_path(secrets[name]), file=path) for path, name in files]
    return tuple(uses)
