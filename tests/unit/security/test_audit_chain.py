"""The audit hash chain: canonical JSON, order, and every kind of tampering detected."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from tessera.security.audit_chain import (
    GENESIS,
    GENESIS_HEAD,
    AuditRecord,
    ChainHead,
    EventKind,
    append,
    canonical_json,
    covers,
    first_broken,
    from_json,
    head_of,
    permission_rids,
    record_hash,
    to_json,
)


def chain(count: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    head = GENESIS_HEAD
    for number in range(count):
        record = append(
            head,
            AuditRecord(
                time=1000.0 + number,
                event=EventKind.REQUEST,
                uid="alice",
                resource="/team-a/web",
                summary=f"scaled /team-a/web {number}→{number + 1}",
            ),
        )
        records.append(record)
        head = head_of(record)
    return records


def test_canonical_json_is_sorted_compact_utf8_and_leaves_out_the_hash() -> None:
    record = append(GENESIS_HEAD, AuditRecord(time=1.5, event="request", summary="3→10"))
    text = canonical_json(record)
    data = json.loads(text)
    assert "hash" not in data
    assert list(data) == sorted(data)
    assert b" " not in text.replace(b"3\xe2\x86\x9210", b"")
    assert "3→10".encode() in text  # not \u escapes: the same bytes in every language
    assert record.hash == hashlib.sha256(text).hexdigest() == record_hash(record)


def test_the_record_has_no_place_for_a_body() -> None:
    with pytest.raises(ValueError, match="unknown"):
        from_json({**to_json(chain(1)[0]), "body": {"env": {"PASSWORD": "hunter2"}}})
    with pytest.raises(TypeError):
        AuditRecord(time=1.0, event="request", body="x")  # type: ignore[call-arg]


def test_append_numbers_and_links_records() -> None:
    records = chain(3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev == GENESIS
    assert records[1].prev == records[0].hash
    assert records[2].prev == records[1].hash
    assert first_broken(records) is None
    assert first_broken(records, GENESIS_HEAD) is None
    assert first_broken([]) is None


def test_json_round_trip_keeps_the_hash_valid() -> None:
    records = [from_json(json.loads(json.dumps(to_json(r)))) for r in chain(4)]
    assert first_broken(records, GENESIS_HEAD) is None


def test_a_changed_field_breaks_the_chain_at_that_record() -> None:
    records = chain(5)
    records[2] = replace(records[2], uid="mallory")
    assert first_broken(records) == 2


def test_a_rehashed_change_breaks_the_chain_at_the_next_record() -> None:
    records = chain(5)
    forged = replace(records[2], summary="nothing happened", hash="")
    records[2] = replace(forged, hash=record_hash(forged))
    assert first_broken(records) == 3


def test_a_removed_record_breaks_the_chain() -> None:
    records = chain(5)
    del records[1]
    assert first_broken(records) == 1


def test_reordered_records_break_the_chain() -> None:
    records = chain(5)
    records[1], records[2] = records[2], records[1]
    assert first_broken(records) == 1


def test_a_truncated_start_is_trusted_without_anchor_but_not_with_one() -> None:
    records = chain(5)[2:]
    assert first_broken(records) is None
    assert first_broken(records, GENESIS_HEAD) == 0
    assert first_broken(records, ChainHead(2, chain(5)[1].hash)) is None


def test_covers_is_segment_wise() -> None:
    assert covers("/team-a", "/team-a")
    assert covers("/team-a", "/team-a/web")
    assert covers("/team-a/", "/team-a/x/y")
    assert not covers("/team-a", "/team-ab")
    assert not covers("/team-a", "/team-ab/web")
    assert not covers("/team-a/web", "/team-a")
    assert covers("/team-a", "team-a.nightly")
    assert covers("/team-a", "team-a")
    assert not covers("/team-a", "team-ab.nightly")
    assert not covers("/team-a", None)
    assert not covers("/team-a", "dcos:adminrouter:acs")
    assert covers("/", None)
    assert covers("/", "/anything")


def test_permission_rids_reads_one_or_several_checks() -> None:
    assert permission_rids(None) == []
    assert permission_rids("dcos:service:marathon:marathon:services:/team-a update") == [
        "dcos:service:marathon:marathon:services:/team-a"
    ]
    joined = "dcos:x:/a update; dcos:mesos:master:task:user:root create"
    assert permission_rids(joined) == ["dcos:x:/a", "dcos:mesos:master:task:user:root"]
