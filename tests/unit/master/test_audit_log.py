"""AuditLog over a MemoryStore and a file: durable chain across restarts, bounded, filtered."""

from __future__ import annotations

import asyncio
import json
import stat
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from tessera.master.audit import (
    AUDIT_KIND,
    HEAD_KIND,
    AuditLog,
    AuditSettings,
    DenialSampler,
    common_path,
    note_deploy,
    record_key,
)
from tessera.model.app import app_from_json
from tessera.model.permissions import Principal, PrincipalKind
from tessera.security.audit_chain import (
    GENESIS_HEAD,
    AuditRecord,
    EventKind,
    first_broken,
    from_json,
)
from tessera.store.base import Delete, Put
from tessera.store.memory import MemoryStore
from tessera.testing.clock import FakeClock


def event(resource: str | None, summary: str = "did it", time: float = 0.0) -> AuditRecord:
    return AuditRecord(
        time=time, event=EventKind.REQUEST, uid="alice", resource=resource, summary=summary
    )


def file_records(path: Path) -> list[AuditRecord]:
    return [from_json(json.loads(line)) for line in path.read_text().splitlines()]


async def test_records_go_to_store_and_file_and_survive_a_restart(tmp_path: Path) -> None:
    store, clock, path = MemoryStore(), FakeClock(wall=5000.0), tmp_path / "audit.log"
    audit = AuditLog(store, path, clock)
    first = await audit.record(event("/team-a/web"))
    second = await audit.record(event("/team-a/db"))
    assert (first.seq, second.seq, second.prev) == (1, 2, first.hash)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert file_records(path) == [first, second]
    assert sorted(await store.load(AUDIT_KIND)) == [record_key(1), record_key(2)]

    again = AuditLog(store, path, clock)  # a restarted (or another HA) master
    third = await again.record(event("/team-a/web"))
    assert (third.seq, third.prev) == (3, second.hash)
    assert await again.verify() is None
    assert first_broken(file_records(path), GENESIS_HEAD) is None


async def test_concurrent_records_are_chained_in_one_order(tmp_path: Path) -> None:
    audit = AuditLog(MemoryStore(), tmp_path / "audit.log", FakeClock())
    results = await asyncio.gather(*(audit.record(event(f"/a/x{n}")) for n in range(120)))
    assert sorted(r.seq for r in results) == list(range(1, 121))
    assert await audit.verify() is None
    assert first_broken(file_records(tmp_path / "audit.log"), GENESIS_HEAD) is None


async def test_tampering_in_the_store_is_detected(tmp_path: Path) -> None:
    store = MemoryStore()
    audit = AuditLog(store, tmp_path / "audit.log", FakeClock())
    for n in range(4):
        await audit.record(event("/team-a/web", f"change {n}"))
    changed = await store.get(AUDIT_KIND, record_key(2))
    assert changed is not None
    await store.commit([Put(AUDIT_KIND, record_key(2), {**changed, "uid": "mallory"})])
    assert await audit.verify() == 1
    page = await audit.query(None, None, 10, lambda r: True)
    assert page.verified is False

    await store.commit([Put(AUDIT_KIND, record_key(2), changed)])
    assert await audit.verify() is None
    await store.commit([Delete(AUDIT_KIND, record_key(4))])  # the newest record removed
    assert await audit.verify() == 3
    await store.commit([Put(AUDIT_KIND, "000000000009", {"body": "x"})])
    assert await audit.verify() == 3


async def test_only_the_newest_records_are_kept(tmp_path: Path) -> None:
    store = MemoryStore()
    audit = AuditLog(store, tmp_path / "audit.log", FakeClock(), AuditSettings(keep=3))
    for n in range(7):
        await audit.record(event("/a", str(n)))
    assert sorted(await store.load(AUDIT_KIND)) == [record_key(n) for n in (5, 6, 7)]
    assert await store.get(HEAD_KIND, "head") is not None
    assert await audit.verify() is None  # the chain starts at the oldest record kept
    assert len(file_records(tmp_path / "audit.log")) == 7  # the file keeps everything


async def test_the_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    settings = AuditSettings(file_max_bytes=1500, file_backups=2)
    audit = AuditLog(MemoryStore(), path, FakeClock(), settings)
    for n in range(20):
        await audit.record(event("/a", "x" * 50 + str(n)))
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated[-2:] == ["audit.log.1", "audit.log.2"] and len(rotated) <= 3
    newest = file_records(path.with_name("audit.log.2")) + file_records(
        path.with_name("audit.log.1")
    )
    newest += file_records(path) if path.exists() else []
    assert first_broken(newest) is None
    assert newest[-1].seq == 20


async def test_query_filters_by_path_segment_time_visibility_and_limit(tmp_path: Path) -> None:
    clock = FakeClock(wall=100.0)
    audit = AuditLog(MemoryStore(), tmp_path / "audit.log", clock)
    for resource, when in [
        ("/team-a", 100.0),
        ("/team-a/web", 200.0),
        ("/team-ab/web", 300.0),
        ("team-a.nightly", 400.0),
        ("/team-b/web", 500.0),
        (None, 600.0),
    ]:
        await audit.record(event(resource, time=when))

    async def resources(
        path: str | None, since: float | None = None, limit: int = 100
    ) -> list[str | None]:
        page = await audit.query(path, since, limit, lambda r: r.resource != "/team-b/web")
        assert page.verified
        return [r.resource for r in page.records]

    assert await resources("/team-a") == ["/team-a", "/team-a/web", "team-a.nightly"]
    assert await resources("/team-a/web") == ["/team-a/web"]
    assert await resources("/team-a", since=150.0) == ["/team-a/web", "team-a.nightly"]
    assert await resources("/team-a", limit=1) == ["team-a.nightly"]
    assert await resources(None) == [
        "/team-a",
        "/team-a/web",
        "/team-ab/web",
        "team-a.nightly",
        None,
    ]


async def test_logins_and_events(tmp_path: Path) -> None:
    clock = FakeClock(wall=10.0)
    audit = AuditLog(
        MemoryStore(), tmp_path / "audit.log", clock, AuditSettings(denials_per_minute=2)
    )
    ok = await audit.record_login("alice", "10.0.0.1", ok=True)
    assert ok is not None and ok.decision == "allow" and ok.event == "login"
    failures = [await audit.record_login("alice", "10.0.0.9", ok=False) for _ in range(5)]
    assert [f is not None for f in failures] == [True, True, False, False, False]
    clock.advance(61)
    later = await audit.record_login("alice", "10.0.0.9", ok=False)
    assert later is not None and later.suppressed == 3
    ci = Principal("ci-team-a", PrincipalKind.SERVICE)
    issued = await audit.record_event(EventKind.TOKEN, ci, None, "issued a token", action="issue")
    assert issued is not None
    assert (issued.uid, issued.principal_kind, issued.event) == ("ci-team-a", "service", "token")


class BrokenStore(MemoryStore):
    async def commit(self, operations, *, expect_revision=None):  # type: ignore[no-untyped-def]
        raise OSError("disk gone")


async def test_a_store_failure_is_counted_not_raised_by_try_record(tmp_path: Path) -> None:
    audit = AuditLog(BrokenStore(), tmp_path / "audit.log", FakeClock())
    assert await audit.try_record(event("/a")) is None
    assert audit.failures == 1
    with pytest.raises(OSError):
        await audit.record(event("/a"))
    assert not (tmp_path / "audit.log").exists()  # the file never runs ahead of the store


def test_denial_sampler_counts_what_it_drops() -> None:
    sampler = DenialSampler(per_window=2, window=60.0, max_keys=2)
    assert [sampler.admit("bob", t) for t in (0, 1, 2, 3)] == [0, 0, None, None]
    assert sampler.admit("bob", 61) == 2
    assert sampler.dropped_total == 2
    sampler.admit("x", 62)
    sampler.admit("y", 62)  # bob is forgotten: the sampler stays bounded
    assert len(sampler._windows) == 2


def test_note_deploy_sets_summary_and_resource() -> None:
    web = app_from_json({"id": "/team-a/web", "cmd": "serve", "instances": 3})
    state = SimpleNamespace(audit_resource=None)
    note_deploy(state, {web.id: web}, {web.id: replace(web, instances=10)})
    assert (state.audit_summary, state.audit_resource) == ("scaled /team-a/web 3→10", "/team-a/web")
    db = app_from_json({"id": "/team-a/db", "cmd": "db"})
    state = SimpleNamespace()
    note_deploy(state, {}, {web.id: web, db.id: db})
    assert state.audit_resource == "/team-a"
    checked = SimpleNamespace(audit_resource="/team-a/web")
    note_deploy(checked, {}, {db.id: db})
    assert checked.audit_resource == "/team-a/web"
    assert common_path(["/team-a/web", "/team-b/x"]) == "/"
    assert common_path(["/team-ab/x", "/team-a/x"]) == "/"
