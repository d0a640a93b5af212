"""Per-role task users on real processes: own uids, reachable sandboxes, no cross-role access."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tessera.agent.exec_spawn import mount_namespaces
from tessera.agent.executor import Executor, LaunchSpec
from tessera.agent.health_probes import CommandContext, probe_command
from tessera.testing.cluster import Cluster, task_processes, wait_for

ENV = {"PATH": "/usr/bin:/bin"}


def _need_root() -> None:
    if os.geteuid() != 0:
        print("skipped: per-role task users need a root agent (it switches users)")
        pytest.skip("per-role task users need a root agent (it switches users)")
    if shutil.which("setpriv") is None:
        print("skipped: setpriv (util-linux) is not installed")
        pytest.skip("setpriv (util-linux) is not installed")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A `mktemp -d`: 0700 and root's, so a task user cannot traverse it by itself."""
    path = Path(tempfile.mkdtemp(prefix="tessera-private-"))
    assert path.stat().st_mode & 0o777 == 0o700
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def executor(private_dir: Path) -> AsyncIterator[Executor]:
    _need_root()
    made = Executor(private_dir / "agent", isolation="none")
    yield made
    for task_id in made.running():
        await made.kill(task_id, 0)
    await made.close()


async def _started(executor: Executor, spec: LaunchSpec, program: str) -> psutil.Process:
    """The task's process once it runs `program` (after the wrapper's setup)."""
    running = await executor.launch(spec)
    wrapper = psutil.Process(running.pid)
    for _ in range(500):
        found = [child for child in wrapper.children() if child.name() == program]
        if found:
            return found[0]
        await _sleep()
    raise AssertionError(f"{spec.task_id} never ran {program}")


async def _sleep() -> None:
    await asyncio.sleep(0.01)


async def _output(executor: Executor, spec: LaunchSpec) -> str:
    await executor.launch(spec)
    result = await executor.wait(spec.task_id)
    sandbox = executor.sandbox(spec.task_id)
    assert result.state == "TASK_FINISHED", (result, (sandbox / "stderr").read_text())
    return (sandbox / "stdout").read_text()


async def test_roles_get_different_uids_that_survive_a_restart(
    executor: Executor, private_dir: Path
) -> None:
    script = "id -u; id -g"
    a = await _output(executor, LaunchSpec("a.1", command=script, env=ENV, role="team-a"))
    b = await _output(executor, LaunchSpec("b.1", command=script, env=ENV, role="team-b"))
    default = await _output(executor, LaunchSpec("d.1", command=script, env=ENV))
    uids = {int(a.split()[0]), int(b.split()[0]), int(default.split()[0])}
    assert len(uids) == 3 and not uids & {0, 65534}
    assert a.split()[0] == a.split()[1]  # the role's gid is its uid
    await executor.close()

    again = Executor(private_dir / "agent", isolation="none")
    later = await _output(again, LaunchSpec("a.2", command=script, env=ENV, role="team-a"))
    assert later == a
    assert again.isolation_info()["role_uids"] == executor.isolation_info()["role_uids"]
    await again.close()


async def test_explicit_user_still_wins(executor: Executor) -> None:
    spec = LaunchSpec("named.1", command="id -un", env=ENV, user="daemon", role="team-a")
    assert await _output(executor, spec) == "daemon\n"


async def test_task_under_a_private_work_dir_uses_its_sandbox_by_path(
    executor: Executor, private_dir: Path
) -> None:
    if mount_namespaces() is None:
        print("skipped: this host cannot make mount namespaces")
        pytest.skip("this host cannot make mount namespaces")
    script = (
        'echo hi > "$MESOS_SANDBOX/by-path" && cat "$MESOS_SANDBOX/by-path" && '
        'echo rel > relative && cat "$MESOS_SANDBOX/relative" && pwd && echo "$HOME" && '
        f"(ls {private_dir} 2>&1 || true)"
    )
    out = await _output(executor, LaunchSpec("private.1", command=script, env=ENV, role="a"))
    sandbox = executor.sandbox("private.1")
    lines = out.splitlines()
    assert lines[:4] == ["hi", "rel", str(sandbox), str(sandbox)]
    assert lines[4:] == ["agent"]  # nothing of the host's private dir but the way down
    assert sandbox.stat().st_mode & 0o777 == 0o700
    assert (private_dir / "agent" / "meta").stat().st_mode & 0o777 == 0o700


async def test_roles_cannot_read_or_signal_each_other(executor: Executor) -> None:
    secret = "canary-3141"
    script = f'echo {secret} > "$MESOS_SANDBOX/secret"; exec sleep 60'
    victim_spec = LaunchSpec("victim.1", command=script, env={**ENV, "SECRET": secret}, role="a")
    victim = await _started(executor, victim_spec, "sleep")
    secret_file = executor.sandbox("victim.1") / "secret"
    for _ in range(200):
        if secret_file.exists():
            break
        await _sleep()
    probe = (
        f"cat /proc/{victim.pid}/environ >/dev/null 2>&1 && echo environ:read"
        " || echo environ:denied;"
        f" cat {secret_file} >/dev/null 2>&1 && echo file:read || echo file:denied;"
        f" kill -0 {victim.pid} 2>/dev/null && echo kill:done || echo kill:denied"
    )
    other = await _output(executor, LaunchSpec("attacker.1", command=probe, env=ENV, role="b"))
    assert other.split() == ["environ:denied", "file:denied", "kill:denied"]
    same = await _output(executor, LaunchSpec("friend.1", command=probe, env=ENV, role="a"))
    assert same.split()[0] == "environ:read"  # the same role's uid: the check is meaningful
    assert victim.is_running()

    # Outside any mount namespace, as role b's uid: the kernel's answer is EACCES / EPERM.
    b = int(await _output(executor, LaunchSpec("b.2", command="id -u", env=ENV, role="b")))
    as_b = ["setpriv", f"--reuid={b}", f"--regid={b}", "--clear-groups", "--"]
    for target in (f"/proc/{victim.pid}/environ", str(secret_file)):
        done = subprocess.run([*as_b, "cat", target], capture_output=True, text=True)
        assert "Permission denied" in done.stderr and secret not in done.stdout
    done = subprocess.run([*as_b, "kill", "-0", str(victim.pid)], capture_output=True, text=True)
    assert done.returncode != 0 and "not permitted" in done.stderr


async def test_what_the_agent_put_in_the_sandbox_and_health_checks_work(
    executor: Executor,
) -> None:
    sandbox = executor.sandbox("filled.1")
    sandbox.mkdir(mode=0o750)
    (sandbox / "fetched.txt").write_text("payload\n")  # as the fetcher might, as root
    os.chown(sandbox / "fetched.txt", 65534, 65534)
    script = 'cat fetched.txt && echo more >> "$MESOS_SANDBOX/fetched.txt" && exec sleep 60'
    spec = LaunchSpec("filled.1", command=script, env=ENV, role="a")
    task = await _started(executor, spec, "sleep")
    assert (sandbox / "fetched.txt").read_text() == "payload\nmore\n"
    assert (sandbox / "fetched.txt").stat().st_uid == task.uids().real
    assert sandbox.stat().st_mode & 0o777 == 0o700
    user = executor.user_for(None, "a")
    context = CommandContext("filled.1", str(sandbox), ENV, user)
    check = 'grep -q more "$MESOS_SANDBOX/fetched.txt" && test "$(id -u)" = "$USER"'
    result = await probe_command(check, context, 10)
    assert result.ok, result.detail


async def test_the_environment_never_shows_in_a_command_line(executor: Executor) -> None:
    value = "canary-2718 'q\" $HOME `id` \\n\nsecond line"
    env = {**ENV, "SECRET": value, "EMPTY": ""}
    task = await _started(executor, LaunchSpec("env.1", args=("sleep", "60"), env=env), "sleep")
    assert task.environ()["SECRET"] == value and task.environ()["EMPTY"] == ""
    assert "PWD" not in task.environ()
    leaks = []
    for process in psutil.process_iter():
        try:
            if any("canary-2718" in arg for arg in process.cmdline()):
                leaks.append(process.cmdline())
        except psutil.Error:
            continue
    assert leaks == []
    out = await _output(executor, LaunchSpec("env.2", command='printf %s "$SECRET"', env=env))
    assert out == value


def test_cluster_task_serves_its_sandbox_from_a_private_work_dir(private_dir: Path) -> None:
    """The reported bug: under a 0700 work dir, `python3 -m http.server $PORT0` answered 404."""
    _need_root()
    cluster = Cluster(private_dir)
    cluster.start_master()
    try:
        cluster.start_agent()
        command = (
            'echo hello > "$MESOS_SANDBOX/hello.txt" && '
            "exec python3 -m http.server $PORT0 --bind 127.0.0.1"
        )
        task = cluster.launch(name="web", cmd=command, portDefinitions=[{"port": 0}], mem=64)
        running = cluster.wait_state(task["id"], "TASK_RUNNING")
        port = running["ports"][0]
        url = f"http://127.0.0.1:{port}/hello.txt"
        answer = wait_for(lambda: _get(url), 20, "the task's web server")
        assert (answer.status_code, answer.text) == (200, "hello\n")
        uid = _task_uid(task["id"])
        assert uid not in (0, 65534)
        _check_team_uids(cluster, uid)

        # The allocation outlives the agent: after kill -9 and a restart, same uid.
        cluster.agents[0].kill9()
        wait_for(lambda: not cluster.agent_registered("agent-1"), 20, "the master to notice")
        cluster.start_agent()
        second = cluster.launch(name="again", cmd="exec sleep 60")
        cluster.wait_state(second["id"], "TASK_RUNNING")
        assert _task_uid(second["id"]) == uid
    finally:
        cluster.stop()


def _check_team_uids(cluster: Cluster, default_uid: int) -> None:
    """Two teams' Marathon apps on one agent run as two uids, neither the default role's."""
    for team in ("a", "b"):
        app = {"id": f"/team-{team}/sleeper", "cmd": "exec sleep 60", "mem": 32}
        answer = cluster.http.post("/v2/apps", json={**app, "cpus": 0.1, "role": f"team-{team}"})
        assert answer.status_code == 201, answer.text

    def running() -> list[str] | None:
        tasks = cluster.get("/v1/tasks")["tasks"]
        found = [t["id"] for t in tasks if t["id"].startswith("team-")]
        live = [t["id"] for t in tasks if t["id"] in found and t["state"] == "TASK_RUNNING"]
        return live if len(live) == 2 else None

    uids = {_task_uid(task_id) for task_id in wait_for(running, 30, "the teams' tasks")}
    if uids == {default_uid}:
        print("skipped: agent/daemon.py does not pass the task's role to the executor yet")
        return
    assert len(uids) == 2 and default_uid not in uids


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _task_uid(task_id: str) -> int:
    processes = wait_for(lambda: task_processes(task_id), 10, f"{task_id}'s processes")
    return int(processes[0].uids().real)
