"""The environment a task sees: the app's `env` plus the variables Marathon and Mesos set."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.model.task import TaskSpec


def task_environment(
    task_id: str, spec: TaskSpec, ports: Sequence[int], host: str
) -> dict[str, str]:
    env = dict(spec.env)
    env["HOST"] = host
    env["MESOS_TASK_ID"] = task_id
    env["MARATHON_APP_ID"] = spec.app_id or "/" + spec.name
    env["MARATHON_APP_VERSION"] = spec.app_version or ""
    env["PORTS"] = ",".join(str(port) for port in ports)
    for index, port in enumerate(ports):
        env[f"PORT{index}"] = str(port)
        definitions = spec.port_definitions
        name = definitions[index].name if index < len(definitions) else None
        if name:
            env[f"PORT_{name.upper().replace('-', '_')}"] = str(port)
    if ports:
        env["PORT"] = str(ports[0])
    return env
