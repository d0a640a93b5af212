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

# A long-running service (Marathon app): 3 instances of a small Python web server with an
# HTTP health check. `tessera app show /demo/web` shows them; kill one and it comes back.
_WEB_SERVER = """exec python3 -c '
import http.server as s, os
task, where = os.environ["MESOS_TASK_ID"], os.environ["HOST"] + ":" + os.environ["PORT0"]
class H(s.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
        self.wfile.write(("hello from " + task + " at " + where + chr(10)).encode())
    def log_message(self, *args): pass
s.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT0"])), H).serve_forever()'"""

DEMO_SERVICE: dict[str, Any] = {
    "id": "/demo/web",
    "cmd": _WEB_SERVER,
    "instances": 3,
    "cpus": 0.1,
    "mem": 64,
    "portDefinitions": [{"port": 0, "name": "http"}],
    "healthChecks": [
        {
            "protocol": "HTTP",
            "path": "/",
            "portIndex": 0,
            "gracePeriodSeconds": 10,
            "intervalSeconds": 2,
            "timeoutSeconds": 1,
            "maxConsecutiveFailures": 3,
        }
    ],
}

# A Metronome job on a one-minute schedule: its runs show up in the job's history
# (`tessera job history demo.heartbeat`).
DEMO_JOB: dict[str, Any] = {
    "id": "demo.heartbeat",
    "description": "Says hello once a minute",
    "run": {"cmd": 'echo "heartbeat at $(date +%T) on $HOST"', "cpus": 0.1, "mem": 32},
    "schedules": [{"id": "every-minute", "cron": "* * * * *", "concurrencyPolicy": "FORBID"}],
}

# A containerised web service: an image built here from busybox-static (no network needed),
# pushed into the registry of `tessera up --registry`, run by runc with bridge networking and
# a port mapping (the container listens on 80; the agent forwards a host port to it).
DEMO_IMAGE_REPOSITORY = "demo/busybox-web"
DEMO_IMAGE_TAG = "1.0"
DEMO_CONTAINER_PAGE = "<h1>hello from a Tessera container</h1>\n"
DEMO_CONTAINER_CMD = (
    "httpd",
    "-f",
    "-p",
    "80",
    "-h",
    "/www",
)


def demo_container_service(image: str) -> dict[str, Any]:
    return {
        "id": "/demo/container-web",
        "instances": 2,
        "cpus": 0.1,
        "mem": 32,
        "container": {
            "type": "DOCKER",
            "docker": {"image": image},
            "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "http"}],
        },
        "networks": [{"mode": "container/bridge"}],
        "healthChecks": [
            {
                "protocol": "MESOS_HTTP",
                "path": "/",
                "portIndex": 0,
                "gracePeriodSeconds": 10,
                "intervalSeconds": 2,
                "timeoutSeconds": 1,
                "maxConsecutiveFailures": 3,
            }
        ],
    }
