"""Container tasks through the executor: real registry, real image store, runc, overlayfs,
cgroups and CNI bridge networking; after every test nothing of the containers is left."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tessera.agent.containers.network import BridgeNetwork, BridgeSettings, PortMap, netns_name
from tessera.agent.containers.runtime import ContainerLaunch, ContainerRuntime, RuntimeSettings
from tessera.agent.executor import Executor, LaunchFailed, LaunchSpec
from tessera.agent.images.build import DEFAULT_PATH, ContainerConfig
from tessera.agent.images.store import Image, ImageSettings, ImageStore
from tessera.testing.cluster import free_port
from tessera.testing.containers import (
    HELLO,
    container_support,
    leftovers,
    netns_prefix,
    network_leftovers,
    push_busybox,
)
from tessera.testing.registry import Registry, unique_repository

pytestmark = pytest.mark.timeout(120)

WHY_NOT = container_support()
if WHY_NOT:
    pytest.skip(WHY_NOT, allow_module_level=True)


@dataclass
class Images:
    registry: Registry
    web: str  # Cmd: httpd in the foreground on port 80
    as_nobody: str  # User nobody, WorkingDir /tmp


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    with Registry() as registry:
        web = push_busybox(
            registry.host,
            unique_repository("web"),
            config=ContainerConfig(
                env=(DEFAULT_PATH, "FROM_IMAGE=yes"),
                cmd=("httpd", "-f", "-p", "80", "-h", "/www"),
            ),
        )
        as_nobody = push_busybox(
            registry.host,
            unique_repository("nobody"),
            config=ContainerConfig(user="nobody", working_dir="/tmp", cmd=("id",)),
        )
        yield Images(registry, web, as_nobody)


@dataclass
class Agent:
    work_dir: Path
    executor: Executor
    runtime: ContainerRuntime
    store: ImageStore
    network: BridgeNetwork
    marker: str

    async def pull(self, reference: str) -> Image:
        return await self.store.ensure(reference)

    def launch_spec(
        self, task_id: str, image: Image, kind: str = "DOCKER", **changes: object
    ) -> LaunchSpec:
        container_fields = {
            key: changes.pop(key)
            for key in ("network", "ports", "volumes", "privileged", "parameters", "user")
            if key in changes
        }
        container = ContainerLaunch(kind=kind, image=image, **container_fields)  # type: ignore[arg-type]
        values: dict[str, object] = {"mem": 64, "kill_grace_seconds": 1.0, **changes}
        return LaunchSpec(task_id, container=container, **values)  # type: ignore[arg-type]


def _runtime(work_dir: Path, registry: str, marker: str) -> ContainerRuntime:
    settings = ImageSettings(insecure_registries=frozenset({registry}))
    store = ImageStore(work_dir / "images", settings)
    subnet = f"10.251.{uuid.uuid4().int % 200 + 20}.0/24"
    network = BridgeNetwork(
        work_dir / "network", BridgeSettings(bridge=f"tst{marker[-8:]}", subnet=subnet)
    )
    allowed = (str(work_dir / "shared"),)
    return ContainerRuntime(
        work_dir, store, network, RuntimeSettings(allowed_host_paths=allowed, hostname="tst")
    )


@pytest.fixture
async def agent(images: Images) -> AsyncIterator[Agent]:
    marker = f"tctr{uuid.uuid4().hex[:8]}"
    work_dir = Path(tempfile.mkdtemp(prefix=f"{marker}-"))
    work_dir.chmod(0o755)
    runtime = _runtime(work_dir, images.registry.host, marker)
    executor = Executor(work_dir, cgroup_prefix=f"tessera-test/{marker}", containers=runtime)
    assert runtime.network is not None
    made = Agent(work_dir, executor, runtime, runtime.images, runtime.network, marker)
    try:
        yield made
    finally:
        for task_id in executor.running():
            await executor.kill(task_id, grace=0)
        await executor.close()
        await runtime.images.close()
        await made.network.remove_bridge()
        left = leftovers(marker) + network_leftovers([netns_prefix(made.network.state_dir)])
        shutil.rmtree(work_dir, ignore_errors=True)
        assert left == [], f"left behind: {left}"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_runs_the_image_command_with_the_task_environment(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    script = 'echo "$FROM_IMAGE $PORT0 $MESOS_SANDBOX $(id -u) $(pwd)"; exit 3'
    spec = agent.launch_spec("t-run", image, kind="MESOS", command=script, env={"PORT0": "8080"})
    running = await agent.executor.launch(spec)
    result = await agent.executor.wait("t-run")
    stdout = _read(running.sandbox / "stdout")
    assert result.state == "TASK_FAILED" and result.exit_code == 3, (result, stdout)
    # MESOS: the shell runs in the sandbox; the image's env and the task's are both there.
    assert stdout.strip() == "yes 8080 /mnt/mesos/sandbox 0 /mnt/mesos/sandbox"
    assert not (running.sandbox / ".rootfs").exists()  # the overlay's upper dir went with it


async def test_image_user_owns_the_sandbox_and_args_replace_cmd(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.as_nobody)
    args = ("sh", "-c", "id -un; pwd; echo written > $MESOS_SANDBOX/out")
    running = await agent.executor.launch(agent.launch_spec("t-user", image, args=args))
    result = await agent.executor.wait("t-user")
    assert result.state == "TASK_FINISHED", (result, _read(running.sandbox / "stderr"))
    assert _read(running.sandbox / "stdout").split() == ["nobody", "/tmp"]
    assert (running.sandbox / "out").read_text() == "written\n"
    assert (running.sandbox / "out").stat().st_uid == 65534


async def test_app_user_overrides_the_image_user(agent: Agent, images: Images) -> None:
    image = await agent.pull(images.as_nobody)
    spec = agent.launch_spec("t-root", image, user="root", args=("id", "-u"))
    running = await agent.executor.launch(spec)
    assert (await agent.executor.wait("t-root")).state == "TASK_FINISHED"
    assert _read(running.sandbox / "stdout").strip() == "0"


async def test_out_of_memory_is_reported_as_the_memory_limit(agent: Agent, images: Images) -> None:
    image = await agent.pull(images.web)
    hog = "x=a; while true; do x=$x$x; done"
    await agent.executor.launch(agent.launch_spec("t-oom", image, command=hog, mem=32))
    result = await agent.executor.wait("t-oom")
    assert result.state == "TASK_FAILED"
    assert result.reason == "REASON_CONTAINER_LIMITATION_MEMORY", result


async def test_pid_1_that_ignores_sigterm_is_killed_after_the_grace_period(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    # As PID 1 of its namespace, a program without a SIGTERM handler never sees SIGTERM.
    spec = agent.launch_spec("t-term", image, args=("sleep", "600"), kill_grace_seconds=1.0)
    await agent.executor.launch(spec)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await agent.executor.kill("t-term")
    took = time.monotonic() - started
    result = await agent.executor.wait("t-term")
    assert result.state == "TASK_KILLED"
    assert 0.9 <= took < 5, took


async def test_bridged_server_is_reached_on_its_host_port_and_its_own_address(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    port = free_port()  # free now, whatever other tests and agents hold
    spec = agent.launch_spec("t-web", image, network="bridge", ports=(PortMap(port, 80, "tcp"),))
    running = await agent.executor.launch(spec)
    assert running.ip is not None
    async with httpx.AsyncClient(timeout=2) as client:
        for url in (f"http://{running.ip}/", f"http://127.0.0.1:{port}/"):
            body = await _get_when_up(client, url)
            assert body == HELLO, (url, _read(running.sandbox / "stderr"))
    await agent.executor.kill("t-web")
    assert (await agent.executor.wait("t-web")).state == "TASK_KILLED"
    assert network_leftovers([netns_name(agent.network.state_dir, "t-web")]) == []
    assert agent.network.attached() == []


async def _get_when_up(client: httpx.AsyncClient, url: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            return (await client.get(url)).text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True)
                print(f"{url} unreachable; nat table:\n{rules.stdout.decode()}")
                raise
            await asyncio.sleep(0.1)


async def test_volumes_only_from_allowed_host_paths(agent: Agent, images: Images) -> None:
    image = await agent.pull(images.web)
    shared = agent.work_dir / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    spec = agent.launch_spec(
        "t-vol", image, args=("cat", "/data/note"), volumes=((str(shared), "/data", True),)
    )
    running = await agent.executor.launch(spec)
    assert (await agent.executor.wait("t-vol")).state == "TASK_FINISHED"
    assert _read(running.sandbox / "stdout") == "from the host\n"
    # A read-only volume cannot be written.
    spec = agent.launch_spec(
        "t-ro", image, command="echo x > /data/new", volumes=((str(shared), "/data", True),)
    )
    await agent.executor.launch(spec)
    assert (await agent.executor.wait("t-ro")).state == "TASK_FAILED"
    assert not (shared / "new").exists()
    with pytest.raises(LaunchFailed, match="not allowed"):
        forbidden = (("/etc", "/host-etc", True),)
        await agent.executor.launch(agent.launch_spec("t-etc", image, volumes=forbidden))


async def test_privileged_is_refused_unless_the_agent_allows_it(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    with pytest.raises(LaunchFailed, match="privileged"):
        await agent.executor.launch(agent.launch_spec("t-priv", image, privileged=True))


async def test_a_restarted_agent_adopts_a_running_container_and_settles_an_ended_one(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    port = free_port()  # free now, whatever other tests and agents hold
    bridged = agent.launch_spec(
        "t-keep", image, network="bridge", ports=(PortMap(port, 80, "tcp"),)
    )
    await agent.executor.launch(bridged)
    await agent.executor.launch(agent.launch_spec("t-end", image, command="sleep 1; exit 7"))
    await agent.executor.close()  # the agent goes away; its containers do not
    await asyncio.sleep(1.5)
    runtime = _runtime(agent.work_dir, images.registry.host, agent.marker)
    executor = Executor(
        agent.work_dir, cgroup_prefix=f"tessera-test/{agent.marker}", containers=runtime
    )
    agent.executor, agent.runtime = executor, runtime
    recovered = {found.task_id: found for found in await executor.recover()}
    assert recovered["t-keep"].alive
    ended = recovered["t-end"].exit
    assert ended is not None and ended.exit_code == 7, ended
    async with httpx.AsyncClient(timeout=2) as client:
        assert await _get_when_up(client, f"http://127.0.0.1:{port}/") == HELLO
    await executor.kill("t-keep")
    assert (await executor.wait("t-keep")).state == "TASK_KILLED"
    assert runtime.network is not None and runtime.network.attached() == []
    await runtime.images.close()
    assert os.listdir(agent.work_dir / "containers") == []


async def test_a_command_missing_from_the_image_fails_with_runc_s_reason(
    agent: Agent, images: Images
) -> None:
    image = await agent.pull(images.web)
    await agent.executor.launch(agent.launch_spec("t-nocmd", image, args=("no-such-program",)))
    result = await agent.executor.wait("t-nocmd")
    assert result.state == "TASK_FAILED"
    assert result.reason == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "the container did not start" in result.message
    assert '"no-such-program": executable file not found' in result.message, result.message


async def test_fetched_files_belong_to_the_container_user(agent: Agent, images: Images) -> None:
    image = await agent.pull(images.as_nobody)
    sandbox = agent.executor.sandbox("t-fetched")
    (sandbox / "conf").mkdir(parents=True)  # what the fetcher put there, as root
    (sandbox / "conf" / "app.ini").write_text("x=1\n")
    script = "echo y=2 >> $MESOS_SANDBOX/conf/app.ini && touch $MESOS_SANDBOX/conf/new"
    await agent.executor.launch(agent.launch_spec("t-fetched", image, command=script))
    result = await agent.executor.wait("t-fetched")
    assert result.state == "TASK_FINISHED", (result, _read(sandbox / "stderr"))
    assert (sandbox / "conf" / "app.ini").read_text() == "x=1\ny=2\n"
    assert (sandbox / "conf" / "new").stat().st_uid == 65534
