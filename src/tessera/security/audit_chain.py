"""Audit records and their hash chain: each record carries the SHA-256 of the one before it.

A record says who did what to which object, from where, whether it was allowed, and how it
ended, at Kubernetes' `Metadata` level: it has no field for a request or response body, so
no body and no secret value can end up in it (change summaries name keys, never values).

The chain: a record's `hash` is the SHA-256 of its canonical JSON (every field but `hash`,
keys sorted, no spaces, UTF-8), and its `prev` is the `hash` of the record before it, the
first one's `prev` being `GENESIS`. Sequence numbers grow by one. Changing, removing or
reordering any record breaks the chain at that record (`first_broken`). A log that keeps
only its newest records starts its chain at the oldest record kept, whose `prev` then names a
record that is gone: `first_broken` trusts the first record's `prev` unless given an anchor.

Every function here is pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, NamedTuple

GENESIS = "0" * 64


class EventKind(StrEnum):
    REQUEST = "request"  # an API call (every write, every denial)
    LOGIN = "login"
    TOKEN = "token"  # issued or revoked
    JOIN = "join"  # a join token created, used or revoked
    CERTIFICATE = "certificate"  # issued, renewed or revoked
    SECRET_READ = "secret-read"  # an agent fetched a secret for a task


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited event. Only `time` and `event` are always set; the chain fills the last three."""

    time: float  # seconds since the epoch (wall clock)
    event: str  # an EventKind
    request_id: str | None = None
    uid: str | None = None  # the principal; None: anonymous
    principal_kind: str | None = None  # user, service or agent
    jti: str | None = None  # the id of the token the request carried
    source: str | None = None  # the client's address
    method: str | None = None  # HTTP method
    route: str | None = None  # the route template, with the alias used (/service/marathon/...)
    action: str | None = None  # create, read, update, delete, full; or issue, revoke, use, ...
    resource: str | None = None  # the path or id the permission was checked on
    permission: str | None = None  # checked: "dcos:...:/team-a update" (several: "; ")
    decision: str | None = None  # a Decision; None when nothing was checked
    status: int | None = None  # the HTTP status answered
    summary: str = ""  # what changed: "scaled /team-a/web 3→10"; never values of secrets
    deployment: str | None = None  # the deployment the request started
    suppressed: int = 0  # denials of the same principal dropped (flood) since its last record
    seq: int = 0
    prev: str = GENESIS
    hash: str = ""


_NAMES = tuple(f.name for f in fields(AuditRecord))
_FIELDS = frozenset(_NAMES)
_HASHED = tuple(name for name in _NAMES if name != "hash")


class ChainHead(NamedTuple):
    """The last record of a chain: its sequence number and hash (GENESIS_HEAD: no record)."""

    seq: int
    hash: str


GENESIS_HEAD = ChainHead(0, GENESIS)


def canonical_json(record: AuditRecord) -> bytes:
    """The bytes hashed: every field but `hash`, keys sorted, compact, UTF-8."""
    # Not dataclasses.asdict: it deep-copies, and verifying a long log hashes every record.
    data = {name: getattr(record, name) for name in _HASHED}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: AuditRecord) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def append(head: ChainHead, record: AuditRecord) -> AuditRecord:
    """`record` as the next link after `head`: numbered, chained and hashed."""
    linked = replace(record, seq=head.seq + 1, prev=head.hash, hash="")
    return replace(linked, hash=record_hash(linked))


def head_of(record: AuditRecord) -> ChainHead:
    return ChainHead(record.seq, record.hash)


def first_broken(records: Sequence[AuditRecord], anchor: ChainHead | None = None) -> int | None:
    """The index of the first record that does not belong where it is, or None if all do.

    A record is broken when its hash does not match its content, or it does not follow the
    record before it (its `prev` and `seq`). Without `anchor` the first record's `prev` and
    `seq` are taken as they are (the log may have dropped older records)."""
    previous = anchor
    for index, record in enumerate(records):
        if record.hash != record_hash(record):
            return index
        if previous is not None and (
            record.prev != previous.hash or record.seq != previous.seq + 1
        ):
            return index
        previous = head_of(record)
    return None


def to_json(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _NAMES}


def from_json(data: Mapping[str, Any]) -> AuditRecord:
    """A record from its JSON; ValueError if a field is unknown or missing (a record with an
    extra field, such as a body, is not a record this code wrote)."""
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown audit record fields: {sorted(unknown)}")
    try:
        return AuditRecord(**data)
    except TypeError as error:
        raise ValueError(f"not an audit record: {error}") from None


def permission_rids(permission: str | None) -> list[str]:
    """The rids of a record's `permission` ("<rid> <action>", several joined by "; ")."""
    if not permission:
        return []
    return [part.rsplit(" ", 1)[0] for part in permission.split("; ") if " " in part]


def covers(path: str, resource: str | None) -> bool:
    """Does the query path `path` (a Marathon group or app path) cover the record's resource,
    segment by segment?

    `/team-a` covers `/team-a` and what lies below it by `/` (never `/team-ab`), and the
    Metronome jobs of that folder: `team-a` and `team-a.*` (never `team-ab`). `/` covers every
    record, even those naming no resource; other paths never cover rids or other names."""
    trimmed = "/" + path.strip("/")
    if trimmed == "/":
        return True
    if resource is None:
        return False
    if resource.startswith("/"):
        return resource == trimmed or resource.startswith(trimmed + "/")
    if ":" in resource:
        return False
    dotted = trimmed[1:].replace("/", ".")
    return resource == dotted or resource.startswith(dotted + ".")
