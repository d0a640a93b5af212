"""Who may do what: DC/OS permission strings, the check on each request, what routes need.

A permission is a DC/OS resource id (a "rid": `dcos:service:marathon:marathon:services:/team-a`)
and a set of actions (`create`, `read`, `update`, `delete`, `full` = all of them). A rid may end
in an optional part that narrows it; without that part it covers the whole family:

| Family (the rid without its optional part) | Optional part    | A grant on it covers         |
|--------------------------------------------|------------------|------------------------------|
| `dcos:service:marathon:marathon:services`  | `:/<group path>` | the path and below, by `/`   |
| `dcos:mesos:agent:sandbox:app_id`          | `:/<app path>`   | the path and below, by `/`   |
| `dcos:secrets:default`, `...:list:default` | `:/<path>`       | the path and below, by `/`   |
| `dcos:service:metronome:metronome:jobs`    | `:<job id>`      | the id and `<id>.*`          |
| `dcos:mesos:master:quota:role`, `...weight` | `:<role>`       | that role only               |
| `dcos:mesos:master:task:user`              | `:<linux user>`  | that user only               |
| `...:marathon:admin:leader|config|events`  | none             | itself only                  |
| `dcos:mesos:master:agent`, `...:acs`       | none             | itself only                  |
| `dcos:superuser`                           | none             | everything, any action       |

Other `dcos:` rids (DC/OS's `dcos:adminrouter:service:marathon`, ...) parse, so DC/OS scripts
can store them, but no route needs them. `...:services:/team-a` covers `/team-a/web`, never
`/team-ab`; `jobs:team-a` covers `team-a.nightly`, never `team-ab`. Paths and job ids in
requests are checked, never repaired: `..`, `.`, `%`, `//`, uppercase or any character Marathon
does not allow raises `PathRefused` (answer 422) instead of being normalised into another path.

Requests map to what they need through `ROUTES` (route template without its alias prefix ->
`Rule`): one dependency calls `route_rule(method, route.path)` then `required(rule, path params,
ids, query)` and checks the result with `permitted`. HTTP methods give the action (GET/HEAD
read, POST create, PUT/PATCH update, DELETE delete) except where Marathon says otherwise
(`METHOD_EXCEPTIONS`): restart, task kill, deployment cancel, queue delay reset, job runs and
schedule changes are `update`; `POST /v2/groups` and any write on the root group (or on a whole
family) need `full`. In short:

| Routes (every alias)                                   | Rid                               |
|--------------------------------------------------------|-----------------------------------|
| `/v2/apps/{id}...`, `/v2/groups/{id}...`, queue delay  | services:`<id>` (+ every body id) |
| `/v2/tasks/delete`, `/v2/deployments/{id}`, `/v1/tasks/{id}` | services:`<each one's app>` |
| `/v1/jobs/{id}...` (Metronome)                         | jobs:`<id>` (+ the body's id)     |
| `POST /v1/tasks` (native one-off task)                 | services:`<its group>`            |
| `GET /v2/info`, `/v2/leader`; `DELETE /v2/leader`      | admin:config, admin:leader        |
| `/v1/agents...`                                        | `dcos:mesos:master:agent`         |
| lists: apps, groups, tasks, deployments, queues, jobs, events | none; items filtered (read) |

Every function here is pure: no I/O, no clock. `allowed` costs one dict lookup and a few string
comparisons per grant of the requested family.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import lru_cache
from itertools import chain
from typing import NamedTuple, TypeAlias
from urllib.parse import quote


class Action(StrEnum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"
    FULL = "full"


ALL_ACTIONS = frozenset(Action)
CRUD = frozenset({Action.CREATE, Action.READ, Action.UPDATE, Action.DELETE})


class InvalidRid(ValueError):
    """A permission string (or grant) that is not one Tessera understands."""


class PathRefused(ValueError):
    """A path or id in a request that is not in canonical form: refuse it, never repair it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path!r}: {reason}")


# ---- paths and ids ----------------------------------------------------------------------------

_LABEL = r"([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
# Marathon's path segment: dot-separated labels of lowercase letters, digits and inner dashes.
_SERVICE_SEGMENT = re.compile(rf"({_LABEL}\.)*{_LABEL}")
# Secret names also allow `_` (DC/OS secrets such as `db_password`); still lowercase.
_SECRET_SEGMENT = re.compile(r"[a-z0-9]([a-z0-9_.\-]*[a-z0-9])?")
# Metronome's JobId: the same labels, dot-separated.
_JOB_ID = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# Roles and Linux users are matched exactly, so only characters that cannot hide a path.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\$?")


def _path(raw: str, segment: re.Pattern[str]) -> str:
    """The canonical form (`/a/b`) of a path with an optional leading and trailing `/`."""
    if "%" in raw:
        raise PathRefused(raw, "percent-escapes are not allowed in ids")
    if "//" in raw:
        raise PathRefused(raw, "empty path segment")
    body = raw.removeprefix("/").removesuffix("/")
    if not body:
        return "/"
    for part in body.split("/"):
        if part in (".", ".."):
            raise PathRefused(raw, "relative segments ('.', '..') are not allowed")
        if not segment.fullmatch(part):
            raise PathRefused(
                raw,
                f"{part!r} is not a valid segment: lowercase letters, digits, dashes and dots, "
                "starting and ending with a letter or digit",
            )
    return "/" + body


def service_path(raw: str) -> str:
    """A Marathon app or group id in canonical form (`team-a/web/` -> `/team-a/web`)."""
    return _path(raw, _SERVICE_SEGMENT)


def secret_path(raw: str) -> str:
    return _path(raw, _SECRET_SEGMENT)


def job_id(raw: str) -> str:
    if not _JOB_ID.fullmatch(raw):
        raise PathRefused(raw, "not a valid job id: dot-separated lowercase names")
    return raw


def _name(raw: str) -> str:
    if not _NAME.fullmatch(raw):
        raise PathRefused(raw, "not a valid role or user name")
    return raw


# ---- resource ids -----------------------------------------------------------------------------


class _Tail(Enum):
    """What the optional last part of a family is, and how a grant's part covers a request's."""

    NONE = "none"  # the family has no optional part
    PATH = "path"  # segment-wise prefix on `/`
    SECRET = "secret"  # the same, with secret names
    DOTTED = "dotted"  # prefix on `.` (Metronome job ids)
    NAME = "name"  # exact


SUPERUSER = "dcos:superuser"
SERVICES = "dcos:service:marathon:marathon:services"
ADMIN_LEADER = "dcos:service:marathon:marathon:admin:leader"
ADMIN_CONFIG = "dcos:service:marathon:marathon:admin:config"
ADMIN_EVENTS = "dcos:service:marathon:marathon:admin:events"
JOBS = "dcos:service:metronome:metronome:jobs"
AGENTS = "dcos:mesos:master:agent"
QUOTA = "dcos:mesos:master:quota:role"
WEIGHT = "dcos:mesos:master:weight:role"
TASK_USER = "dcos:mesos:master:task:user"
SANDBOX = "dcos:mesos:agent:sandbox:app_id"
SECRETS = "dcos:secrets:default"
SECRETS_LIST = "dcos:secrets:list:default"
ACS = "dcos:adminrouter:acs"

_FAMILIES: dict[str, _Tail] = {
    SUPERUSER: _Tail.NONE,
    ADMIN_LEADER: _Tail.NONE,
    ADMIN_CONFIG: _Tail.NONE,
    ADMIN_EVENTS: _Tail.NONE,
    AGENTS: _Tail.NONE,
    ACS: _Tail.NONE,
    SERVICES: _Tail.PATH,
    SANDBOX: _Tail.PATH,
    SECRETS: _Tail.SECRET,
    SECRETS_LIST: _Tail.SECRET,
    JOBS: _Tail.DOTTED,
    QUOTA: _Tail.NAME,
    WEIGHT: _Tail.NAME,
    TASK_USER: _Tail.NAME,
}
_TAILED = {family: kind for family, kind in _FAMILIES.items() if kind is not _Tail.NONE}
# Any other DC/OS rid: colon-separated lowercase words, matched exactly.
_OPAQUE = re.compile(r"dcos(:[a-z0-9_\-.]+)+")
_SEPARATOR = {_Tail.PATH: "/", _Tail.SECRET: "/", _Tail.DOTTED: "."}


def _tail(kind: _Tail, raw: str) -> str | None:
    """The canonical optional part, or None when it covers the whole family (`/`, empty)."""
    if kind is _Tail.PATH:
        path = service_path(raw)
        return None if path == "/" else path
    if kind is _Tail.SECRET:
        path = secret_path(raw)
        return None if path == "/" else path
    if not raw:
        return None
    return job_id(raw) if kind is _Tail.DOTTED else _name(raw)


@dataclass(frozen=True, slots=True)
class Rid:
    """A parsed resource id: its family and its optional part (None: the whole family)."""

    family: str
    tail: str | None = None

    def __str__(self) -> str:
        return self.family if self.tail is None else f"{self.family}:{self.tail}"


@lru_cache(maxsize=4096)
def parse_rid(text: str) -> Rid:
    """`dcos:...` -> Rid, canonical (`...:services:/` is `...:services`); InvalidRid if not one."""
    if text in _FAMILIES:
        return Rid(text)
    for family, kind in _TAILED.items():
        if text.startswith(family + ":"):
            try:
                return Rid(family, _tail(kind, text[len(family) + 1 :]))
            except PathRefused as refused:
                raise InvalidRid(f"{text!r}: {refused.reason}") from None
    if _OPAQUE.fullmatch(text):
        return Rid(text)
    raise InvalidRid(f"{text!r} is not a DC/OS resource id")


def _rid(family: str, raw: str) -> Rid:
    return Rid(family, _tail(_FAMILIES[family], raw))


def service_rid(path: str) -> Rid:
    """For a Marathon app or group, and for a native task's group."""
    return _rid(SERVICES, path)


def job_rid(job: str) -> Rid:
    return _rid(JOBS, job)


def sandbox_rid(app_path: str) -> Rid:
    """Reading the sandbox (files, logs) of a task of this app or group."""
    return _rid(SANDBOX, app_path)


def secret_rid(path: str) -> Rid:
    return _rid(SECRETS, path)


def secret_list_rid(path: str) -> Rid:
    return _rid(SECRETS_LIST, path)


def quota_rid(role: str) -> Rid:
    return _rid(QUOTA, role)


def task_user_rid(user: str) -> Rid:
    """Running a task as this Linux user (`create`)."""
    return _rid(TASK_USER, user)


# ---- grants and principals --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    rid: Rid
    actions: frozenset[Action]

    def __post_init__(self) -> None:
        if not self.actions:
            raise InvalidRid(f"a grant on {self.rid} needs at least one action")


def parse_actions(text: str) -> frozenset[Action]:
    """DC/OS's comma-separated actions: `read,update`."""
    try:
        return frozenset(Action(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidRid(f"{text!r}: actions are {', '.join(Action)}") from None


def grant(rid: str | Rid, *actions: Action | str) -> Grant:
    parsed = rid if isinstance(rid, Rid) else parse_rid(rid)
    return Grant(parsed, parse_actions(",".join(actions)))


def escaped_rid(rid: str | Rid) -> str:
    """A rid as DC/OS writes it in a URL: escaped twice, so `/` becomes `%252F`."""
    return quote(quote(str(rid), safe=":"), safe=":")


def parse_grant(text: str) -> Grant:
    """`<rid> <action>[,<action>...]`, as DC/OS writes them (`... :services:/team-a full`)."""
    rid, _, actions = text.strip().rpartition(" ")
    if not rid:
        raise InvalidRid(f"{text!r}: expected '<rid> <actions>'")
    return grant(rid.strip(), actions)


class _Entry(NamedTuple):
    tail: str | None
    prefix: str | None  # tail + separator: what a covered path starts with
    actions: frozenset[Action]  # `full` already expanded


@dataclass(frozen=True, slots=True)
class Grants:
    """A set of grants (merged per rid), indexed by family so that checks stay cheap."""

    items: frozenset[Grant] = frozenset()
    superuser: bool = field(init=False, repr=False, compare=False)
    _index: dict[str, tuple[_Entry, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[_Entry]] = {}
        for item in self.items:
            kind = _FAMILIES.get(item.rid.family, _Tail.NONE)
            tail = item.rid.tail
            separator = _SEPARATOR.get(kind)
            prefix = tail + separator if tail is not None and separator else None
            actions = ALL_ACTIONS if Action.FULL in item.actions else item.actions
            index.setdefault(item.rid.family, []).append(_Entry(tail, prefix, actions))
        object.__setattr__(self, "superuser", SUPERUSER in index)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})

    @classmethod
    def of(cls, grants: Iterable[Grant]) -> Grants:
        merged: dict[Rid, frozenset[Action]] = {}
        for item in grants:
            merged[item.rid] = merged.get(item.rid, frozenset()) | item.actions
        return cls(frozenset(Grant(rid, actions) for rid, actions in merged.items()))


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request, with its effective grants: its own and its groups'."""

    uid: str
    kind: PrincipalKind
    groups: frozenset[str] = frozenset()
    grants: Grants = Grants()

    @classmethod
    def build(
        cls,
        uid: str,
        kind: PrincipalKind,
        own: Iterable[Grant] = (),
        group_grants: Mapping[str, Iterable[Grant]] | None = None,
    ) -> Principal:
        by_group = group_grants or {}
        everything = chain(own, *by_group.values())
        return cls(uid, kind, frozenset(by_group), Grants.of(everything))


# ---- the check --------------------------------------------------------------------------------

HeldGrants: TypeAlias = Grants | Principal | Iterable[Grant]


def _held(grants: HeldGrants) -> Grants:
    if isinstance(grants, Grants):
        return grants
    if isinstance(grants, Principal):
        return grants.grants
    return Grants.of(grants)


def allowed(grants: HeldGrants, action: Action | str, rid: Rid | str) -> bool:
    """May the holder of `grants` do `action` on `rid`? (`full` is asked only of `full` grants.)"""
    held = _held(grants)
    if held.superuser:
        return True
    target = rid if isinstance(rid, Rid) else parse_rid(rid)
    tail = target.tail
    # Plain tuple unpacking: this loop runs for every request and every listed item.
    for grant_tail, prefix, actions in held._index.get(target.family, ()):
        if action in actions and (
            grant_tail is None
            or grant_tail == tail
            or (prefix is not None and tail is not None and tail.startswith(prefix))
        ):
            return True
    return False


class Need(NamedTuple):
    action: Action
    rid: Rid


def permitted(grants: HeldGrants, needs: Iterable[Need]) -> bool:
    """Every need is allowed (cancelling a deployment needs update on all its apps)."""
    held = _held(grants)
    return all(allowed(held, need.action, need.rid) for need in needs)


def visible(grants: HeldGrants, rids: Iterable[Rid]) -> bool:
    """Read on any of `rids`: a list item touching several objects (a deployment) is shown."""
    held = _held(grants)
    return held.superuser or any(allowed(held, Action.READ, rid) for rid in rids)


def may_grant(granter: HeldGrants, rid: Rid | str, actions: Iterable[Action | str]) -> bool:
    """Nobody grants what they do not hold (superusers hold everything)."""
    held = _held(granter)
    target = rid if isinstance(rid, Rid) else parse_rid(rid)
    wanted = list(actions)
    return bool(wanted) and all(allowed(held, action, target) for action in wanted)


# ---- requests ---------------------------------------------------------------------------------


def action_for_method(method: str) -> Action:
    """The plain HTTP mapping; `ROUTES` holds Marathon's exceptions."""
    actions = {
        "GET": Action.READ,
        "HEAD": Action.READ,
        "POST": Action.CREATE,
        "PUT": Action.UPDATE,
        "PATCH": Action.UPDATE,
        "DELETE": Action.DELETE,
    }
    try:
        return actions[method.upper()]
    except KeyError:
        raise ValueError(f"no action for HTTP method {method!r}") from None


class Ids(StrEnum):
    """What the route must pass to `required` as `ids`, besides its path parameters."""

    NONE = "none"
    BODY = "body"  # every object id in the body (nested apps and groups too), made absolute
    TASKS = "tasks"  # the app (or native group) path of every task the request names
    DEPLOYMENT = "deployment"  # every app path the deployment touches


class Listing(StrEnum):
    """What a route that answers a list must filter, item by item, with read (`visible`)."""

    APPS = "apps"  # per app: services:<app id>
    GROUPS = "groups"  # per app and group of the tree
    TASKS = "tasks"  # per task: services:<its app or native group>
    DEPLOYMENTS = "deployments"  # visible if any affected app is
    QUEUE = "queue"  # per queued app
    EVENTS = (
        "events"  # per event: the app or deployment it concerns; admin events need admin:events
    )
    JOBS = "jobs"  # per job (and per queued run): jobs:<job id>
    QUOTAS = "quotas"  # per role: quota:<role>
    AUDIT = "audit"  # per record: services:<its path>


@dataclass(frozen=True, slots=True)
class Rule:
    """What one route needs. `action` None: any authenticated principal (or anyone if public)."""

    action: Action | None
    family: str | None = None
    param: str | None = None  # the path parameter naming the object
    query: str | None = None  # or the query parameter naming it
    ids: Ids = Ids.NONE
    listing: Listing | None = None
    listing_family: str | None = None  # used instead of `family` with `?list=true`
    public: bool = False


def _app(action: Action, ids: Ids = Ids.NONE, listing: Listing | None = None) -> Rule:
    return Rule(action, SERVICES, param="app_id", ids=ids, listing=listing)


def _group(action: Action, ids: Ids = Ids.NONE, listing: Listing | None = None) -> Rule:
    return Rule(action, SERVICES, param="group_id", ids=ids, listing=listing)


def _job(action: Action, ids: Ids = Ids.NONE) -> Rule:
    return Rule(action, JOBS, param="job_id", ids=ids)


_CREATE, _READ, _UPDATE, _DELETE, _FULL = (
    Action.CREATE,
    Action.READ,
    Action.UPDATE,
    Action.DELETE,
    Action.FULL,
)
_ANY = Rule(None)
_PUBLIC = Rule(None, public=True)

# (method, route template without its alias prefix) -> rule. HEAD uses GET's rule.
ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/ping"): _PUBLIC,
    ("GET", "/openapi.json"): _ANY,
    ("GET", "/docs"): _ANY,
    ("GET", "/docs/oauth2-redirect"): _ANY,
    ("GET", "/redoc"): _ANY,
    # Marathon v2 (/v2, /marathon/v2, /service/marathon/v2)
    ("GET", "/v2/apps"): Rule(None, listing=Listing.APPS),
    ("POST", "/v2/apps"): Rule(_CREATE, SERVICES, ids=Ids.BODY),
    ("PUT", "/v2/apps"): Rule(_UPDATE, SERVICES, ids=Ids.BODY),
    ("PATCH", "/v2/apps"): Rule(_UPDATE, SERVICES, ids=Ids.BODY),
    ("GET", "/v2/apps/{app_id:path}"): _app(_READ, listing=Listing.APPS),
    ("PUT", "/v2/apps/{app_id:path}"): _app(_UPDATE, ids=Ids.BODY),
    ("PATCH", "/v2/apps/{app_id:path}"): _app(_UPDATE, ids=Ids.BODY),
    ("DELETE", "/v2/apps/{app_id:path}"): _app(_DELETE),
    ("GET", "/v2/apps/{app_id:path}/versions"): _app(_READ),
    ("GET", "/v2/apps/{app_id:path}/versions/{version}"): _app(_READ),
    ("POST", "/v2/apps/{app_id:path}/restart"): _app(_UPDATE),
    ("GET", "/v2/apps/{app_id:path}/tasks"): _app(_READ),
    ("DELETE", "/v2/apps/{app_id:path}/tasks"): _app(_UPDATE),
    ("DELETE", "/v2/apps/{app_id:path}/tasks/{task_id}"): _app(_UPDATE),
    ("GET", "/v2/tasks"): Rule(None, listing=Listing.TASKS),
    ("POST", "/v2/tasks/delete"): Rule(_UPDATE, SERVICES, ids=Ids.TASKS),
    ("GET", "/v2/groups"): Rule(None, listing=Listing.GROUPS),
    ("POST", "/v2/groups"): Rule(_FULL, SERVICES),
    ("PUT", "/v2/groups"): Rule(_FULL, SERVICES),
    ("DELETE", "/v2/groups"): Rule(_FULL, SERVICES),
    ("GET", "/v2/groups/{group_id:path}"): _group(_READ, listing=Listing.GROUPS),
    ("GET", "/v2/groups/{group_id:path}/versions"): _group(_READ),
    ("POST", "/v2/groups/{group_id:path}"): _group(_CREATE, ids=Ids.BODY),
    ("PUT", "/v2/groups/{group_id:path}"): _group(_UPDATE, ids=Ids.BODY),
    ("DELETE", "/v2/groups/{group_id:path}"): _group(_DELETE),
    ("GET", "/v2/deployments"): Rule(None, listing=Listing.DEPLOYMENTS),
    ("DELETE", "/v2/deployments/{deployment_id}"): Rule(_UPDATE, SERVICES, ids=Ids.DEPLOYMENT),
    ("GET", "/v2/queue"): Rule(None, listing=Listing.QUEUE),
    ("DELETE", "/v2/queue/{app_id:path}/delay"): _app(_UPDATE),
    ("GET", "/v2/info"): Rule(_READ, ADMIN_CONFIG),
    ("GET", "/v2/leader"): Rule(_READ, ADMIN_LEADER),
    ("DELETE", "/v2/leader"): Rule(_UPDATE, ADMIN_LEADER),
    ("GET", "/v2/events"): Rule(None, listing=Listing.EVENTS),
    # Metronome v1 (/v1, /service/metronome/v1)
    ("GET", "/v1/jobs"): Rule(None, listing=Listing.JOBS),
    ("POST", "/v1/jobs"): Rule(_CREATE, JOBS, ids=Ids.BODY),
    ("GET", "/v1/jobs/{job_id}"): _job(_READ),
    ("PUT", "/v1/jobs/{job_id}"): _job(_UPDATE, ids=Ids.BODY),
    ("DELETE", "/v1/jobs/{job_id}"): _job(_DELETE),
    ("GET", "/v1/jobs/{job_id}/schedules"): _job(_READ),
    ("POST", "/v1/jobs/{job_id}/schedules"): _job(_UPDATE),
    ("GET", "/v1/jobs/{job_id}/schedules/{schedule_id}"): _job(_READ),
    ("PUT", "/v1/jobs/{job_id}/schedules/{schedule_id}"): _job(_UPDATE),
    ("DELETE", "/v1/jobs/{job_id}/schedules/{schedule_id}"): _job(_UPDATE),
    ("GET", "/v1/jobs/{job_id}/runs"): _job(_READ),
    ("POST", "/v1/jobs/{job_id}/runs"): _job(_UPDATE),
    ("GET", "/v1/jobs/{job_id}/runs/{run_id}"): _job(_READ),
    ("POST", "/v1/jobs/{job_id}/runs/{run_id}/actions/stop"): _job(_UPDATE),
    ("GET", "/v1/queue"): Rule(None, listing=Listing.JOBS),
    # Native /v1
    ("GET", "/v1/leader"): _ANY,
    ("GET", "/v1/cluster/summary"): _ANY,
    ("GET", "/v1/agents"): Rule(_READ, AGENTS),
    ("GET", "/v1/agents/{agent_id}"): Rule(_READ, AGENTS),
    ("POST", "/v1/tasks"): Rule(_CREATE, SERVICES, ids=Ids.BODY),
    ("GET", "/v1/tasks"): Rule(None, listing=Listing.TASKS),
    ("GET", "/v1/tasks/{task_id}"): Rule(_READ, SERVICES, ids=Ids.TASKS),
    ("DELETE", "/v1/tasks/{task_id}"): Rule(_UPDATE, SERVICES, ids=Ids.TASKS),
}

# Where a rule's action is not the plain HTTP one (Marathon's and Metronome's choices).
METHOD_EXCEPTIONS = frozenset(
    {
        ("POST", "/v2/apps/{app_id:path}/restart"),
        ("DELETE", "/v2/apps/{app_id:path}/tasks"),
        ("DELETE", "/v2/apps/{app_id:path}/tasks/{task_id}"),
        ("POST", "/v2/tasks/delete"),
        ("POST", "/v2/groups"),
        ("PUT", "/v2/groups"),
        ("DELETE", "/v2/groups"),
        ("DELETE", "/v2/deployments/{deployment_id}"),
        ("DELETE", "/v2/queue/{app_id:path}/delay"),
        ("DELETE", "/v2/leader"),
        ("POST", "/v1/jobs/{job_id}/schedules"),
        ("DELETE", "/v1/jobs/{job_id}/schedules/{schedule_id}"),
        ("POST", "/v1/jobs/{job_id}/runs"),
        ("POST", "/v1/jobs/{job_id}/runs/{run_id}/actions/stop"),
        ("DELETE", "/v1/tasks/{task_id}"),
    }
)

# Routes of issue 10 that do not exist yet; templates follow DC/OS where DC/OS has the route.
_ACS_READ = Rule(_READ, ACS)
_ACS_WRITE = Rule(_FULL, ACS)
PLANNED_ROUTES: dict[tuple[str, str], Rule] = {
    ("POST", "/acs/api/v1/auth/login"): _PUBLIC,
    ("POST", "/acs/api/v1/auth/logout"): _PUBLIC,
    ("GET", "/acs/api/v1/auth/jwks"): _PUBLIC,
    ("GET", "/acs/api/v1/auth/providers"): _PUBLIC,
    ("GET", "/ca/dcos-ca.crt"): _PUBLIC,
    ("POST", "/v1/join"): _PUBLIC,
    **{
        (method, template): _ACS_READ if method == "GET" else _ACS_WRITE
        for template, methods in (
            ("/acs/api/v1/users", ("GET",)),
            ("/acs/api/v1/users/{uid}", ("GET", "PUT", "PATCH", "DELETE")),
            ("/acs/api/v1/users/{uid}/permissions", ("GET",)),
            ("/acs/api/v1/groups", ("GET",)),
            ("/acs/api/v1/groups/{gid}", ("GET", "PUT", "PATCH", "DELETE")),
            ("/acs/api/v1/groups/{gid}/users", ("GET",)),
            ("/acs/api/v1/groups/{gid}/users/{uid}", ("PUT", "DELETE")),
            ("/acs/api/v1/acls", ("GET",)),
            ("/acs/api/v1/acls/{rid:path}", ("GET", "PUT", "PATCH", "DELETE")),
            ("/acs/api/v1/acls/{rid:path}/users/{uid}/{action}", ("PUT", "DELETE")),
            ("/acs/api/v1/acls/{rid:path}/groups/{gid}/{action}", ("PUT", "DELETE")),
        )
        for method in methods
    },
    **{
        (method, "/secrets/v1/secret/default/{path:path}"): Rule(
            action_for_method(method), SECRETS, param="path", listing_family=SECRETS_LIST
        )
        for method in ("GET", "PUT", "PATCH", "DELETE")
    },
    ("GET", "/v1/quotas"): Rule(None, listing=Listing.QUOTAS),
    ("GET", "/v1/quotas/{role}"): Rule(Action.READ, QUOTA, param="role"),
    ("PUT", "/v1/quotas/{role}"): Rule(Action.UPDATE, QUOTA, param="role"),
    ("DELETE", "/v1/quotas/{role}"): Rule(Action.UPDATE, QUOTA, param="role"),
    ("GET", "/v1/audit"): Rule(Action.READ, SERVICES, query="path", listing=Listing.AUDIT),
    ("POST", "/v1/tasks/{task_id}/sandbox-grant"): Rule(Action.READ, SANDBOX, ids=Ids.TASKS),
    ("GET", "/v1/join-tokens"): Rule(Action.READ, AGENTS),
    ("POST", "/v1/join-tokens"): Rule(Action.FULL, AGENTS),
    ("DELETE", "/v1/join-tokens/{token_id}"): Rule(Action.FULL, AGENTS),
    ("POST", "/v1/agents/{agent_id}/drain"): Rule(Action.UPDATE, AGENTS),
    ("POST", "/v1/agents/{agent_id}/reactivate"): Rule(Action.UPDATE, AGENTS),
    # A rebalance moves every team's instances: the agents' full permission.
    ("GET", "/v1/rebalance"): Rule(Action.READ, AGENTS),
    ("GET", "/v1/rebalance/{rebalance_id}"): Rule(Action.READ, AGENTS),
    ("POST", "/v1/rebalance"): Rule(Action.FULL, AGENTS),
    ("DELETE", "/v1/rebalance/{rebalance_id}"): Rule(Action.FULL, AGENTS),
    ("POST", "/v1/agents/{agent_id}/revoke"): Rule(Action.FULL, AGENTS),
}

# DC/OS mounts Marathon and Metronome under these prefixes too; the rules are the same.
_ALIASES = ("/service/marathon/", "/marathon/", "/service/metronome/")


class UnknownRoute(LookupError):
    """A route with no rule: refuse it (and fail the test that lists the app's routes)."""


def unaliased(route_path: str) -> str:
    """`/service/marathon/v2/apps` -> `/v2/apps`."""
    for alias in _ALIASES:
        if route_path.startswith(alias):
            return route_path[len(alias) - 1 :]
    return route_path


def route_rule(method: str, route_path: str) -> Rule:
    """The rule of a route, by its template (`request.scope["route"].path`), any alias."""
    verb = "GET" if method.upper() == "HEAD" else method.upper()
    key = (verb, unaliased(route_path))
    rule = ROUTES.get(key) or PLANNED_ROUTES.get(key)
    if rule is None:
        raise UnknownRoute(f"no permission rule for {verb} {route_path}")
    return rule


def _group_wildcard(raw: str) -> str:
    """Marathon's `GET /v2/apps/{group}/*` reads the group."""
    trimmed = raw.rstrip("/")
    return trimmed[:-1] if trimmed == "*" or trimmed.endswith("/*") else raw


def required(
    rule: Rule,
    params: Mapping[str, str] | None = None,
    ids: Iterable[str] = (),
    query: Mapping[str, str] | None = None,
) -> tuple[Need, ...]:
    """What a request needs: `rule.action` on the object named by the path (or query)
    parameter and on every id in `ids` (see `rule.ids`). Raises PathRefused for an id not in
    canonical form. A write on the root or a whole family needs `full`; a write naming no
    object at all is checked as one on the whole family (fail closed); reading the root of a
    listing route needs nothing, the route filters."""
    if rule.action is None or rule.family is None:
        return ()
    query = query or {}
    family = rule.family
    if rule.listing_family is not None and query.get("list") == "true":
        family = rule.listing_family
    kind = _FAMILIES[family]
    if kind is _Tail.NONE:
        return (Need(rule.action, Rid(family)),)
    targets: list[str] = []
    if rule.param is None and rule.query is None and rule.ids is Ids.NONE:
        targets.append("")  # the rule names the whole family (`POST /v2/groups`)
    if rule.param is not None:
        raw = (params or {})[rule.param]
        targets.append(_group_wildcard(raw) if rule.listing is not None else raw)
    if rule.query is not None and rule.query in query:
        targets.append(query[rule.query])
    targets.extend(ids)
    if not targets:
        if rule.listing is not None:
            return ()
        targets.append("")
    needs: dict[Need, None] = {}
    for raw in targets:
        rid = Rid(family, _tail(kind, raw))
        action = rule.action
        if rid.tail is None and action is Action.READ and rule.listing is not None:
            continue
        if rid.tail is None and action is not Action.READ:
            action = Action.FULL
        needs[Need(action, rid)] = None
    return tuple(needs)


# ---- teams ------------------------------------------------------------------------------------

_TEAM = re.compile(r"[a-z0-9]([a-z0-9\-]*[a-z0-9])?")


def team_groups(team: str) -> dict[str, frozenset[Grant]]:
    """The IAM groups of `tessera team create TEAM`: `TEAM-admins`, `-developers`, `-viewers`.

    A team is a top-level group, a role and a job-id prefix of the same name, so its name is
    one segment without dots. Every member may read the team's quota."""
    if not _TEAM.fullmatch(team):
        raise PathRefused(team, "a team name is lowercase letters, digits and inner dashes")
    path = "/" + team
    services, jobs, sandbox = service_rid(path), job_rid(team), sandbox_rid(path)
    quota = Grant(quota_rid(team), frozenset({Action.READ}))
    full = frozenset({Action.FULL})
    read = frozenset({Action.READ})
    return {
        f"{team}-admins": frozenset(
            {
                Grant(services, full),
                Grant(jobs, full),
                Grant(sandbox, full),
                Grant(secret_rid(path), full),
                Grant(secret_list_rid(path), full),
                quota,
            }
        ),
        f"{team}-developers": frozenset(
            {Grant(services, CRUD), Grant(jobs, CRUD), Grant(sandbox, read), quota}
        ),
        f"{team}-viewers": frozenset({Grant(services, read), Grant(jobs, read), quota}),
    }
