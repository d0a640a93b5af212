"""The demo workload `make run` starts: tasks that show output, ports, limits and queueing."""

from __future__ import annotations

from typing import Any

DEMO_TASKS: list[dict[str, Any]] = [
    {
        "name": "hello",
        "cmd": 'echo "hello from $MESOS_TASK_ID on $HOST"',
        "cpus": 0.1,
        "mem": 32,
    },
    {
        "name": "ticker",
        "cmd": 'while true; do echo "tick $(date +%T)"; sleep 5; done',
        "cpus": 0.1,
        "mem": 32,
    },
    {
        "name": "web",
        "cmd": 'exec python3 -m http.server "$PORT0" --bind "$HOST"',
        "cpus": 0.2,
        "mem": 64,
        "portDefinitions": [{"port": 0, "name": "http"}],
    },
    {
        # Bigger than any agent: it stays queued, and `tessera task list` says why.
        "name": "too-big",
        "cmd": "sleep 60",
        "cpus": 1000,
        "mem": 32,
    },
]
