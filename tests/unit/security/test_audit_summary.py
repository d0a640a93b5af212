"""Change summaries: what a write changed, in one line, with no env or secret value in it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tessera.model.app import app_from_json, app_to_json
from tessera.security.audit_summary import (
    MAX_SUMMARY,
    describe_app_change,
    describe_deploy,
    describe_group_change,
    describe_job_change,
)

SECRET = "hunter2-planted-value"


def app(**fields: Any) -> dict[str, Any]:
    definition = {"id": "/team-a/web", "cmd": "serve", "instances": 3, **fields}
    return app_to_json(app_from_json(definition))


def docker(image: str) -> dict[str, Any]:
    return {"type": "DOCKER", "docker": {"image": image}}


def test_create_delete_scale_image_restart() -> None:
    assert describe_app_change(None, app()) == "created /team-a/web"
    assert describe_app_change(app(), None) == "deleted /team-a/web"
    assert describe_app_change(app(), app(instances=10)) == "scaled /team-a/web 3→10"
    before, after = app(container=docker("nginx:1.25")), app(container=docker("nginx:1.27"))
    assert (
        describe_app_change(before, after) == "changed image nginx:1.25→nginx:1.27 of /team-a/web"
    )
    restarted = {**app(), "version": "2026-12-06T14:02:11.000Z"}
    assert describe_app_change(app(), restarted) == "restarted /team-a/web"
    assert describe_app_change(app(), app()) == "no change to /team-a/web"


def test_several_changes_are_listed_with_safe_values_only() -> None:
    before = app(env={"MODE": "a", "OLD": "x"}, cpus=0.5, labels={"team": "a"})
    after = app(
        env={"MODE": "b", "TOKEN": SECRET},
        cpus=1,
        labels={"team": "a", "password": SECRET},
        cmd=f"serve --password {SECRET}",
        instances=4,
    )
    summary = describe_app_change(before, after)
    assert summary.startswith("updated /team-a/web: ")
    for part in ("instances 3→4", "cpus 0.5→1", "env +TOKEN -OLD ~MODE", "cmd", "labels"):
        assert part in summary
    assert SECRET not in summary


def test_secret_references_and_container_details_are_named_not_shown() -> None:
    before = {**app(container=docker("img")), "secrets": {"db": {"source": "/team-a/db"}}}
    after = {
        **app(
            container={
                **docker("img"),
                "volumes": [{"containerPath": "/x", "hostPath": "/y", "mode": "RO"}],
            }
        ),
        "secrets": {"db": {"source": "/team-a/other"}},
    }
    summary = describe_app_change(before, after)
    assert "secrets ~db" in summary and "container" in summary
    assert "/team-a/other" not in summary and "/y" not in summary


def test_summaries_are_bounded() -> None:
    many = {f"K{n}": SECRET for n in range(500)}
    summary = describe_app_change(app(), app(env=many, labels={"a": "b"}, cpus=2))
    assert len(summary) <= MAX_SUMMARY
    assert SECRET not in summary


def test_describe_deploy_from_specs() -> None:
    old = app_from_json({"id": "/team-a/web", "cmd": "serve", "instances": 3})
    other = app_from_json({"id": "/team-a/db", "cmd": "db"})
    assert describe_deploy({old.id: old}, {old.id: replace(old, instances=10)}) == (
        "scaled /team-a/web 3→10"
    )
    assert describe_deploy({old.id: old}, {old.id: old}, restart={old.id}) == (
        "restarted /team-a/web"
    )
    both = describe_deploy({old.id: old}, {old.id: None, other.id: other})
    assert both == "created /team-a/db; deleted /team-a/web"
    assert describe_deploy({}, {}) == "no change"


def group(apps: list[dict[str, Any]], groups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": "/team-a", "apps": apps, "groups": groups or []}


def test_group_changes() -> None:
    web, db = app(), app(id="/team-a/db")
    assert describe_group_change(None, group([web, db])) == "created group /team-a with 2 apps"
    assert describe_group_change(group([web]), None) == "deleted group /team-a"
    changed = describe_group_change(
        group([web, db]),
        group([app(instances=5)], [{"id": "/team-a/batch", "apps": [], "groups": []}]),
    )
    assert changed == (
        "updated group /team-a: created group /team-a/batch; deleted /team-a/db; "
        "scaled /team-a/web 3→5"
    )
    assert describe_group_change(group([web]), group([web])) == "no change to group /team-a"


def job(**run: Any) -> dict[str, Any]:
    return {
        "id": "team-a.nightly",
        "description": "nightly",
        "run": {"cmd": "backup", "cpus": 1, "mem": 128, "env": {}, **run},
    }


def test_job_changes() -> None:
    assert describe_job_change(None, job()) == "created job team-a.nightly"
    assert describe_job_change(job(), None) == "deleted job team-a.nightly"
    assert describe_job_change(job(docker={"image": "a"}), job(docker={"image": "b"})) == (
        "changed image a→b of job team-a.nightly"
    )
    summary = describe_job_change(
        job(env={"A": "1"}), {**job(env={"A": SECRET}, cpus=2, cmd=SECRET), "description": "x"}
    )
    assert summary == "updated job team-a.nightly: cpus 1→2, env ~A, run.cmd, description"
    assert SECRET not in summary
    assert describe_job_change(job(), job()) == "no change to job team-a.nightly"
