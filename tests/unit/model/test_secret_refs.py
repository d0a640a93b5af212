import json
from typing import Any

import pytest

from tessera.http_errors import ApiError
from tessera.master.api.metronome_models import JobIn, parse_body
from tessera.model.app import InvalidApp, app_from_json, app_to_json, parse_app, task_spec_for
from tessera.model.secret_refs import SecretUse, readable_by
from tessera.model.task import TaskSpec
from tessera.reconcile.jobs import task_spec_for as job_task_spec


def app(**extra: Any) -> dict[str, Any]:
    return {
        "id": "/team-a/web",
        "cmd": "sleep 100",
        "secrets": {"secret0": {"source": "team-a/db"}},
        "env": {"DB": {"secret": "secret0"}, "PLAIN": "1"},
        "container": {
            "type": "MESOS",
            "volumes": [{"containerPath": "creds/db", "secret": "secret0"}],
        },
        **extra,
    }


def errors(raw: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(InvalidApp) as caught:
        parse_app(raw)
    return {d["path"]: d["errors"] for d in caught.value.marathon_details()}


@pytest.mark.parametrize(
    ("secret", "owner", "ok"),
    [
        ("/team-a/db", "/team-a/web", True),
        ("/team-a/db", "/team-a/x/web", True),
        ("/team-a/x/db", "/team-a/web", False),
        ("/team-a/db", "/team-ab/web", False),
        ("/team-b/db", "/team-a/web", False),
        ("/db", "/web", True),
        ("/db", "/team-a/web", False),  # DC/OS would allow it; Tessera does not
        ("/team-a/db", "/web", False),
    ],
)
def test_spaces(secret: str, owner: str, ok: bool) -> None:
    assert readable_by(secret, owner) is ok


def test_app_references_round_trip_and_reach_the_task_spec() -> None:
    parsed = parse_app(app())
    shown = app_to_json(parsed)
    assert shown["secrets"] == {"secret0": {"source": "team-a/db"}}
    assert shown["env"] == {"PLAIN": "1", "DB": {"secret": "secret0"}}
    assert {"containerPath": "creds/db", "secret": "secret0"} in shown["container"]["volumes"]
    assert app_from_json(shown) == parsed
    spec = task_spec_for(parsed)
    assert spec.env == {"PLAIN": "1"}
    assert spec.secrets == (
        SecretUse("/team-a/db", env="DB"),
        SecretUse("/team-a/db", file="creds/db"),
    )
    assert TaskSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_a_changed_reference_is_a_config_change() -> None:
    one = parse_app(app())
    two = parse_app(app(env={"DB2": {"secret": "secret0"}}))
    assert not one.same_config(two)


def test_another_teams_secret_is_refused_with_its_field_path() -> None:
    found = errors(app(secrets={"secret0": {"source": "team-b/db"}}))
    assert "/secrets/secret0/source" in found


def test_root_level_secret_only_for_root_level_apps() -> None:
    assert "/secrets/secret0/source" in errors(app(secrets={"secret0": {"source": "db"}}))
    root_app = parse_app(app(id="/web", secrets={"secret0": {"source": "/db"}}))
    assert root_app.secrets == {"secret0": "/db"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"env": {"DB": {"secret": "nope"}}}, "/env/DB"),
        ({"env": {"DB": {"secret": "secret0", "x": 1}}}, "/env/DB"),
        ({"secrets": {"secret0": {"source": "team-a/../team-b/db"}}}, "/secrets/secret0/source"),
        ({"secrets": {"secret0": {"source": "Team-A/db"}}}, "/secrets/secret0/source"),
        ({"secrets": {"secret0": "team-a/db"}}, "/secrets/secret0"),
        ({"secrets": []}, "/secrets"),
        (
            {"container": {"type": "MESOS", "volumes": [{"containerPath": "x", "secret": "s9"}]}},
            "/container/volumes/0/secret",
        ),
        (
            {
                "container": {
                    "type": "MESOS",
                    "volumes": [{"containerPath": "../x", "secret": "secret0"}],
                }
            },
            "/container/volumes/0/containerPath",
        ),
        (
            {
                "container": {
                    "type": "MESOS",
                    "volumes": [{"containerPath": "/etc/x", "secret": "secret0"}],
                }
            },
            "/container/volumes/0/containerPath",
        ),
        (
            {
                "container": {
                    "type": "MESOS",
                    "volumes": [{"containerPath": "stdout", "secret": "secret0"}],
                }
            },
            "/container/volumes/0/containerPath",
        ),
    ],
)
def test_bad_references(change: dict[str, Any], path: str) -> None:
    assert path in errors(app(**change))


def test_host_volumes_still_need_absolute_paths() -> None:
    found = errors(
        app(
            container={
                "type": "DOCKER",
                "docker": {"image": "busybox"},
                "volumes": [{"containerPath": "rel", "hostPath": "/tmp"}],
            }
        )
    )
    assert found["/container/volumes/0/containerPath"] == ["must be an absolute path"]


def job(**run: Any) -> bytes:
    body = {
        "id": "team-a.nightly",
        "run": {
            "cmd": "true",
            "secrets": {"secret0": {"source": "team-a/db"}},
            "env": {"DB": {"secret": "secret0"}, "PLAIN": "x"},
            **run,
        },
    }
    return json.dumps(body).encode()


def test_job_secrets_reach_the_run_task_and_echo_references() -> None:
    from tessera.master.api.metronome_views import run_spec_view
    from tessera.model.job import JobRun, JobRunSpec, RunStatus

    parsed = parse_body(job(), JobIn).to_job()
    spec = parsed.spec.run
    assert spec.env == {"PLAIN": "x"} and spec.env_secrets == {"DB": "secret0"}
    assert JobRunSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    view = run_spec_view(spec)
    assert view["env"] == {"PLAIN": "x", "DB": {"secret": "secret0"}}
    assert view["secrets"] == {"secret0": {"source": "team-a/db"}}
    run = JobRun("r1", "team-a.nightly", spec, RunStatus.ACTIVE, 0.0)
    assert job_task_spec(run).secrets == (SecretUse("/team-a/db", env="DB"),)


@pytest.mark.parametrize(
    ("run", "path"),
    [
        ({"secrets": {"secret0": {"source": "team-b/db"}}}, "/run/secrets/secret0/source"),
        ({"env": {"DB": {"secret": "other"}}}, "/run/env/DB"),
    ],
)
def test_bad_job_secrets(run: dict[str, Any], path: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_body(job(**run), JobIn)
    assert caught.value.status == 422
    assert caught.value.extra["details"][0]["path"] == path
