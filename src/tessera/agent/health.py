"""Health and readiness checks of the agent's tasks: one asyncio task per check, next to
the task, as Mesos-native (MESOS_*) checks are.

Semantics (Mesos' health checker and command executor, with Marathon's fields):

- checks start `delaySeconds` after TASK_RUNNING for COMMAND and MESOS_* checks; Marathon's
  own HTTP/HTTPS/TCP checks ignore delaySeconds in Marathon, so here they start at once;
- every `intervalSeconds` (counted from the end of the previous probe; 0 means 1) one probe
  runs, failing when it takes longer than `timeoutSeconds` (0: no limit, as in Mesos);
- a failure within `gracePeriodSeconds` of the task's start does not count, until the check
  has passed once; then every failure counts;
- the task is healthy when every check passed its last probe, unhealthy as soon as one
  failed; each change is a TASK_RUNNING status update with `healthy` set (Mesos reason
  REASON_TASK_HEALTH_CHECK_STATUS_UPDATED), sent on change only;
- after `maxConsecutiveFailures` counted failures in a row (0: never) the agent kills the
  task with its kill grace period; as in Mesos it ends TASK_KILLED with `healthy: false`
  (Mesos leaves the reason unset; here it is REASON_TASK_HEALTH_CHECK_STATUS_UPDATED) and
  the message says which check killed it;
- readiness checks (HTTP/HTTPS GET on the port named `portName`) start once the task is
  healthy, or at TASK_RUNNING when it has no health checks, and probe every
  `intervalSeconds` until the status is one of `httpStatusCodesForReady`; then one update
  with `ready: true` is sent and they stop.

What a task is checked with, and the verdicts so far, are kept in `<work_dir>/health/` so
that an agent restart resumes the checks where they were (grace period included); a master
restart changes nothing here, and the agent's registration carries each task's verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from tessera.agent.disk import describe_os_error, write_atomic
from tessera.agent.health_probes import (
    CommandContext,
    HttpTarget,
    ProbeResult,
    loopback,
    probe_command,
    probe_http,
    probe_tcp,
)
from tessera.clock import Clock, SystemClock
from tessera.model.health import (
    HealthCheck,
    HealthProtocol,
    HealthSpecError,
    ReadinessCheck,
    parse_health_checks,
    parse_readiness_checks,
)

log = logging.getLogger(__name__)

REASON_HEALTH_UPDATED = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
REASON_CHECK_UPDATED = "REASON_TASK_CHECK_STATUS_UPDATED"

# (task_id, healthy, ready, reason, message): send a TASK_RUNNING update with these.
Reporter = Callable[[str, bool | None, bool | None, str, str], Awaitable[None]]
# (task_id, message): kill the task, it failed its health checks too often.
Killer = Callable[[str, str], None]


class Verdict(Enum):
    IGNORED = "ignored"  # counts neither way
    IN_GRACE = "in grace"  # a failure within the grace period, before any success
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    KILL = "kill"  # maxConsecutiveFailures reached


@dataclass(slots=True)
class CheckCounter:
    """The state of one health check of one task; `record` is the whole rule book."""

    check: HealthCheck
    passed_once: bool = False
    consecutive_failures: int = 0
    alive: bool | None = None

    def record(self, ok: bool | None, elapsed: float) -> Verdict:
        """Fold in one probe result, `elapsed` seconds after the task started."""
        if ok is None:
            return Verdict.IGNORED
        if ok:
            self.passed_once = True
            self.consecutive_failures = 0
            self.alive = True
            return Verdict.HEALTHY
        if not self.passed_once and elapsed < self.check.grace_period_seconds:
            return Verdict.IN_GRACE
        self.consecutive_failures += 1
        self.alive = False
        limit = self.check.max_consecutive_failures
        if limit > 0 and self.consecutive_failures >= limit:
            return Verdict.KILL
        return Verdict.UNHEALTHY


def overall_health(counters: Sequence[CheckCounter]) -> bool | None:
    """False when any check failed last, True when all passed last, else None."""
    alive = [counter.alive for counter in counters]
    if False in alive:
        return False
    if alive and all(alive):
        return True
    return None


@dataclass(frozen=True, slots=True)
class CheckedTask:
    """What the agent needs to check a task; persisted so checks survive an agent restart."""

    task_id: str
    health_checks: tuple[Mapping[str, Any], ...]
    readiness_checks: tuple[Mapping[str, Any], ...]
    ports: tuple[int, ...]
    port_names: tuple[str | None, ...]
    sandbox: str
    env: Mapping[str, str]
    user: str | None
    started_at: float  # wall clock, so the grace period survives an agent restart
    healthy: bool | None = None
    ready: bool | None = None
    passed_once: tuple[bool, ...] = ()
    # A container's command checks run inside it: `runc exec <id>` before `/bin/sh -c`.
    exec_prefix: tuple[str, ...] = ()

    @property
    def has_checks(self) -> bool:
        return bool(self.health_checks or self.readiness_checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["health_checks"] = [dict(c) for c in self.health_checks]
        data["readiness_checks"] = [dict(c) for c in self.readiness_checks]
        data["env"] = dict(self.env)
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> CheckedTask:
        return CheckedTask(
            task_id=str(data["task_id"]),
            health_checks=tuple(data.get("health_checks", ())),
            readiness_checks=tuple(data.get("readiness_checks", ())),
            ports=tuple(int(p) for p in data.get("ports", ())),
            port_names=tuple(data.get("port_names", ())),
            sandbox=str(data["sandbox"]),
            env=dict(data.get("env", {})),
            user=data.get("user"),
            started_at=float(data["started_at"]),
            healthy=data.get("healthy"),
            ready=data.get("ready"),
            passed_once=tuple(bool(p) for p in data.get("passed_once", ())),
            exec_prefix=tuple(str(part) for part in data.get("exec_prefix", ())),
        )


class TaskMonitor:
    """The checks of one task: a loop per health check, one per readiness check."""

    def __init__(self, task: CheckedTask, monitors: HealthMonitors) -> None:
        self.task = task
        self.monitors = monitors
        self.health_checks, self.readiness_checks = _parse(task)
        passed = task.passed_once
        self.counters = [
            CheckCounter(check, passed_once=index < len(passed) and passed[index])
            for index, check in enumerate(self.health_checks)
        ]
        self.healthy = task.healthy
        self.ready = task.ready
        self.kill_message: str | None = None
        self.became_healthy = asyncio.Event()
        if self.healthy or not self.health_checks:
            self.became_healthy.set()
        self._lock = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for index in range(len(self.counters)):
            self._spawn(self._health_loop(index))
        if self.readiness_checks and not self.ready:
            self._spawn(self._readiness())

    def _spawn(self, work: Awaitable[None]) -> None:
        loop = asyncio.ensure_future(work)
        loop.add_done_callback(self._loop_done)
        self._loops.append(loop)

    def _loop_done(self, loop: asyncio.Task[None]) -> None:
        if not loop.cancelled() and loop.exception() is not None:
            log.error("task %s: a check failed", self.task.task_id, exc_info=loop.exception())

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops.clear()

    # ---- health --------------------------------------------------------------------------

    async def _health_loop(self, index: int) -> None:
        counter = self.counters[index]
        check = counter.check
        seconds = self.monitors.seconds
        if check.protocol.mesos_native:
            await asyncio.sleep(self._remaining(check.delay_seconds))
        while True:
            result = await _guarded(self.monitors.probe(self.task, check))
            verdict = counter.record(result.ok, self._elapsed())
            if verdict is Verdict.KILL:
                await self._killed(index, result)
                return
            if verdict in (Verdict.HEALTHY, Verdict.UNHEALTHY):
                await self._update_health(index, result)
            await asyncio.sleep(max(check.interval_seconds, 1) * seconds)

    async def _update_health(self, index: int, result: ProbeResult) -> None:
        async with self._lock:
            healthy = overall_health(self.counters)
            if healthy is not None and healthy != self.healthy:
                self.healthy = healthy
                if healthy:
                    self.became_healthy.set()
                self._save()
                word = "passed" if healthy else "failed"
                message = f"health check {index} {word}: {result.detail}"
                await self.monitors.report(
                    self.task.task_id, healthy, None, REASON_HEALTH_UPDATED, message
                )
            elif self._passed_once() != self.task.passed_once:
                self._save()  # remember a first success: it ends the grace period

    async def _killed(self, index: int, result: ProbeResult) -> None:
        failures = self.counters[index].consecutive_failures
        self.kill_message = (
            f"killed after {failures} consecutive failures of health check {index}: {result.detail}"
        )
        self.healthy = False
        self._save()
        log.warning("task %s: %s", self.task.task_id, self.kill_message)
        self.monitors.kill(self.task.task_id, self.kill_message)

    # ---- readiness ------------------------------------------------------------------------

    async def _readiness(self) -> None:
        await self.became_healthy.wait()
        await asyncio.gather(*(self._until_ready(check) for check in self.readiness_checks))
        async with self._lock:
            self.ready = True
            self._save()
            names = ", ".join(check.name for check in self.readiness_checks)
            await self.monitors.report(
                self.task.task_id, None, True, REASON_CHECK_UPDATED, f"ready ({names})"
            )

    async def _until_ready(self, check: ReadinessCheck) -> None:
        seconds = self.monitors.seconds
        while True:
            result = await _guarded(self.monitors.probe_readiness(self.task, check))
            if result.ok:
                return
            await asyncio.sleep(max(check.interval_seconds, 1) * seconds)

    # ---- time and persistence ---------------------------------------------------------------

    def _elapsed(self) -> float:
        """Check seconds since the task started."""
        return (self.monitors.clock.wall() - self.task.started_at) / self.monitors.seconds

    def _remaining(self, delay_seconds: int) -> float:
        """Wall seconds left of a delay counted from the task's start (resumed tasks)."""
        return max(0.0, (delay_seconds - self._elapsed()) * self.monitors.seconds)

    def _passed_once(self) -> tuple[bool, ...]:
        return tuple(counter.passed_once for counter in self.counters)

    def _save(self) -> None:
        self.task = replace(
            self.task,
            healthy=self.healthy,
            ready=self.ready,
            passed_once=self._passed_once(),
        )
        self.monitors.save(self.task)


async def _guarded(probe: Awaitable[ProbeResult]) -> ProbeResult:
    """A probe that breaks in an unforeseen way fails; the checks go on."""
    try:
        return await probe
    except Exception as error:
        log.exception("a probe broke")
        return ProbeResult(False, f"the probe broke: {error!r}")


def _parse(task: CheckedTask) -> tuple[tuple[HealthCheck, ...], tuple[ReadinessCheck, ...]]:
    try:
        health = parse_health_checks(list(task.health_checks))
    except HealthSpecError as error:
        log.error("task %s: health checks ignored: %s", task.task_id, error)
        health = ()
    try:
        readiness = parse_readiness_checks(list(task.readiness_checks))
    except HealthSpecError as error:
        log.error("task %s: readiness checks ignored: %s", task.task_id, error)
        readiness = ()
    return health, readiness


@dataclass
class HealthMonitors:
    """Every checked task of one agent. The daemon starts a task's checks after
    TASK_RUNNING, pauses them when it kills the task, stops them when the task ended.

    `report` sends a TASK_RUNNING update with healthy/ready; `kill` kills a task that
    failed too often. `seconds` is how long one check second lasts (tests shrink it).
    """

    state_dir: Path
    report: Reporter
    kill: Killer
    clock: Clock = field(default_factory=SystemClock)
    seconds: float = 1.0
    monitors: dict[str, TaskMonitor] = field(default_factory=dict)

    def start(self, task: CheckedTask) -> None:
        """Check a task that just reached TASK_RUNNING (nothing to do without checks)."""
        if not task.has_checks or task.task_id in self.monitors:
            return
        self.save(task)
        self._run(task)

    def resume(self, alive: Sequence[str]) -> None:
        """After an agent restart: check again the tasks still running, forget the others."""
        if not self.state_dir.is_dir():
            return
        for path in self.state_dir.glob("*.json"):
            task_id = path.stem
            if task_id not in alive:
                path.unlink(missing_ok=True)
                continue
            try:
                task = CheckedTask.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.error("task %s: cannot resume its checks: %s", task_id, error)
                continue
            if task_id not in self.monitors:
                self._run(task)

    def _run(self, task: CheckedTask) -> None:
        monitor = TaskMonitor(task, self)
        self.monitors[task.task_id] = monitor
        monitor.start()

    def status(self, task_id: str) -> dict[str, bool | None]:
        """The task's verdicts as its registration entry carries them (None: unknown)."""
        monitor = self.monitors.get(task_id)
        if monitor is None:
            return {"healthy": None, "ready": None}
        return {"healthy": monitor.healthy, "ready": monitor.ready}

    async def pause(self, task_id: str) -> None:
        """Stop probing (the task is being killed); the verdicts stay until `stop`."""
        monitor = self.monitors.get(task_id)
        if monitor is not None:
            await monitor.stop()

    async def stop(self, task_id: str) -> str | None:
        """The task ended: stop and forget its checks. Returns why the checks killed it,
        or None when they did not."""
        monitor = self.monitors.pop(task_id, None)
        if monitor is not None:
            await monitor.stop()
        (self.state_dir / f"{task_id}.json").unlink(missing_ok=True)
        return monitor.kill_message if monitor else None

    async def close(self) -> None:
        """Stop every loop (agent shutdown); the saved state lets a new agent resume."""
        for monitor in list(self.monitors.values()):
            await monitor.stop()
        self.monitors.clear()

    # ---- probes -------------------------------------------------------------------------------

    def _timeout(self, timeout_seconds: int) -> float | None:
        return timeout_seconds * self.seconds if timeout_seconds > 0 else None

    async def probe(self, task: CheckedTask, check: HealthCheck) -> ProbeResult:
        timeout = self._timeout(check.timeout_seconds)
        if check.protocol is HealthProtocol.COMMAND:
            context = CommandContext(
                task.task_id, task.sandbox, task.env, task.user, task.exec_prefix
            )
            return await probe_command(str(check.command), context, timeout)
        port = check.target_port(task.ports)
        if port is None:
            return ProbeResult(False, f"the task has no port with index {check.port_index}")
        host = loopback(check.ip_protocol)
        if check.protocol.is_tcp:
            return await probe_tcp(host, port, timeout)
        target = HttpTarget(check.protocol.scheme, host, port, check.path or "/")
        return await probe_http(target, timeout, ignore_1xx=check.ignore_http1xx)

    async def probe_readiness(self, task: CheckedTask, check: ReadinessCheck) -> ProbeResult:
        if check.port_name not in task.port_names:
            return ProbeResult(False, f"the task has no port named {check.port_name!r}")
        index = task.port_names.index(check.port_name)
        if index >= len(task.ports):
            return ProbeResult(False, f"port {check.port_name!r} was not assigned")
        target = HttpTarget(check.protocol.value.lower(), loopback(), task.ports[index], check.path)
        codes = frozenset(check.http_status_codes_for_ready)
        return await probe_http(target, self._timeout(check.timeout_seconds), codes)

    # ---- persistence --------------------------------------------------------------------------

    def save(self, task: CheckedTask) -> None:
        """Atomically, readable by the agent only (the environment may hold secrets)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path = self.state_dir / f"{task.task_id}.json"
            write_atomic(path, json.dumps(task.to_json()), 0o600)
        except OSError as error:
            reason = describe_os_error(error)
            log.error("task %s: cannot save its check state: %s", task.task_id, reason)
