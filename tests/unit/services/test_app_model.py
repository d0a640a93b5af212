"""AppSpec: Marathon's defaults, paths, the JSON round trip and the task it runs."""

from __future__ import annotations

import pytest

from tessera.model.app import (
    InvalidApp,
    app_from_json,
    app_to_json,
    canonical_path,
    merge_update,
    next_version,
    parse_app,
    task_spec_for,
)
from tessera.model.group import parse_group

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


def test_round_trip_keeps_everything() -> None:
    app = parse_app(RICH).with_changes(version="v", last_scaling_at="v", last_config_change_at="v")
    assert app.dependencies == ("/shop/db", "/ops")
    assert app.constraints == (("@hostname", "UNIQUE"), ("zone", "GROUP_BY", "2"))
    data = app_to_json(app)
    assert data["priority"] == 5 and data["killSelection"] == "OLDEST_FIRST"
    assert app_from_json(data) == app
    assert parse_app(merge_update(app, {"instances": 2})).same_config(app)


def test_defaults_are_marathons() -> None:
    app = parse_app({"id": "x", "cmd": "sleep 1"})
    assert (app.cpus, app.mem, app.disk, app.gpus, app.instances) == (1.0, 128.0, 0.0, 0, 1)
    assert (app.backoff_seconds, app.backoff_factor, app.max_launch_delay_seconds) == (
        1.0,
        1.15,
        300.0,
    )
    assert app.port_definitions[0].port == 0 and app.unreachable_strategy is not None


def test_unreachable_strategy_defaults_to_replacing_at_once() -> None:
    def strategy(value: object) -> object:
        body = {"id": "x", "cmd": "sleep 1"}
        if value is not None:
            body["unreachableStrategy"] = value
        return app_to_json(parse_app(body))["unreachableStrategy"]

    assert strategy(None) == {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 600}
    assert strategy({}) == {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 600}
    assert strategy({"expungeAfterSeconds": 30}) == {
        "inactiveAfterSeconds": 0,
        "expungeAfterSeconds": 30,
    }
    assert strategy({"inactiveAfterSeconds": 300}) == {
        "inactiveAfterSeconds": 300,
        "expungeAfterSeconds": 600,
    }
    assert strategy({"inactiveAfterSeconds": 900}) == {
        "inactiveAfterSeconds": 900,
        "expungeAfterSeconds": 900,
    }
    assert strategy("disabled") == "disabled"


def test_paths() -> None:
    assert canonical_path("web", "/shop") == "/shop/web"
    assert canonical_path("../db", "/shop/web") == "/shop/db"
    assert canonical_path("/a/b/") == "/a/b"
    with pytest.raises(InvalidApp) as caught:
        parse_app({"id": "/Shop/web", "cmd": "x"})
    assert caught.value.errors[0].path == "/id"


def test_versions_always_move_forward() -> None:
    first = next_version(1000.0, "")
    assert next_version(1000.0, first) > first
    assert next_version(999.0, first) > first


def test_the_task_of_an_app() -> None:
    spec = task_spec_for(parse_app(RICH).with_changes(version="v9"))
    assert spec.app_id == "/shop/web" and spec.app_version == "v9"
    assert spec.kill_grace_seconds == 10.0 and spec.role == "shop" and spec.priority == 5
    assert spec.port_definitions[0].port == 0 and spec.port_definitions[0].name == "http"
    assert spec.health_checks[0]["protocol"] == "MESOS_HTTP"


def test_group_paths_in_errors() -> None:
    with pytest.raises(InvalidApp) as caught:
        parse_group({"id": "/g", "apps": [{"id": "a", "cmd": "x", "cpus": 0}]})
    assert [e.path for e in caught.value.errors] == ["/apps/0/cpus"]
