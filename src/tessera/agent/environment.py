"""The environment a task sees: the app's `env`, its env secrets, and what Marathon and Mesos set.

Secret values come from the launch message (held in memory by the daemon) and go into the
environment of the task's process only: callers that persist an environment (the health
checker's state) build it without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tessera.model.task import TaskSpec


def task_environment(
    task_id: str,
    spec: TaskSpec,
    ports: Sequence[int],
    host: str,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`ports` are the task's host ports, in the order of its port definitions (one per
    port mapping for a bridged container); `secrets` the values of its env secrets."""
    env = dict(spec.env)
    env.update(secrets or {})
    env["HOST"] = host
    env["MESOS_TASK_ID"] = task_id
    env["MARATHON_APP_ID"] = spec.app_id or "/" + spec.name
    env["MARATHON_APP_VERSION"] = spec.app_version or ""
    if spec.container is not None and spec.container.image:
        env["MARATHON_APP_DOCKER_IMAGE"] = spec.container.image
    seen = visible_ports(spec, ports)
    env["PORTS"] = ",".join(str(port) for port in seen)
    for index, port in enumerate(seen):
        env[f"PORT{index}"] = str(port)
        definitions = spec.port_definitions
        name = definitions[index].name if index < len(definitions) else None
        if name:
            env[f"PORT_{name.upper().replace('-', '_')}"] = str(port)
    if seen:
        env["PORT"] = str(seen[0])
    return env


def visible_ports(spec: TaskSpec, host_ports: Sequence[int]) -> list[int]:
    """The ports the task listens on: inside a bridged container the container ports
    (a mapping's `containerPort`, or its host port when that is 0), else the host ports."""
    container = spec.container
    if container is None or not container.bridged:
        return list(host_ports)
    mappings = container.port_mappings
    return [
        (mappings[index].container_port if index < len(mappings) else 0) or port
        for index, port in enumerate(host_ports)
    ]
