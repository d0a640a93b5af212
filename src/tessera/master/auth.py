"""Who is asking, and may they: the master's authentication and the check on every route.

One FastAPI dependency runs before every handler of the master. It finds the route's rule in
`model.permissions` (by method and route template, any alias prefix), lets the few public
routes through, reads the caller's token (`Authorization: token=<jwt>`, `Bearer <jwt>`, or
Basic with the token as its password for the `marathon` client's event stream), verifies it
(cached), and checks what the rule needs against the caller's grants: on the object the URL
names and on every id in the body (nested apps and groups, the apps of the tasks a request
kills, the apps a deployment touches). All of it happens before any lookup, so an answer
never tells whether another team's object exists: 401 without valid credentials, 403 when the
grants do not cover the request, 422 for an id that is not in canonical form.

The dependency leaves `principal` (and what it checked, for the audit log) in
`request.state`; list routes filter their items with `can_read`.

With `--insecure-no-auth` every caller is a superuser named `anonymous` (loopback only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Request
from starlette.requests import HTTPConnection

from tessera.clock import Clock
from tessera.http_errors import ApiError, invalid
from tessera.master.auth_files import ADMIN_PASSWORD, ADMIN_TOKEN
from tessera.master.config import MasterConfig
from tessera.master.iam import SUPERUSERS, Acl, Group, Iam, User
from tessera.master.keys import ClusterKeys, load_existing, load_or_create, read_cluster_key
from tessera.model.permissions import (
    SERVICES,
    SUPERUSER,
    Action,
    Grants,
    Ids,
    Need,
    PathRefused,
    Principal,
    PrincipalKind,
    Rid,
    Rule,
    UnknownRoute,
    allowed,
    grant,
    job_rid,
    permitted,
    required,
    route_rule,
    service_rid,
    task_user_rid,
    unaliased,
)
from tessera.security.ca import write_private
from tessera.security.credentials import PresentedToken, parse_authorization
from tessera.security.passwords import Passwords
from tessera.security.ratelimit import LoginLimiter
from tessera.security.service_login import ServiceLoginVerifier
from tessera.security.tokens import (
    IssuedToken,
    Revocations,
    TokenError,
    TokenIssuer,
    TokenType,
    TokenVerifier,
    jwks_document,
    public_key_from_pem,
)
from tessera.store import StateStore, StoreUnavailable

log = logging.getLogger(__name__)

ADMIN = "admin"
ANONYMOUS = Principal(
    "anonymous", PrincipalKind.USER, grants=Grants.of([grant(SUPERUSER, Action.FULL)])
)
# How often the leader rewrites its admin-token file (tokens last 8 h).
ADMIN_TOKEN_REFRESH_SECONDS = 3600.0
# DC/OS's challenge; clients that see it know to log in.
CHALLENGE = {"WWW-Authenticate": 'acsjwt realm="tessera"'}
# At most this many argon2 hashes at once: each costs ~64 MiB and a core for ~0.3 s.
HASHING_SLOTS = 2
# A follower re-reads users and keys at most this often when it answers a request itself.
FOLLOWER_REFRESH_SECONDS = 2.0

# The state of the request being served (set by the dependency, in the request's task):
# deep code such as `deploy()` adds its audit summary there without a request parameter.
REQUEST_STATE: ContextVar[Any] = ContextVar("tessera_request_state", default=None)

TaskOwner = Callable[[str], Rid | None]
DeploymentApps = Callable[[str], list[str] | None]


class Authority:
    """The master's keys, identities and token service; `lead()` loads or creates them."""

    def __init__(self, config: MasterConfig, store: StateStore, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.insecure = config.insecure_no_auth
        self.iam = Iam(store)
        self.passwords = Passwords()
        self.limiter = LoginLimiter(clock)
        self.service_logins = ServiceLoginVerifier(clock)
        self.revocations = Revocations()
        self._hashing = asyncio.Semaphore(HASHING_SLOTS)
        self._keys: ClusterKeys | None = None
        self._issuer: TokenIssuer | None = None
        self._verifier: TokenVerifier | None = None
        self._refreshed_at = -FOLLOWER_REFRESH_SECONDS
        # Set by the API modules: who owns a task, which apps a deployment touches.
        self.task_owners: list[TaskOwner] = []
        self.deployment_apps: list[DeploymentApps] = []
        # Set by the master: True while another master leads (this one answers only the
        # few routes a follower serves itself, with users and keys read from the store).
        self.follower: Callable[[], bool] = lambda: False

    # ---- keys -------------------------------------------------------------------------------

    def _cluster_key(self) -> bytes:
        path = self.config.cluster_key_file or self.config.work_dir / "cluster-key"
        # Only a lone master may create its key; several masters must be given the same one.
        return read_cluster_key(path, create=self.config.cluster_key_file is None)

    def _use(self, keys: ClusterKeys) -> None:
        self._keys = keys
        self._issuer = TokenIssuer(keys.signing_key, keys.cluster_id, self.clock)
        self._verifier = TokenVerifier(
            [keys.signing_key.public_key()], keys.cluster_id, self.clock, self.revocations
        )

    @property
    def cluster_id(self) -> str:
        return self._require_keys().cluster_id

    def kek(self) -> bytes:
        """The key-encryption key for secrets (shared by every master through the store)."""
        return self._require_keys().kek

    def signing_key(self) -> rsa.RSAPrivateKey:
        """The token-signing key; sandbox grants (security/grants.py) are signed with it too."""
        return self._require_keys().signing_key

    def jwks(self) -> dict[str, Any]:
        return jwks_document([self._require_keys().signing_key.public_key()])

    def _require_keys(self) -> ClusterKeys:
        if self._keys is None:
            raise ApiError(503, "the cluster's keys are not loaded yet (no leader); retry")
        return self._keys

    # ---- life -------------------------------------------------------------------------------

    async def lead(self) -> None:
        """As the new leader: load (or, on a new cluster, create) keys and identities."""
        self._use(await load_or_create(self.store, self._cluster_key()))
        await self.iam.load()
        self._load_revocations()
        await self._bootstrap()
        self._write_admin_token()

    async def refresh_as_follower(self) -> None:
        now = self.clock.monotonic()
        if now - self._refreshed_at < FOLLOWER_REFRESH_SECONDS:
            return
        self._refreshed_at = now
        try:
            if self._keys is None:
                keys = await load_existing(self.store, self._cluster_key())
                if keys is not None:
                    self._use(keys)
            await self.iam.load()
        except StoreUnavailable as error:
            if self._keys is None:
                raise ApiError(
                    503,
                    f"cannot check credentials: the store is unreachable ({error}) and no "
                    "leader has been seen yet; retry",
                ) from None
            log.warning("store unreachable: checking credentials with what was last read")
            return
        self._load_revocations()

    def _load_revocations(self) -> None:
        for user in self.iam.users.values():
            if user.valid_after is not None:
                self.revocations.revoke_before(user.uid, user.valid_after)

    async def _bootstrap(self) -> None:
        """A new cluster gets one superuser, `admin`, with a random password in the work dir."""
        if SUPERUSER not in self.iam.acls:
            await self.iam.put_acl(Acl(SUPERUSER, "everything"), create=True)
        if SUPERUSERS not in self.iam.groups:
            await self.iam.put_group(Group(SUPERUSERS, "Superusers"), create=True)
        if SUPERUSERS not in self.iam.acls[SUPERUSER].groups:
            await self.iam.set_action(SUPERUSER, "groups", SUPERUSERS, Action.FULL, True)
        if ADMIN in self.iam.users:
            return
        password = secrets.token_urlsafe(18)
        hashed = await self.hash_password(password)
        await self.iam.put_user(User(ADMIN, "user", "Bootstrap superuser", hashed), create=True)
        await self.iam.set_member(SUPERUSERS, ADMIN, True)
        write_private(self.config.work_dir / ADMIN_PASSWORD, password + "\n")
        log.warning(
            "created the superuser %r; its password is in %s",
            ADMIN,
            self.config.work_dir / ADMIN_PASSWORD,
        )

    async def keep_admin_token_fresh(self) -> None:
        """While leading: a script reading the admin-token file always gets a live token."""
        while True:
            await asyncio.sleep(ADMIN_TOKEN_REFRESH_SECONDS)
            self._write_admin_token()

    def _write_admin_token(self) -> None:
        issued = self.issue(ADMIN, "user")
        write_private(self.config.work_dir / ADMIN_TOKEN, issued.token + "\n")

    # ---- tokens and passwords ---------------------------------------------------------------

    def issue(self, uid: str, typ: TokenType) -> IssuedToken:
        if self._issuer is None:
            raise ApiError(503, "the cluster's keys are not loaded yet (no leader); retry")
        return self._issuer.issue(uid, typ)

    async def hash_password(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.passwords.hash_password, password)

    async def check_password(self, user: User | None, password: str) -> bool:
        stored = user.password_hash if user is not None and user.type == "user" else None
        async with self._hashing:
            check = await asyncio.to_thread(self.passwords.verify_password, stored, password)
        return check.ok and user is not None

    def check_service_login(self, user: User | None, uid: str, login_token: str) -> bool:
        if user is None or user.public_key is None:
            return False
        try:
            self.service_logins.verify(login_token, uid, public_key_from_pem(user.public_key))
        except (TokenError, ValueError):
            return False
        return True

    def authenticate(self, header: str | None) -> tuple[Principal, str]:
        """The caller named by a valid token, or ApiError 401."""
        presented = parse_authorization(header)
        if not isinstance(presented, PresentedToken):
            raise unauthorized("authentication required: send Authorization: token=<token>")
        if self._verifier is None:
            raise ApiError(503, "the cluster's keys are not loaded yet (no leader); retry")
        try:
            claims = self._verifier.verify(presented.token)
        except TokenError as error:
            raise unauthorized(f"invalid token ({error.reason.value})") from None
        principal = self.iam.principal(claims.uid)
        if principal is None:
            raise unauthorized("invalid token (unknown principal)")
        return principal, claims.jti

    async def revoke_all(self, uid: str) -> None:
        """Every token of `uid` issued until now stops working (on every master)."""
        user = self.iam.users[uid]
        now = self.clock.wall()
        await self.iam.put_user(replace(user, valid_after=now), create=False)
        self.revocations.revoke_before(uid, now)

    # ---- the check --------------------------------------------------------------------------

    def task_rid(self, task_id: str) -> Rid | None:
        for owner in self.task_owners:
            rid = owner(task_id)
            if rid is not None:
                return rid
        return None

    def apps_of_deployment(self, deployment_id: str) -> list[str] | None:
        for finder in self.deployment_apps:
            apps = finder(deployment_id)
            if apps is not None:
                return apps
        return None

    async def authorize(self, connection: HTTPConnection) -> None:
        """The dependency on every route (see the module's docstring)."""
        if connection.scope["type"] != "http":
            return  # the agent stream authenticates agents itself
        REQUEST_STATE.set(connection.state)
        route = connection.scope.get("route")
        method = connection.scope["method"]
        try:
            rule = route_rule(method, getattr(route, "path", ""))
        except UnknownRoute:
            log.error("route %s %s has no permission rule: refused", method, connection.url.path)
            raise ApiError(403, "this route has no permission rule") from None
        if rule.public:
            return
        if not self.insecure and self.follower():
            await self.refresh_as_follower()
        if self.insecure:
            principal, jti = ANONYMOUS, ""
        else:
            principal, jti = self.authenticate(connection.headers.get("authorization"))
        connection.state.principal = principal
        connection.state.token_jti = jti
        if principal.grants.superuser:
            connection.state.audit_decision = "allow"
            return
        assert isinstance(connection, Request)
        try:
            needs = await self._needs(connection, rule)
        except PathRefused as error:
            raise invalid("/id", f"{error.path}: {error.reason}") from None
        connection.state.audit_permission = "; ".join(f"{n.rid} {n.action}" for n in needs)
        if needs and needs[0].rid.tail is not None:
            connection.state.audit_resource = needs[0].rid.tail
        if not permitted(principal, needs):
            connection.state.audit_decision = "deny"
            missing = next(n for n in needs if not allowed(principal.grants, n.action, n.rid))
            what = missing.rid.tail or missing.rid.family
            raise ApiError(
                403,
                f"{principal.uid} may not {missing.action} {what} "
                f"(needs {missing.rid} {missing.action})",
            )
        connection.state.audit_decision = "allow"

    async def _needs(self, request: Request, rule: Rule) -> tuple[Need, ...]:
        params = dict(request.path_params)
        query = dict(request.query_params)
        if rule.ids is Ids.TASKS:
            return self._task_needs(rule, params, await _json(request))
        ids: list[str] = []
        users: list[str] = []
        if rule.ids is Ids.BODY:
            template, body = request.scope["route"].path, await _json(request)
            ids = body_ids(template, params, body)
            users = body_users(template, body)
        elif rule.ids is Ids.DEPLOYMENT:
            apps = self.apps_of_deployment(params.get("deployment_id", ""))
            ids = apps if apps else []
        # Running as a named Linux user (root above all) is a permission of its own.
        as_users = tuple(Need(Action.CREATE, task_user_rid(user)) for user in users)
        return required(rule, params, ids, query) + as_users

    def _task_needs(self, rule: Rule, params: dict[str, str], body: Any) -> tuple[Need, ...]:
        assert rule.action is not None
        task_ids = [params["task_id"]] if "task_id" in params else []
        if isinstance(body, dict) and isinstance(body.get("ids"), list):
            task_ids += [str(i) for i in body["ids"]]
        rids = [self.task_rid(task_id) for task_id in task_ids]
        if not task_ids or any(rid is None for rid in rids):
            # Unknown tasks: only a superuser learns that they do not exist.
            return (Need(Action.FULL, Rid(SERVICES)),)
        return tuple(Need(rule.action, rid) for rid in rids if rid is not None)


def principal_of(request: HTTPConnection) -> Principal:
    """The caller the auth dependency authenticated (ANONYMOUS under --insecure-no-auth)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise ApiError(401, "authentication required", headers=CHALLENGE)
    assert isinstance(principal, Principal)
    return principal


def can_read(request: HTTPConnection, rid: Rid) -> bool:
    """For list routes: may the caller see an item whose permission resource is `rid`?"""
    grants = principal_of(request).grants
    return grants.superuser or allowed(grants, Action.READ, rid)


def can_read_task(request: HTTPConnection, task_id: str) -> bool:
    principal = principal_of(request)
    if principal.grants.superuser:
        return True
    auth: Authority = request.app.state.master.auth
    rid = auth.task_rid(task_id)
    return rid is not None and allowed(principal.grants, Action.READ, rid)


def can_read_app(request: HTTPConnection, app_id: str) -> bool:
    return can_read(request, service_rid(app_id))


def can_read_job(request: HTTPConnection, job_id: str) -> bool:
    return can_read(request, job_rid(job_id))


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers=CHALLENGE)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None  # the handler answers the malformed body with its own 4xx


def body_ids(template: str, params: dict[str, str], body: Any) -> list[str]:
    """Every object id a write body names, absolute (see model.permissions.Ids.BODY).
    Ids that are not strings are skipped here: the handler refuses them."""
    route = unaliased(template)
    found: list[str] = []
    if route.startswith("/v1/jobs"):
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            found.append(body["id"])
        return found
    if route == "/v1/tasks":
        group = body.get("group", "/") if isinstance(body, dict) else "/"
        return [group if isinstance(group, str) else "/"]
    if route.startswith("/v2/groups"):
        _group_ids(body, _absolute(params.get("group_id", "/"), "/"), found)
        return found
    if route.startswith("/v2/apps"):
        items = body if isinstance(body, list) else [body]
        base = "/"
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                found.append(_absolute(item["id"], base))
        return found
    return found


def body_users(template: str, body: Any) -> list[str]:
    """Every Linux user a write body asks its tasks to run as."""
    route = unaliased(template)
    found: list[str] = []

    def take(item: Any) -> None:
        if isinstance(item, dict) and isinstance(item.get("user"), str):
            found.append(item["user"])

    if route.startswith("/v1/jobs"):
        take(body.get("run") if isinstance(body, dict) else None)
    elif route == "/v1/tasks":
        take(body)
    elif route.startswith("/v2/apps"):
        for item in body if isinstance(body, list) else [body]:
            take(item)
    elif route.startswith("/v2/groups"):
        stack = [body]
        while stack:
            group = stack.pop()
            if isinstance(group, dict):
                for app in group.get("apps") or []:
                    take(app)
                stack.extend(group.get("groups") or [])
    return found


def _absolute(raw: str, base: str) -> str:
    if raw.startswith("/"):
        return raw
    return base.rstrip("/") + "/" + raw


def _group_ids(body: Any, base: str, found: list[str]) -> None:
    """A group's id resolves against its parent (the URL's group at the top), its apps'
    and child groups' ids against it, as Marathon reads them."""
    if not isinstance(body, dict):
        return
    here = base
    if isinstance(body.get("id"), str):
        here = _absolute(body["id"], base)
        found.append(here)
    for app in body.get("apps") or []:
        if isinstance(app, dict) and isinstance(app.get("id"), str):
            found.append(_absolute(app["id"], here))
    for child in body.get("groups") or []:
        _group_ids(child, here, found)
