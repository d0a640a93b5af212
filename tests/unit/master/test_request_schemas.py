"""/openapi.json: every write operation publishes its body, every protected one its security,
and the published Marathon and Metronome schemas agree with the handlers' own validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from tessera.master.api.schemas import BODILESS, openapi_path, publish_request_schemas
from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.model.app import InvalidApp, parse_app
from tessera.model.permissions import PLANNED_ROUTES, ROUTES, unaliased
from tessera.store import MemoryStore

WRITES = ("post", "put", "patch")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work_dir: Path = tmp_path_factory.mktemp("schemas")
    app = create_app(MasterConfig(work_dir=work_dir), store=MemoryStore())
    publish_request_schemas(app)  # idempotent once master/app.py does it too
    return app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def _template(path: str) -> str:
    bare = unaliased(path)
    for _, template in (*ROUTES, *PLANNED_ROUTES):
        if openapi_path(template) == bare:
            return template
    return bare


BODILESS_PATHS = {(method, openapi_path(template)) for method, template in BODILESS}


def test_every_write_operation_has_a_body_schema(document: dict[str, Any]) -> None:
    missing = [
        f"{method} {path}"
        for method, path, operation in _operations(document)
        if method.lower() in WRITES
        and "requestBody" not in operation
        and (method, unaliased(path)) not in BODILESS_PATHS
    ]
    assert missing == []
    writes = [op for method, _, op in _operations(document) if method.lower() in WRITES]
    assert sum("requestBody" in op for op in writes) >= 40


def test_protected_operations_declare_the_token_and_public_ones_do_not(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["token"]
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "token=<jwt> or Bearer <jwt>",
    }
    for method, path, operation in _operations(document):
        rule = ROUTES.get((method, _template(path))) or PLANNED_ROUTES.get(
            (method, _template(path))
        )
        public = rule is not None and rule.public
        assert ("security" in operation) != public, f"{method} {path}"
        if not public:
            assert {"401", "403", "422"} <= set(operation["responses"]), f"{method} {path}"


def test_every_alias_gets_the_same_body(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for prefix in ("/marathon", "/service/marathon"):
        assert (
            paths[f"{prefix}/v2/apps"]["post"]["requestBody"]
            == (paths["/v2/apps"]["post"]["requestBody"])
        )
    assert (
        paths["/service/metronome/v1/jobs"]["post"]["requestBody"]
        == (paths["/v1/jobs"]["post"]["requestBody"])
    )


def _validator(document: dict[str, Any], name: str) -> Any:
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(root)


RICH = {
    "id": "/shop/web",
    "args": ["python3", "-m", "http.server"],
    "cpus": 0.25,
    "mem": 64,
    "instances": 4,
    "env": {"MODE": "prod"},
    "labels": {"team": "shop"},
    "constraints": [["@hostname", "UNIQUE"], ["zone", "GROUP_BY", 2]],
    "portDefinitions": [{"port": 0, "name": "http", "labels": {"VIP_0": "/web:80"}}],
    "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 0}],
    "readinessChecks": [{"name": "ready", "portName": "http"}],
    "fetch": [{"uri": "https://example.com/site.tgz"}],
    "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.25},
    "killSelection": "OLDEST_FIRST",
    "unreachableStrategy": {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 120},
    "dependencies": ["db", "../ops"],
    "taskKillGracePeriodSeconds": 10,
    "role": "shop",
    "priority": 5,
}
BRIDGED = {
    "id": "web",
    "container": {
        "type": "DOCKER",
        "docker": {"image": "nginx:1.27"},
        "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "http"}],
    },
    "networks": [{"mode": "container/bridge"}],
}
VALID_APPS = [
    RICH,
    BRIDGED,
    {"id": "x", "cmd": "sleep 1"},
    {"id": "/a/b", "cmd": "sleep 1", "unreachableStrategy": "disabled", "cpus": None},
    {"id": "c", "cmd": "x", "healthChecks": [{"command": {"value": "true"}}]},
]
INVALID_APPS = [
    {"id": "/Shop/web", "cmd": "x"},  # uppercase
    {"cmd": "x"},  # no id
    {"id": "x", "cmd": "x", "cpus": 0},
    {"id": "x", "cmd": "x", "instances": -1},
    {"id": "x", "cmd": "x", "mem": "lots"},
    {"id": "x", "cmd": "x", "colour": "blue"},  # unknown field
    {"id": "x", "cmd": "x", "env": {"1BAD": "v"}},
    {"id": "x", "cmd": "x", "constraints": [["hostname", "NEAR"]]},
    {"id": "x", "cmd": "x", "portDefinitions": [{"port": 70000}]},
    {"id": "x", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 2}},
    {"id": "x", "cmd": "x", "killSelection": "RANDOM"},
    {"id": "x", "cmd": "x", "readinessChecks": [{}, {}]},
    {"id": "x", "cmd": "x", "container": {"type": "APPC"}},
]


@pytest.mark.parametrize("body", VALID_APPS)
def test_valid_apps_match_the_schema(document: dict[str, Any], body: dict[str, Any]) -> None:
    parse_app(body)  # the handler's reader agrees
    _validator(document, "MarathonApp").validate(body)


@pytest.mark.parametrize("body", INVALID_APPS)
def test_invalid_apps_break_the_schema(document: dict[str, Any], body: dict[str, Any]) -> None:
    with pytest.raises(InvalidApp):
        parse_app(body)
    assert not _validator(document, "MarathonApp").is_valid(body)


def test_a_partial_update_needs_no_id_nor_command(document: dict[str, Any]) -> None:
    update = _validator(document, "MarathonAppUpdate")
    assert update.is_valid({"instances": 3})
    assert update.is_valid({"version": "2026-01-01T00:00:00.000Z"})
    assert not update.is_valid({"instances": 3.5})
    bulk = document["paths"]["/v2/apps"]["put"]["requestBody"]["content"]["application/json"]
    assert bulk["schema"]["items"] == {"$ref": "#/components/schemas/MarathonAppUpdateWithId"}


def test_groups_and_jobs(document: dict[str, Any]) -> None:
    group = _validator(document, "MarathonGroup")
    assert group.is_valid({"id": "/shop", "apps": [RICH], "groups": [{"id": "db"}]})
    assert not group.is_valid({"id": "/shop", "groups": [{"apps": []}]})  # a subgroup's id
    job = {"id": "team-a.nightly", "run": {"cmd": "true", "cpus": 0.1, "mem": 32}}
    assert _validator(document, "JobIn").is_valid(job)
    assert not _validator(document, "JobIn").is_valid({**job, "id": "Nightly"})
    assert _validator(document, "JobUpdate").is_valid({"run": job["run"]})
    schedule = {"id": "daily", "cron": "0 3 * * *"}
    assert _validator(document, "ScheduleIn").is_valid(schedule)
