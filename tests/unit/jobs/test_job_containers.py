"""Metronome jobs with images: run.docker, run.ucr and run.networks validated with
Metronome's paths, shown back as given, and run as the job task's ContainerSpec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.model.container import ContainerSpec
from tessera.model.job import JobRun, JobRunSpec, RunStatus
from tessera.reconcile.jobs import task_spec_for
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers

IMAGE = "127.0.0.1:5000/team/batch:1.0"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(MasterConfig(work_dir=tmp_path), store=MemoryStore())
    with TestClient(app) as test_client:
        test_client.headers.update(auth_headers(tmp_path))
        yield test_client


def _details(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 422, response.text
    return {d["path"]: d["errors"] for d in response.json()["details"]}


@pytest.mark.parametrize(
    ("run", "path", "fragment"),
    [
        ({"docker": {}}, "/run/docker/image", "required"),
        ({"docker": {"image": ""}}, "/run/docker/image", "at least 1"),
        ({"docker": {"image": "Team/Batch"}}, "/run/docker/image", "lowercase"),
        ({"docker": {"image": "x", "forcePullImage": "yes"}}, "/run/docker/forcePullImage", "bool"),
        (
            {"docker": {"image": "x", "parameters": [{"key": "ipc", "value": "host"}]}},
            "/run/docker/parameters(0)/key",
            "parameter 'ipc' is not supported; supported: label, env, user, workdir",
        ),
        ({"ucr": {"image": {"id": "x", "kind": "appc"}}}, "/run/ucr/image/kind", "docker"),
        ({"ucr": {"image": {"id": "bad//ref"}}}, "/run/ucr/image/id", "repository name"),
        (
            {"docker": {"image": "x"}, "ucr": {"image": {"id": "x"}}},
            "/run",
            "Either Docker or UCR should be provided, but not both",
        ),
        (
            {"cmd": "true", "networks": [{"mode": "container/bridge"}]},
            "/run",
            "Only containers may join container or bridge networks",
        ),
        (
            {"docker": {"image": "x"}, "networks": [{"mode": "container", "name": "n"}]},
            "/run/networks(0)/mode",
            "host",
        ),
        ({}, "/run", "exactly one of cmd and args"),
    ],
)
def test_invalid_job_containers(
    client: TestClient, run: dict[str, Any], path: str, fragment: str
) -> None:
    details = _details(client.post("/v1/jobs", json={"id": "batch", "run": run}))
    assert path in details, details
    assert any(fragment in message for message in details[path]), details


def test_a_docker_job_needs_no_cmd_and_is_shown_back_as_given(client: TestClient) -> None:
    docker = {
        "image": IMAGE,
        "forcePullImage": True,
        "privileged": False,
        "parameters": [{"key": "label", "value": "team=batch"}],
    }
    run = {"docker": docker, "networks": [{"mode": "container/bridge"}]}
    response = client.post("/v1/jobs", json={"id": "batch", "run": run})
    assert response.status_code == 201, response.text
    shown = client.get("/v1/jobs/batch").json()["run"]
    assert shown["docker"] == docker
    assert shown["networks"] == [{"mode": "container/bridge"}]
    assert "cmd" not in shown
    ucr = {"ucr": {"image": {"id": "busybox", "forcePull": True}}, "args": ["echo", "hi"]}
    response = client.post("/v1/jobs", json={"id": "ucr", "run": ucr})
    assert response.status_code == 201, response.text
    assert client.get("/v1/jobs/ucr").json()["run"]["ucr"] == {
        "image": {"id": "busybox", "kind": "docker", "forcePull": True},
        "privileged": False,
    }


def _task_container(spec: JobRunSpec) -> ContainerSpec | None:
    run = JobRun("r1", "batch", spec, RunStatus.INITIAL, 0.0)
    return task_spec_for(run).container


def test_the_job_task_runs_in_the_image() -> None:
    docker = {
        "image": IMAGE,
        "forcePullImage": True,
        "privileged": True,
        "parameters": [{"key": "label", "value": "a=b"}],
    }
    spec = JobRunSpec(docker=docker, networks=({"mode": "container/bridge"},))
    assert _task_container(spec) == ContainerSpec(
        type="DOCKER",
        image=IMAGE,
        force_pull=True,
        privileged=True,
        parameters=(("label", "a=b"),),
        network="bridge",
    )
    ucr = JobRunSpec(cmd="true", ucr={"image": {"id": "busybox", "forcePull": False}})
    assert _task_container(ucr) == ContainerSpec(type="MESOS", image="busybox")
    assert _task_container(JobRunSpec(cmd="true")) is None
    # Stored runs keep their spec, containers included.
    assert JobRunSpec.from_json(spec.to_json()) == spec
    old = JobRunSpec(cmd="true").to_json()
    del old["ucr"], old["networks"]
    assert JobRunSpec.from_json(old) == JobRunSpec(cmd="true")
