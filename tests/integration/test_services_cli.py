"""`tessera app|group|deployment` against a real master: YAML files in, one line out."""

from __future__ import annotations

import json
from pathlib import Path

from test_services import SERVER

from tessera.testing.cluster import Cluster, wait_for

WEB_YAML = """
id: /demo/web
cmd: |
{cmd}
instances: 2
cpus: 0.1
mem: 64
healthChecks:
  - protocol: HTTP
    path: /health
    gracePeriodSeconds: 5
    intervalSeconds: 1
    timeoutSeconds: 1
"""


def test_app_cli_from_yaml_with_watch(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_agent()
    definition = tmp_path / "web.yaml"
    indented = "\n".join("  " + line for line in SERVER.splitlines())
    definition.write_text(WEB_YAML.format(cmd=indented))
    added = cluster.cli("app", "add", str(definition))
    assert added.returncode == 0, added.stderr
    assert "created /demo/web with 2 instances" in added.stdout
    watched = cluster.cli("deployment", "watch")
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stderr
    listed = cluster.cli("app", "list")
    assert "/demo/web" in listed.stdout and "2/2" in listed.stdout
    shown = json.loads(cluster.cli("app", "show", "--json", "demo/web").stdout)
    assert shown["tasksHealthy"] == 2
    tree = cluster.cli("group", "list")
    assert "/demo" in tree.stdout
    scaled = cluster.cli("app", "scale", "demo/web", "1")
    assert scaled.returncode == 0 and "scaling /demo/web to 1" in scaled.stdout
    wait_for(lambda: cluster.get("/v2/deployments") == [], 30, "the scale-down")
    versions = cluster.cli("app", "versions", "demo/web").stdout.split()
    assert len(versions) == 2
    # a change that can never become healthy, stopped by hand
    stuck = cluster.http.put("/v2/apps/demo/web", json={"cmd": "sleep 600"}).json()
    stopped = cluster.cli("deployment", "rollback", "--force", stuck["deploymentId"])
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert cluster.get("/v2/deployments") == []
    # bad input: one clear line, exit 1
    again = cluster.cli("app", "add", str(definition))
    assert again.returncode == 1
    assert again.stderr.strip() == "error: An app with id [/demo/web] already exists."
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "/x", "cmd": "true", "cpus": -1}')
    refused = cluster.cli("app", "add", str(bad))
    assert refused.returncode == 1
    assert "/cpus: must be ≥ 0.001" in refused.stderr
    assert "Traceback" not in refused.stderr
    removed = cluster.cli("app", "remove", "/demo/web")
    assert removed.returncode == 0 and "removing /demo/web" in removed.stdout
