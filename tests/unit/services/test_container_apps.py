"""Marathon container apps: validation with field paths, the legacy forms migrated, what
GET shows, the task each instance runs, service ports and the task environment."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.agent.environment import task_environment
from tessera.model.app import (
    AppSpec,
    InvalidApp,
    app_from_json,
    app_to_json,
    assign_service_ports,
    merge_update,
    parse_app,
    task_spec_for,
)
from tessera.model.container import PortMapping
from tessera.model.task import PortDefinition

DOCKER = {"type": "DOCKER", "docker": {"image": "nginx:1.25"}}


def _errors(raw: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(InvalidApp) as caught:
        parse_app(raw)
    return {d["path"]: d["errors"] for d in caught.value.marathon_details()}


def _bridged(*mappings: dict[str, Any], **fields: Any) -> AppSpec:
    return parse_app(
        {
            "id": "/web",
            "container": {**DOCKER, "portMappings": list(mappings)},
            "networks": [{"mode": "container/bridge"}],
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("container", "path", "fragment"),
    [
        ({"type": "RKT", "docker": {"image": "x"}}, "/container/type", "DOCKER"),
        ({"type": "DOCKER"}, "/container/docker", "required"),
        ({"type": "DOCKER", "docker": {}}, "/container/docker/image", "required"),
        ({"docker": {"image": "Nginx"}}, "/container/docker/image", "lowercase"),
        ({"docker": {"image": "nginx:"}}, "/container/docker/image", "tag"),
        ({"docker": {"image": 7}}, "/container/docker/image", "string"),
        (
            {"docker": {"image": "x", "forcePullImage": "yes"}},
            "/container/docker/forcePullImage",
            "true or false",
        ),
        (
            {"docker": {"image": "x", "privileged": 1}},
            "/container/docker/privileged",
            "true or false",
        ),
        (
            {
                "docker": {
                    "image": "x",
                    "parameters": [
                        {"key": "label", "value": "a"},
                        {"key": "env", "value": "B=1"},
                        {"key": "pid", "value": "host"},
                    ],
                }
            },
            "/container/docker/parameters/2/key",
            "parameter 'pid' is not supported; supported: label, env, user, workdir, "
            "shm-size, hostname",
        ),
        (
            {"docker": {"image": "x", "parameters": [{"key": "label"}]}},
            "/container/docker/parameters/0/value",
            "required",
        ),
        (
            {"docker": {"image": "x", "pullConfig": {"secret": "s"}}},
            "/container/docker/pullConfig",
            "secret store",
        ),
        (
            {"docker": {"image": "x", "credential": {"secret": "s"}}},
            "/container/docker/credential/principal",
            "required",
        ),
        (
            {"docker": {"image": "x", "network": "USER"}},
            "/container/docker/network",
            "not supported",
        ),
        (
            {"docker": {"image": "x", "network": "NONE"}},
            "/container/docker/network",
            "not supported",
        ),
        (
            {"docker": {"image": "x", "network": "WEIRD"}},
            "/container/docker/network",
            "must be one of",
        ),
        ({"docker": {"image": "x", "bogus": 1}}, "/container/docker/bogus", "unknown field"),
        ({"docker": {"image": "x"}, "appc": {"image": "x"}}, "/container/appc", "appc"),
        (
            {"docker": {"image": "x"}, "volumes": [{"containerPath": "data", "hostPath": "/d"}]},
            "/container/volumes/0/containerPath",
            "absolute",
        ),
        (
            {"docker": {"image": "x"}, "volumes": [{"containerPath": "/d", "hostPath": "d"}]},
            "/container/volumes/0/hostPath",
            "absolute",
        ),
        (
            {"docker": {"image": "x"}, "volumes": [{"containerPath": "/d"}]},
            "/container/volumes/0/hostPath",
            "required",
        ),
        (
            {
                "docker": {"image": "x"},
                "volumes": [{"containerPath": "/d", "hostPath": "/d", "mode": "RX"}],
            },
            "/container/volumes/0/mode",
            "RO",
        ),
        (
            {
                "docker": {"image": "x"},
                "volumes": [{"containerPath": "d", "persistent": {"size": 10}}],
            },
            "/container/volumes/0/persistent",
            "host volumes",
        ),
        (
            {
                "docker": {"image": "x"},
                "volumes": [{"containerPath": "/d", "external": {"name": "v"}}],
            },
            "/container/volumes/0/external",
            "host volumes",
        ),
        (
            {
                "type": "MESOS",
                "docker": {"image": "x", "parameters": [{"key": "label", "value": "a"}]},
            },
            "/container/docker/parameters",
            "DOCKER",
        ),
        (
            {"type": "MESOS", "volumes": [{"containerPath": "/d", "hostPath": "/d"}]},
            "/container/volumes",
            "image",
        ),
        (
            {"docker": {"image": "x"}, "portMappings": [{"containerPort": 80}]},
            "/container/portMappings",
            "not allowed with host-networking",
        ),
    ],
)
def test_invalid_containers(container: dict[str, Any], path: str, fragment: str) -> None:
    errors = _errors({"id": "/web", "container": container})
    assert path in errors, errors
    assert any(fragment in message for message in errors[path]), errors
    # An invalid container is the news, not a missing cmd.
    assert "/" not in errors or path == "/", errors


@pytest.mark.parametrize(
    ("mapping", "path", "fragment"),
    [
        ({"containerPort": -1}, "/container/portMappings/0/containerPort", "≥ 0"),
        ({"containerPort": 80, "hostPort": 70000}, "/container/portMappings/0/hostPort", "≤ 65535"),
        (
            {"containerPort": 80, "hostPort": 80.5},
            "/container/portMappings/0/hostPort",
            "whole number",
        ),
        (
            {"containerPort": 80, "servicePort": 65536},
            "/container/portMappings/0/servicePort",
            "≤ 65535",
        ),
        (
            {"containerPort": 80, "protocol": "sctp"},
            "/container/portMappings/0/protocol",
            "must be one of",
        ),
        ({"containerPort": 80, "name": "HTTP"}, "/container/portMappings/0/name", "must match"),
        ({"containerPort": 80, "labels": {"a": 1}}, "/container/portMappings/0/labels/a", "string"),
        (
            {"containerPort": 80, "networkNames": ["dcos"]},
            "/container/portMappings/0/networkNames",
            "empty",
        ),
    ],
)
def test_invalid_port_mappings(mapping: dict[str, Any], path: str, fragment: str) -> None:
    errors = _errors(
        {
            "id": "/web",
            "container": {**DOCKER, "portMappings": [mapping]},
            "networks": [{"mode": "container/bridge"}],
        }
    )
    assert path in errors, errors
    assert any(fragment in message for message in errors[path]), errors


@pytest.mark.parametrize(
    ("mappings", "fragment"),
    [
        ([{"name": "http"}, {"name": "http"}], "Port names must be unique."),
        ([{"hostPort": 31000}, {"hostPort": 31000}], "host ports must be unique"),
        ([{"servicePort": 10001}, {"servicePort": 10001}], "service ports must be unique"),
    ],
)
def test_port_mappings_must_be_unique(mappings: list[dict[str, Any]], fragment: str) -> None:
    errors = _errors(
        {
            "id": "/web",
            "container": {**DOCKER, "portMappings": mappings},
            "networks": [{"mode": "container/bridge"}],
        }
    )
    assert fragment in errors["/container/portMappings"]


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        (
            {"networks": [{"mode": "container", "name": "dcos"}]},
            "/networks/0/mode",
            "not supported yet",
        ),
        ({"networks": [{"mode": "overlay"}]}, "/networks/0/mode", "must be one of"),
        (
            {"networks": [{"mode": "host"}, {"mode": "container/bridge"}]},
            "/networks",
            "must not mix",
        ),
        (
            {"networks": [{"mode": "container/bridge"}, {"mode": "container/bridge"}]},
            "/networks",
            "at most one",
        ),
        (
            {"networks": [{"mode": "container/bridge", "name": "x"}]},
            "/networks/0/name",
            "only container networks",
        ),
        ({"networks": "bridge"}, "/networks", "must be a list"),
        (
            {
                "networks": [{"mode": "host"}],
                "container": {"docker": {"image": "x", "network": "BRIDGE"}},
            },
            "/networks",
            "must not specify both container.docker.network and networks",
        ),
        (
            {"networks": [{"mode": "container/bridge"}], "portDefinitions": [{"port": 0}]},
            "/portDefinitions",
            "only allowed with host-networking",
        ),
        (
            {"networks": [{"mode": "container/bridge"}], "ports": [0]},
            "/ports",
            "only allowed with host-networking",
        ),
    ],
)
def test_invalid_networks(fields: dict[str, Any], path: str, fragment: str) -> None:
    errors = _errors({"id": "/web", "container": DOCKER, **fields})
    assert path in errors, errors
    assert any(fragment in message for message in errors[path]), errors


def test_bridge_networking_needs_an_image() -> None:
    errors = _errors({"id": "/web", "cmd": "serve", "networks": [{"mode": "container/bridge"}]})
    assert errors["/networks"] == ["container/bridge networking needs a container image"]


def test_a_docker_image_is_something_to_run_but_an_imageless_mesos_container_is_not() -> None:
    assert parse_app({"id": "/web", "container": DOCKER}).cmd is None
    errors = _errors({"id": "/web", "container": {"type": "MESOS"}})
    assert "AppDefinition must either contain one of 'cmd' or 'args'" in errors["/"][0]
    plain = parse_app({"id": "/web", "cmd": "serve", "container": {"type": "MESOS"}})
    assert task_spec_for(plain).container is None  # runs as a plain command


def test_errors_in_a_group_app_carry_the_group_path() -> None:
    from tessera.model.group import parse_group

    group = {"id": "/shop", "apps": [{"id": "web", "container": {"docker": {"image": "Bad"}}}]}
    with pytest.raises(InvalidApp) as caught:
        parse_group(group)
    paths = [d["path"] for d in caught.value.marathon_details()]
    assert "/apps/0/container/docker/image" in paths


def test_the_current_form_is_shown_with_every_default() -> None:
    app = assign_service_ports(
        _bridged({"containerPort": 80, "name": "http", "labels": {"VIP_0": "/web:80"}}),
        None,
        set(),
    )
    shown = app_to_json(app)
    assert shown["container"] == {
        "type": "DOCKER",
        "docker": {
            "image": "nginx:1.25",
            "forcePullImage": False,
            "privileged": False,
            "parameters": [],
        },
        "volumes": [],
        "portMappings": [
            {
                "containerPort": 80,
                "hostPort": 0,
                "servicePort": 10000,
                "protocol": "tcp",
                "labels": {"VIP_0": "/web:80"},
                "name": "http",
            }
        ],
    }
    assert shown["networks"] == [{"mode": "container/bridge"}]
    assert shown["portDefinitions"] == []
    assert app_from_json(shown) == app  # what GET shows is read back unchanged


def test_legacy_docker_network_and_port_mappings_are_migrated() -> None:
    legacy = parse_app(
        {
            "id": "/web",
            "container": {
                "type": "DOCKER",
                "volumes": [{"containerPath": "/data", "hostPath": "/srv/data", "mode": "RO"}],
                "docker": {
                    "image": "127.0.0.1:5000/team/app:1.0",
                    "network": "BRIDGE",
                    "portMappings": [
                        {"containerPort": 8080, "hostPort": 0, "servicePort": 0, "protocol": "tcp"},
                        {"containerPort": 161, "hostPort": 31161, "protocol": "udp"},
                    ],
                    "privileged": True,
                    "forcePullImage": True,
                    "parameters": [{"key": "label", "value": "team=a"}],
                    "credential": {"principal": "me", "secret": "pw"},
                },
            },
        }
    )
    assert legacy.bridged and legacy.container is not None
    assert legacy.container.port_mappings == (
        PortMapping(8080, 0, 0, "tcp"),
        PortMapping(161, 31161, 0, "udp"),
    )
    shown = app_to_json(legacy)
    docker = shown["container"]["docker"]
    assert "network" not in docker and "portMappings" not in docker
    assert docker["credential"] == {"principal": "me", "secret": "pw"}
    assert docker["parameters"] == [{"key": "label", "value": "team=a"}]
    assert shown["networks"] == [{"mode": "container/bridge"}]
    assert [m["containerPort"] for m in shown["container"]["portMappings"]] == [8080, 161]
    assert shown["container"]["volumes"] == [
        {"containerPath": "/data", "hostPath": "/srv/data", "mode": "RO"}
    ]
    assert parse_app(shown) == legacy

    host = parse_app({"id": "/web", "container": {"docker": {"image": "x", "network": "HOST"}}})
    assert not host.bridged and app_to_json(host)["networks"] == [{"mode": "host"}]
    assert host.port_definitions  # host apps keep their default port definition


def test_updates_switching_networks_drop_the_other_kind_of_ports() -> None:
    host = parse_app({"id": "/web", "container": DOCKER})
    to_bridge = merge_update(
        host,
        {
            "networks": [{"mode": "container/bridge"}],
            "container": {**DOCKER, "portMappings": [{"containerPort": 80}]},
        },
    )
    bridged = parse_app(to_bridge)
    assert bridged.bridged and bridged.port_definitions == ()
    legacy = merge_update(host, {"container": {"docker": {"image": "x", "network": "BRIDGE"}}})
    assert parse_app(legacy).bridged
    back = parse_app(merge_update(bridged, {"networks": [{"mode": "host"}]}))
    assert not back.bridged and back.container is not None
    assert back.container.port_mappings == ()
    # A partial update of something else keeps the container as it was.
    scaled = parse_app(merge_update(bridged, {"instances": 3}))
    assert scaled.container == bridged.container and scaled.instances == 3


def test_bridged_tasks_ask_for_one_host_port_per_mapping() -> None:
    app = _bridged(
        {"containerPort": 80, "name": "http"},
        {"containerPort": 53, "hostPort": 31053, "protocol": "udp"},
        {"containerPort": 0, "hostPort": 0, "protocol": "tcp,udp"},
    )
    spec = task_spec_for(app)
    assert spec.container == app.container
    assert spec.require_ports  # fixed host ports stay fixed, zeros are drawn
    assert spec.port_definitions == (
        PortDefinition(0, "http", "tcp"),
        PortDefinition(31053, None, "udp"),
        PortDefinition(0, None, "udp,tcp"),
    )


def test_host_network_containers_use_their_port_definitions() -> None:
    app = parse_app(
        {
            "id": "/web",
            "container": DOCKER,
            "portDefinitions": [{"port": 0, "name": "http"}, {"port": 9000}],
        }
    )
    spec = task_spec_for(app)
    assert spec.container is not None and not spec.container.bridged
    assert spec.port_definitions == (PortDefinition(0, "http"), PortDefinition(0, None))
    assert not spec.require_ports


def test_service_ports_of_port_mappings_are_cluster_unique_and_kept() -> None:
    taken = {10000}
    app = assign_service_ports(
        _bridged({"containerPort": 80}, {"containerPort": 81, "servicePort": 10500}),
        None,
        taken,
    )
    assert app.service_ports == [10001, 10500]
    assert {10000, 10001, 10500} <= taken
    changed = _bridged({"containerPort": 8080}, {"containerPort": 81, "servicePort": 10500})
    again = assign_service_ports(changed, app, {10000})
    assert again.service_ports == [10001, 10500]  # the app keeps its service ports
    # Host apps still get theirs from port definitions.
    host = assign_service_ports(parse_app({"id": "/h", "cmd": "x"}), None, set(taken))
    assert host.service_ports == [10002]


def test_health_checks_address_port_mappings() -> None:
    check = {"protocol": "HTTP", "portIndex": 1, "path": "/"}
    errors = _errors(
        {
            "id": "/web",
            "container": {**DOCKER, "portMappings": [{"containerPort": 80}]},
            "networks": [{"mode": "container/bridge"}],
            "healthChecks": [check],
        }
    )
    assert "/healthChecks/0/portIndex" in errors
    ok = _bridged({"containerPort": 80}, {"containerPort": 81}, healthChecks=[check])
    assert ok.health_checks


# ---- the task environment ------------------------------------------------------------------


def test_environment_of_a_bridged_container_shows_container_ports() -> None:
    app = _bridged(
        {"containerPort": 80, "name": "http"},
        {"containerPort": 0, "name": "admin-api"},
    )
    env = task_environment("web.1", task_spec_for(app), [31001, 31002], "10.0.0.5")
    assert env["PORT0"] == "80" and env["PORT1"] == "31002"  # containerPort 0: the host port
    assert env["PORT"] == "80" and env["PORTS"] == "80,31002"
    assert env["PORT_HTTP"] == "80" and env["PORT_ADMIN_API"] == "31002"
    assert env["MARATHON_APP_DOCKER_IMAGE"] == "nginx:1.25"
    assert env["HOST"] == "10.0.0.5"


def test_environment_in_host_mode_shows_host_ports() -> None:
    app = parse_app(
        {"id": "/web", "container": DOCKER, "portDefinitions": [{"port": 0, "name": "http"}]}
    )
    env = task_environment("web.1", task_spec_for(app), [31005], "10.0.0.5")
    assert env["PORT0"] == env["PORT"] == env["PORT_HTTP"] == env["PORTS"] == "31005"
    assert env["MARATHON_APP_DOCKER_IMAGE"] == "nginx:1.25"
    plain = task_environment("web.1", task_spec_for(parse_app({"id": "/p", "cmd": "x"})), [1], "h")
    assert "MARATHON_APP_DOCKER_IMAGE" not in plain
