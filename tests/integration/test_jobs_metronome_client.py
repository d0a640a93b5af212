"""The `dcos-metronome` client library from PyPI against a real master: create, run, read
the run back, and history.

The library (0.3.0, 2017) parses every answer into protobuf messages that reject unknown
fields, so this also checks that Tessera's answers carry only Metronome's fields. Its
generated code predates protobuf 4: it runs with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python,
set here in a subprocess so that no other test's protobuf is affected. The library has no
history call; history is read through its own request method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from tessera.testing.cluster import Cluster

CLIENT_SCRIPT = r"""
import json, sys, time
from google.protobuf.json_format import MessageToDict, Parse
from metronome import MetronomeClient
from metronome.models import JobSpec

client = MetronomeClient(sys.argv[1], auth_token=sys.argv[2], verify=sys.argv[3])
spec = Parse(json.dumps({
    "id": "client.hello",
    "description": "made by dcos-metronome",
    "run": {"cmd": "echo hello", "cpus": 0.1, "mem": 32, "disk": 0,
            "restart": {"policy": "NEVER"}},
}), JobSpec())
created = client.create_job(spec)
fetched = client.get_job("client.hello")
run = client.run_job("client.hello")
for _ in range(200):
    got = client.get_run("client.hello", run.id)
    if MessageToDict(got).get("status") in ("SUCCESS", "FAILED"):
        break
    time.sleep(0.1)
history = client._do_request("GET", "/v1/jobs/client.hello", params={"embed": "history"}).json()
listed = client.list_jobs()
print(json.dumps({
    "created": MessageToDict(created),
    "fetched": MessageToDict(fetched),
    "run": MessageToDict(got),
    "history": history["history"],
    "listed": [j.id for j in listed],
    "ping": client.ping(),
}))
"""


@pytest.mark.skipif(find_spec("metronome") is None, reason="dcos-metronome is not installed")
def test_dcos_metronome_client_creates_runs_and_reads_history(cluster: Cluster) -> None:
    cluster.start_agent()
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            f"{cluster.url}/service/metronome",
            cluster.token,
            str(cluster.ca_file),  # requests' verify=: the cluster CA's file
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["created"]["id"] == "client.hello"
    assert seen["fetched"]["run"]["cmd"] == "echo hello"
    assert seen["run"]["status"] == "SUCCESS"
    assert seen["run"]["tasks"][0]["status"] == "TASK_FINISHED"
    assert seen["history"]["successCount"] == 1
    finished = seen["history"]["successfulFinishedRuns"][0]
    assert finished["id"] == seen["run"]["id"]
    assert finished["tasks"] == [seen["run"]["tasks"][0]["id"]]
    assert seen["listed"] == ["client.hello"]
    assert seen["ping"] == "pong"
