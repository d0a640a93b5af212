"""The master's audit log: hash-chained records in the store and a JSON-lines file, and the
ASGI middleware that records every write and every denial.

Where records live (docs/audit.md):
- the store, kind `audit`, key = the sequence number zero-padded to 12 digits (sorted keys are
  the chain's order), plus kind `audit-head`, key `head` = `{"seq", "hash"}` of the newest
  record, written in the same commit. The head is read before every append, so the chain goes
  on across restarts and across HA masters (only the leader writes: its store is fenced).
  Only the newest `keep` records stay: each append deletes the one `keep` places behind it.
- `<master work dir>/audit.log`, one record per line (0600), fsync'd before the request
  that caused the records is answered; past `file_max_bytes` it moves to `audit.log.1` (and
  `.1` to `.2`, ... up to `file_backups` files).

Records are written in groups: requests that finish while a commit is under way are chained
and committed together by the next one, so the log costs one store commit and one fsync per
group rather than per request. Denials (401/403) of one principal are sampled: at most
`denials_per_minute` records per principal (anonymous callers: per address) and minute; the
next record kept says how many were dropped (`suppressed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tessera.clock import Clock
from tessera.model.app import AppSpec
from tessera.model.permissions import InvalidRid, Principal, action_for_method, parse_rid
from tessera.security.audit_chain import (
    GENESIS_HEAD,
    AuditRecord,
    ChainHead,
    Decision,
    EventKind,
    append,
    covers,
    first_broken,
    from_json,
    head_of,
    permission_rids,
    to_json,
)
from tessera.security.audit_summary import describe_deploy
from tessera.store.base import Delete, Operation, Put, StateStore

log = logging.getLogger(__name__)

AUDIT_KIND = "audit"
HEAD_KIND = "audit-head"
HEAD_KEY = "head"
# Records per commit: two operations each plus the head stay under etcd's 128 per transaction.
MAX_BATCH = 50


@dataclass(frozen=True, slots=True)
class AuditSettings:
    keep: int = 100_000  # records kept in the store
    file_max_bytes: int = 64 * 1024 * 1024  # audit.log rotates past this size
    file_backups: int = 5  # audit.log.1 ... audit.log.5
    denials_per_minute: int = 20  # per principal (or per address for anonymous callers)
    denial_keys: int = 10_000  # principals tracked by the denial sampler


def record_key(seq: int) -> str:
    return f"{seq:012d}"


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[AuditRecord]
    verified: bool  # the whole stored chain is intact and ends at the stored head


# ---- denial sampling --------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    start: float
    admitted: int = 0
    dropped: int = 0  # since the last record admitted for this key


class DenialSampler:
    """At most `per_window` records per key and window; counts what it drops."""

    def __init__(self, per_window: int, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.per_window = per_window
        self.window = window
        self.max_keys = max_keys
        self.dropped_total = 0
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def admit(self, key: str, now: float) -> int | None:
        """None: drop this denial. Otherwise record it, with the count dropped before it."""
        current = self._windows.pop(key, None)
        if current is None:
            current = _Window(now)
        elif now - current.start >= self.window:
            current = _Window(now, dropped=current.dropped)
        self._windows[key] = current
        if len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        if current.admitted >= self.per_window:
            current.dropped += 1
            self.dropped_total += 1
            return None
        current.admitted += 1
        suppressed, current.dropped = current.dropped, 0
        return suppressed


# ---- the JSON-lines file ----------------------------------------------------------------------


class AuditFile:
    """Appends records as JSON lines, fsync'd, 0600; rotates by size. Runs in a thread."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def write(self, records: Sequence[AuditRecord]) -> None:
        data = b"".join(
            json.dumps(to_json(r), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for r in records
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file was made by someone else
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        # The renames themselves must survive a crash too.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


# ---- the log ----------------------------------------------------------------------------------

_Pending = tuple[AuditRecord, "asyncio.Future[AuditRecord]"]


class AuditLog:
    def __init__(
        self,
        store: StateStore,
        path: Path,
        clock: Clock,
        settings: AuditSettings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings or AuditSettings()
        self.file = AuditFile(path, self.settings.file_max_bytes, self.settings.file_backups)
        self.denials = DenialSampler(
            self.settings.denials_per_minute, max_keys=self.settings.denial_keys
        )
        self.failures = 0  # records that could not be stored (logged at ERROR each time)
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    # ---- writing ----------------------------------------------------------------------

    async def record(self, record: AuditRecord) -> AuditRecord:
        """Chain `record` and store it durably (store and file); returns it chained.
        Raises what the store raised if it could not be stored."""
        future: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        # One writer task at a time chains and commits everything pending; a caller that
        # is cancelled does not stop it (its record is still written).
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._flush(), name="audit writer")
        return await asyncio.shield(future)

    async def record_login(self, uid: str, source: str | None, ok: bool) -> AuditRecord | None:
        """A login attempt; failed ones are sampled per source address like denials."""
        suppressed = 0
        if not ok:
            admitted = self.denials.admit(f"login@{source}", self.clock.monotonic())
            if admitted is None:
                return None
            suppressed = admitted
        return await self.try_record(
            AuditRecord(
                time=self.clock.wall(),
                event=EventKind.LOGIN,
                uid=uid,
                source=source,
                action="login",
                decision=Decision.ALLOW if ok else Decision.DENY,
                status=200 if ok else 401,
                summary=f"{'logged in' if ok else 'failed to log in'} as {uid}",
                suppressed=suppressed,
            )
        )

    async def record_event(
        self,
        kind: EventKind | str,
        principal: Principal | None,
        resource: str | None,
        summary: str,
        *,
        action: str | None = None,
        source: str | None = None,
        jti: str | None = None,
        decision: Decision | str = Decision.ALLOW,
        request_id: str | None = None,
    ) -> AuditRecord | None:
        """A token, join, certificate or secret-read event (`summary`: "issued a token for
        ci-team-a", "agent a-1 joined", ...; never a token, key or secret value)."""
        return await self.try_record(
            AuditRecord(
                time=self.clock.wall(),
                event=str(kind),
                request_id=request_id,
                uid=principal.uid if principal is not None else None,
                principal_kind=str(principal.kind) if principal is not None else None,
                jti=jti,
                source=source,
                action=action,
                resource=resource,
                decision=str(decision),
                summary=summary,
            )
        )

    async def try_record(self, record: AuditRecord) -> AuditRecord | None:
        """Record, but never fail the caller: an audit failure is logged and counted."""
        try:
            return await self.record(record)
        except Exception:
            self.failures += 1
            log.exception(
                "audit record lost: %s %s %s", record.event, record.uid, record.summary[:200]
            )
            return None

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                chained = await self._append([record for record, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), record in zip(batch, chained, strict=True):
                if not future.done():
                    future.set_result(record)

    async def _head(self) -> ChainHead:
        found = await self.store.get(HEAD_KIND, HEAD_KEY)
        return ChainHead(int(found["seq"]), str(found["hash"])) if found else GENESIS_HEAD

    async def _append(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        # Read, not cached: another master may have led (and appended) since this one last did.
        head = await self._head()
        chained: list[AuditRecord] = []
        for record in records:
            link = append(head, record)
            chained.append(link)
            head = head_of(link)
        keep = self.settings.keep
        operations: list[Operation] = [
            Put(AUDIT_KIND, record_key(r.seq), to_json(r)) for r in chained
        ]
        operations += [
            Delete(AUDIT_KIND, record_key(r.seq - keep)) for r in chained if r.seq > keep
        ]
        operations.append(Put(HEAD_KIND, HEAD_KEY, {"seq": head.seq, "hash": head.hash}))
        await self.store.commit(operations)
        try:
            await asyncio.to_thread(self.file.write, chained)
        except OSError:
            # The store has them; a full or broken disk must not turn writes into errors.
            self.failures += 1
            log.exception("audit file %s: %d records not written", self.file.path, len(chained))
        return chained

    # ---- reading ----------------------------------------------------------------------

    async def _load(self) -> tuple[list[AuditRecord], int | None]:
        """Every stored record in order, and the index of the first broken one (None: none;
        len(records): the chain does not end at the stored head)."""
        head = await self._head()  # read first: records appended meanwhile come after it
        stored = await self.store.load(AUDIT_KIND)
        # Hashing every record (about 20 µs each) runs beside the event loop, not on it.
        return await asyncio.to_thread(_checked, stored, head)

    async def verify(self) -> int | None:
        """The index (in the stored order) of the first record that breaks the chain, None
        if the stored chain is intact; len(records) when records at its end are missing."""
        _, broken = await self._load()
        return broken

    async def query(
        self,
        path: str | None,
        since: float | None,
        limit: int,
        visible: Callable[[AuditRecord], bool],
    ) -> AuditPage:
        """The newest `limit` records (oldest first) about `path` and below (segment-wise),
        from `since` (epoch seconds) on, that `visible` lets the caller see."""
        records, broken = await self._load()
        selected = [
            r
            for r in records
            if (since is None or r.time >= since)
            and (path is None or covers(path, r.resource))
            and visible(r)
        ]
        return AuditPage(selected[-limit:] if limit > 0 else [], broken is None)


def _checked(
    stored: Mapping[str, Mapping[str, Any]], head: ChainHead
) -> tuple[list[AuditRecord], int | None]:
    records: list[AuditRecord] = []
    unreadable: int | None = None
    for key in sorted(stored):
        try:
            records.append(from_json(stored[key]))
        except ValueError:
            unreadable = len(records) if unreadable is None else unreadable
    broken = first_broken(records)
    if unreadable is not None:
        broken = unreadable if broken is None else min(broken, unreadable)
    if broken is None and not _reaches(records, head):
        broken = len(records)
    return records, broken


def _reaches(records: Sequence[AuditRecord], head: ChainHead) -> bool:
    """The stored head is among the records (or there is no head and no record)."""
    if head == GENESIS_HEAD:
        return not records
    return any(head_of(r) == head for r in reversed(records))


# ---- the middleware ---------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DENIALS = frozenset({401, 403})
# Recorded by their handlers, with what only they know (who tried to log in, which token).
RECORDED_BY_HANDLER = frozenset({"/acs/api/v1/auth/login", "/v1/join"})
REQUEST_ID_HEADER = b"x-request-id"
_DEPLOYMENT_HEADER = b"marathon-deployment-id"


class AuditMiddleware:
    """Records every non-GET request (whatever its answer) and every 401/403, before the
    answer leaves: it reads what the auth dependency and the handler left in the request's
    state (`principal`, `token_jti`, `audit_resource`, `audit_permission`,
    `audit_decision`, `audit_summary`, `audit_deployment`), the route template, the client
    address and the status. Each request gets a `request_id` (state and `X-Request-Id`)."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        request_id = uuid.uuid4().hex
        state["request_id"] = request_id
        answered = False

        async def send_audited(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                headers = list(message.get("headers", []))
                await self._maybe_record(scope, message["status"], headers)
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not answered:
                answered = True
                await self._maybe_record(scope, 500, [])
            raise

    async def _maybe_record(
        self, scope: Scope, status: int, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        method = str(scope["method"]).upper()
        route = _route(scope)
        if route in RECORDED_BY_HANDLER:
            return
        denied = status in DENIALS
        if method in SAFE_METHODS and not denied:
            return
        if status == 503:
            # Nothing was done (no leader, or no store to do it with); recording it would
            # wait on the very store that is down, and hold the answer.
            return
        record = request_record(scope, status, headers, self.audit.clock.wall())
        if denied:
            key = record.uid or f"anonymous@{record.source}"
            suppressed = self.audit.denials.admit(key, self.audit.clock.monotonic())
            if suppressed is None:
                return
            record = replace(record, suppressed=suppressed)
        await self.audit.try_record(record)


def _route(scope: Scope) -> str:
    """The route template that matched (with the alias used), else the raw path."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    return str(template) if template else str(scope.get("path", ""))[:256]


def request_record(
    scope: Scope, status: int, headers: Iterable[tuple[bytes, bytes]], now: float
) -> AuditRecord:
    """The record of one answered request, from its scope and response headers."""
    state: MutableMapping[str, Any] = scope.get("state") or {}
    principal = state.get("principal")
    if not isinstance(principal, Principal):
        principal = None
    permission = _text(state.get("audit_permission"))
    decision = _text(state.get("audit_decision"))
    if decision is None and status in DENIALS:
        decision = str(Decision.DENY)
    method = str(scope["method"]).upper()
    route = _route(scope)
    resource = _text(state.get("audit_resource")) or _resource(permission, scope)
    summary = _text(state.get("audit_summary"))
    if summary is None:
        summary = f"{method} {route}" + (f" on {resource}" if resource else "")
    deployment = _text(state.get("audit_deployment"))
    for name, value in headers:
        if name.lower() == _DEPLOYMENT_HEADER:
            deployment = value.decode("latin-1")
    client = scope.get("client")
    return AuditRecord(
        time=now,
        event=EventKind.REQUEST,
        request_id=_text(state.get("request_id")),
        uid=principal.uid if principal else None,
        principal_kind=str(principal.kind) if principal else None,
        jti=_text(state.get("token_jti")),
        source=str(client[0]) if client else None,
        method=method,
        route=route,
        action=_action(permission, method),
        resource=resource,
        permission=permission,
        decision=decision,
        status=status,
        summary=summary,
        deployment=deployment,
    )


# Path parameters naming the object of a route, most specific first.
_OBJECT_PARAMS = ("app_id", "group_id", "job_id", "path", "role", "uid", "gid", "agent_id")


def _resource(permission: str | None, scope: Scope) -> str | None:
    """What the request was about when the dependency did not say (a superuser's request
    is not checked, so it has no permission): the first checked rid's path or id, else
    the route's object parameter."""
    for rid in permission_rids(permission):
        try:
            tail = parse_rid(rid).tail
        except InvalidRid:
            continue
        if tail is not None:
            return tail
    params = scope.get("path_params") or {}
    for name in _OBJECT_PARAMS:
        value = params.get(name)
        if value:
            text = str(value)[:256]
            # Marathon ids and secret paths are absolute paths; job ids, roles, uids are not.
            if name in ("app_id", "group_id", "path") and not text.startswith("/"):
                text = "/" + text
            return text.rstrip("/") or "/"
    return None


def _action(permission: str | None, method: str) -> str | None:
    """The action checked (the first, when several were), else the method's own."""
    if permission:
        first = permission.split("; ", 1)[0]
        if " " in first:
            return first.rsplit(" ", 1)[1]
    try:
        return str(action_for_method(method))
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def note_deploy(
    state: Any,
    current: Mapping[str, AppSpec],
    changes: Mapping[str, AppSpec | None],
    restart: Iterable[str] = (),
) -> None:
    """For the Marathon handlers, before they deploy: the change summary of the request's
    audit record, and its resource when the auth dependency named none (a superuser's
    `POST /v2/apps` names its app only in the body): the deepest group holding every
    changed app. `state` is `request.state`."""
    state.audit_summary = describe_deploy(current, changes, restart)
    if getattr(state, "audit_resource", None) is None and changes:
        state.audit_resource = common_path(changes)


def common_path(paths: Iterable[str]) -> str:
    """The deepest path covering all of `paths` (segment-wise): `/a/b/x`, `/a/b/y` -> `/a/b`."""
    split = [p.strip("/").split("/") for p in paths]
    shared: list[str] = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        shared.append(parts[0])
    return "/" + "/".join(part for part in shared if part)


def acting_user(scope_or_state: MutableMapping[str, Any] | Any) -> str | None:
    """The uid of the request's principal, for Marathon events and versionInfo (`user`):
    pass `request.scope` (or `request.state`)."""
    if isinstance(scope_or_state, MutableMapping):
        principal = (scope_or_state.get("state") or {}).get("principal")
    else:
        principal = getattr(scope_or_state, "principal", None)
    return principal.uid if isinstance(principal, Principal) else None
