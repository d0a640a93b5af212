"""Health and readiness monitors: the counting rules with plain numbers, then real probes
against loopback stubs with shrunken seconds (one check second = 20 ms)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.health import (
    REASON_CHECK_UPDATED,
    REASON_HEALTH_UPDATED,
    CheckCounter,
    CheckedTask,
    HealthMonitors,
    Verdict,
    overall_health,
)
from tessera.model.health import HealthCheck
from tessera.testing.http_stub import HttpStub

SECOND = 0.02


# ---- the rules, with plain numbers -----------------------------------------------------------


def test_grace_period_hides_failures_until_the_first_success() -> None:
    counter = CheckCounter(HealthCheck(grace_period_seconds=10, max_consecutive_failures=2))
    assert counter.record(False, 1) is Verdict.IN_GRACE
    assert counter.record(False, 9.9) is Verdict.IN_GRACE
    assert counter.alive is None and counter.consecutive_failures == 0
    assert counter.record(True, 10.5) is Verdict.HEALTHY
    assert counter.record(False, 11) is Verdict.UNHEALTHY
    assert counter.record(False, 12) is Verdict.KILL


def test_a_success_ends_the_grace_period_early() -> None:
    counter = CheckCounter(HealthCheck(grace_period_seconds=300, max_consecutive_failures=1))
    assert counter.record(True, 1) is Verdict.HEALTHY
    assert counter.record(False, 2) is Verdict.KILL


def test_failures_after_grace_count_even_without_a_success() -> None:
    counter = CheckCounter(HealthCheck(grace_period_seconds=5, max_consecutive_failures=3))
    assert counter.record(False, 4) is Verdict.IN_GRACE
    assert [counter.record(False, t) for t in (5, 6, 7)] == [
        Verdict.UNHEALTHY,
        Verdict.UNHEALTHY,
        Verdict.KILL,
    ]


def test_a_success_resets_the_count_and_zero_never_kills() -> None:
    counter = CheckCounter(HealthCheck(grace_period_seconds=0, max_consecutive_failures=2))
    assert counter.record(False, 1) is Verdict.UNHEALTHY
    assert counter.record(True, 2) is Verdict.HEALTHY
    assert counter.record(False, 3) is Verdict.UNHEALTHY
    never = CheckCounter(HealthCheck(grace_period_seconds=0, max_consecutive_failures=0))
    assert {never.record(False, t) for t in range(100)} == {Verdict.UNHEALTHY}
    assert never.record(None, 101) is Verdict.IGNORED


def test_overall_health() -> None:
    checks = [CheckCounter(HealthCheck()), CheckCounter(HealthCheck())]
    assert overall_health(checks) is None
    checks[0].alive = True
    assert overall_health(checks) is None
    checks[1].alive = True
    assert overall_health(checks) is True
    checks[1].alive = False
    assert overall_health(checks) is False
    assert overall_health([]) is None


# ---- monitors with real probes -----------------------------------------------------------------


@dataclass
class Agent:
    """Stands in for the daemon: records what the monitors report and kill."""

    reports: list[tuple[str, bool | None, bool | None, str, str]] = field(default_factory=list)
    kills: list[tuple[str, str]] = field(default_factory=list)

    async def report(
        self, task_id: str, healthy: bool | None, ready: bool | None, reason: str, message: str
    ) -> None:
        self.reports.append((task_id, healthy, ready, reason, message))

    def kill(self, task_id: str, message: str) -> None:
        self.kills.append((task_id, message))

    @property
    def health(self) -> list[bool | None]:
        return [healthy for _, healthy, ready, _, _ in self.reports if ready is None]


@pytest.fixture
async def stub() -> AsyncIterator[HttpStub]:
    server = await HttpStub().start()
    yield server
    await server.stop()


@pytest.fixture
async def agent_and_monitors(tmp_path: Path) -> AsyncIterator[tuple[Agent, HealthMonitors]]:
    agent = Agent()
    monitors = HealthMonitors(tmp_path / "health", agent.report, agent.kill, seconds=SECOND)
    yield agent, monitors
    await monitors.close()


def checked(
    tmp_path: Path,
    health: list[dict[str, Any]],
    ports: tuple[int, ...] = (),
    readiness: list[dict[str, Any]] | None = None,
    names: tuple[str | None, ...] = (),
) -> CheckedTask:
    return CheckedTask(
        task_id="web.1",
        health_checks=tuple(health),
        readiness_checks=tuple(readiness or ()),
        ports=ports,
        port_names=names or tuple(None for _ in ports),
        sandbox=str(tmp_path),
        env={"PATH": os.environ["PATH"]},
        user=None,
        started_at=time.time(),
    )


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


FAST = {"intervalSeconds": 1, "delaySeconds": 0, "gracePeriodSeconds": 0, "timeoutSeconds": 10}


async def test_http_check_reports_healthy_once(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    monitors.start(
        checked(tmp_path, [{"protocol": "MESOS_HTTP", "path": "/h", **FAST}], (stub.port,))
    )
    await until(lambda: agent.reports)
    await until(lambda: len(stub.requests) >= 4)
    assert agent.reports == [
        ("web.1", True, None, REASON_HEALTH_UPDATED, agent.reports[0][4]),
    ]
    assert "GET http://127.0.0.1" in agent.reports[0][4]
    assert set(stub.requests) == {"GET /h HTTP/1.1"}
    assert monitors.status("web.1") == {"healthy": True, "ready": None}


async def test_failing_check_turns_unhealthy_then_kills(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    check = {"protocol": "HTTP", "maxConsecutiveFailures": 3, **FAST}
    monitors.start(checked(tmp_path, [check], (stub.port,)))
    await until(lambda: agent.health == [True])
    stub.status = 503
    await until(lambda: agent.kills)
    assert agent.health == [True, False]
    ((task_id, message),) = agent.kills
    assert task_id == "web.1"
    assert message.startswith("killed after 3 consecutive failures of health check 0")
    assert "503" in message
    requests = len(stub.requests)
    assert await monitors.stop("web.1") == message
    await asyncio.sleep(5 * SECOND)
    assert len(stub.requests) == requests  # no probe after the kill
    assert monitors.status("web.1") == {"healthy": None, "ready": None}
    assert not (tmp_path / "health" / "web.1.json").exists()


async def test_grace_period_then_first_success(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    stub.status = 500
    check = {**FAST, "gracePeriodSeconds": 1000, "maxConsecutiveFailures": 1}
    monitors.start(checked(tmp_path, [check], (stub.port,)))
    await until(lambda: len(stub.requests) >= 5)
    assert agent.reports == [] and agent.kills == []  # failures in grace do not count
    stub.status = 200
    await until(lambda: agent.health == [True])
    stub.status = 500  # grace is over once the check passed: one failure kills (max 1)
    await until(lambda: agent.kills)


async def test_zero_max_failures_never_kills(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    stub.status = 500
    monitors.start(checked(tmp_path, [{**FAST, "maxConsecutiveFailures": 0}], (stub.port,)))
    await until(lambda: len(stub.requests) >= 6)
    assert agent.health == [False] and agent.kills == []


async def test_timeout_is_a_failure(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    stub.delay = 1.0
    check = {**FAST, "timeoutSeconds": 2, "maxConsecutiveFailures": 2}
    monitors.start(checked(tmp_path, [check], (stub.port,)))
    await until(lambda: agent.kills)
    assert "timed out after 0.04s" in agent.kills[0][1]


async def test_delay_applies_to_mesos_checks_only(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    started = time.monotonic()
    mesos = {**FAST, "protocol": "MESOS_TCP", "delaySeconds": 15}
    monitors.start(checked(tmp_path, [mesos], (stub.port,)))
    await until(lambda: agent.health == [True])
    assert time.monotonic() - started >= 15 * SECOND
    marathon = HealthMonitors(tmp_path / "other", agent.report, agent.kill, seconds=1.0)
    started = time.monotonic()
    marathon.start(
        checked(tmp_path, [{**FAST, "protocol": "HTTP", "delaySeconds": 15}], (stub.port,))
    )
    await until(lambda: agent.health == [True, True])
    assert time.monotonic() - started < 5  # HTTP (Marathon's) ignores delaySeconds
    await marathon.close()


async def test_tcp_and_command_checks(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    (tmp_path / "up").write_text("")
    checks = [
        {**FAST, "protocol": "TCP", "portIndex": 1},
        {**FAST, "protocol": "COMMAND", "command": {"value": "test -f up"}},
    ]
    monitors.start(checked(tmp_path, checks, (1, stub.port)))
    await until(lambda: agent.health == [True])
    (tmp_path / "up").unlink()
    await until(lambda: agent.health == [True, False])
    assert "health check 1 failed: command 'test -f up' exited 1" in agent.reports[-1][4]


async def test_a_missing_port_fails_the_check(
    tmp_path: Path, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    monitors.start(checked(tmp_path, [{**FAST, "portIndex": 2}], (31000,)))
    await until(lambda: agent.kills)
    assert "no port with index 2" in agent.kills[0][1]


async def test_readiness_waits_for_health_then_reports_ready_once(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    ready_stub = await HttpStub(status=503).start()
    try:
        stub.status = 500
        health = [{**FAST, "gracePeriodSeconds": 1000}]
        readiness = [
            {"path": "/ready", "portName": "api", "intervalSeconds": 2, "timeoutSeconds": 1}
        ]
        task = checked(tmp_path, health, (stub.port, ready_stub.port), readiness, ("web", "api"))
        monitors.start(task)
        await until(lambda: len(stub.requests) >= 3)
        assert ready_stub.requests == []  # readiness starts once the task is healthy
        stub.status = 200
        await until(lambda: len(ready_stub.requests) >= 3)
        assert [r for r in agent.reports if r[2]] == []
        ready_stub.status = 200
        await until(lambda: any(r[2] for r in agent.reports))
        assert agent.reports[-1][1:4] == (None, True, REASON_CHECK_UPDATED)
        seen = len(ready_stub.requests)
        await asyncio.sleep(10 * SECOND)
        assert len(ready_stub.requests) == seen  # ready: no more readiness probes
        assert monitors.status("web.1") == {"healthy": True, "ready": True}
        assert set(ready_stub.requests) == {"GET /ready HTTP/1.1"}
    finally:
        await ready_stub.stop()


async def test_readiness_without_health_checks(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    readiness = [{"portName": "http-api", "intervalSeconds": 2, "timeoutSeconds": 1}]
    monitors.start(checked(tmp_path, [], (stub.port,), readiness, ("http-api",)))
    await until(lambda: agent.reports)
    assert agent.reports[0][1:3] == (None, True)


async def test_checks_resume_after_an_agent_restart(tmp_path: Path, stub: HttpStub) -> None:
    agent = Agent()
    first = HealthMonitors(tmp_path / "health", agent.report, agent.kill, seconds=SECOND)
    first.start(checked(tmp_path, [{**FAST, "gracePeriodSeconds": 1000}], (stub.port,)))
    await until(lambda: agent.health == [True])
    await first.close()
    saved = json.loads((tmp_path / "health" / "web.1.json").read_text())
    assert saved["healthy"] is True and saved["passed_once"] == [True]
    assert os.stat(tmp_path / "health" / "web.1.json").st_mode & 0o077 == 0

    stub.status = 500
    second = HealthMonitors(tmp_path / "health", agent.report, agent.kill, seconds=SECOND)
    second.resume(["web.1"])
    assert second.status("web.1") == {"healthy": True, "ready": None}
    # It passed before the restart, so the grace period is over: failures count at once.
    await until(lambda: agent.kills)
    assert agent.health == [True, False]
    await second.close()

    third = HealthMonitors(tmp_path / "health", agent.report, agent.kill, seconds=SECOND)
    third.resume([])  # the task is gone: its state is dropped
    assert not (tmp_path / "health" / "web.1.json").exists()
    await third.close()


async def test_pause_keeps_the_verdict(
    tmp_path: Path, stub: HttpStub, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    agent, monitors = agent_and_monitors
    monitors.start(checked(tmp_path, [FAST], (stub.port,)))
    await until(lambda: agent.health == [True])
    await monitors.pause("web.1")
    seen = len(stub.requests)
    await asyncio.sleep(5 * SECOND)
    assert len(stub.requests) == seen
    assert monitors.status("web.1")["healthy"] is True
    assert await monitors.stop("web.1") is None


async def test_tasks_without_checks_are_not_tracked(
    tmp_path: Path, agent_and_monitors: tuple[Agent, HealthMonitors]
) -> None:
    _agent, monitors = agent_and_monitors
    monitors.start(checked(tmp_path, [], (31000,)))
    assert monitors.monitors == {}
    assert not (tmp_path / "health").exists()
