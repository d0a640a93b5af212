"""Three masters on etcd losing their leader: `kill -9` under a stream of writes, and a
leader paused (SIGSTOP) past its lease that wakes up still believing it leads.

Real etcd, master and agent processes. A master exits when its term ends (its supervisor
starts it again); the tests play the supervisor."""

from __future__ import annotations

import itertools
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tessera.testing.cluster import task_processes, wait_for
from tessera.testing.etcd import MISSING_REASON, EtcdCluster, etcd_binary
from tessera.testing.ha_cluster import MasterGroup

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=MISSING_REASON)

TINY = {"cpus": 0.01, "mem": 8}
LEASE = 3
EXIT_LEADERSHIP_LOST = 75


@pytest.fixture
def group(tmp_path: Path) -> Iterator[MasterGroup]:
    with EtcdCluster(tmp_path / "etcd", size=1) as etcd:
        made = MasterGroup(tmp_path / "masters", etcd.url, size=3, lease=LEASE)
        try:
            made.start()
            made.wait_leader()
            made.start_agent()
            yield made
        except BaseException:
            print(made.logs())
            raise
        finally:
            made.stop()


@dataclass
class Answer:
    kind: str  # "task" or "app"
    name: str  # the task's name or the app's id
    sent_at: float
    status: int  # 0: no answer
    served_by: str = ""
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


class Writer(threading.Thread):
    """Posts one-off tasks and apps as fast as the masters answer, rotating over `urls`
    (as a client with several master URLs would), and records every answer."""

    def __init__(
        self, urls: list[str], prefix: str, headers: dict[str, str], verify: ssl.SSLContext
    ) -> None:
        super().__init__(daemon=True)
        self.verify = verify
        self.urls = urls
        self.headers = headers
        self.prefix = prefix
        self.answers: list[Answer] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5, headers=self.headers, verify=self.verify) as client:
            for n in itertools.count(1):
                if self.stopping.is_set():
                    return
                self.answers.append(write(client, self.urls[n % len(self.urls)], self.prefix, n))
                if not self.answers[-1].status:
                    time.sleep(0.05)

    def acknowledged(self, kind: str) -> list[Answer]:
        return [a for a in self.answers if a.kind == kind and a.acknowledged]


def write(client: httpx.Client, url: str, prefix: str, n: int) -> Answer:
    sent_at = time.monotonic()
    if n % 4 == 0:
        app_id = f"/{prefix}/app-{n}"
        kind, name = "app", app_id
        request = client.build_request(
            "POST", url + "/v2/apps", json={"id": app_id, "cmd": "sleep 600", **TINY}
        )
    else:
        kind, name = "task", f"{prefix}-{n}"
        request = client.build_request(
            "POST", url + "/v1/tasks", json={"name": name, "cmd": "sleep 600", **TINY}
        )
    try:
        response = client.send(request)
    except httpx.HTTPError:
        return Answer(kind, name, sent_at, 0)
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    served_by = response.headers.get("x-marathon-leader", "")
    return Answer(kind, name, sent_at, response.status_code, served_by, body)


def stored(group: MasterGroup) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Tasks by ID and app IDs, as the current leader reads them from the store."""
    tasks = {t["id"]: t for t in group.get("/v1/tasks")["tasks"]}
    apps = {a["id"] for a in group.get("/v2/apps")["apps"]}
    return tasks, apps


def running_ids(group: MasterGroup) -> set[str]:
    tasks = group.get("/v1/tasks")["tasks"]
    return {t["id"] for t in tasks if t["state"] == "TASK_RUNNING"}


def trees(task_id: str) -> list[psutil.Process]:
    """The roots of the task's process trees: one per launch."""
    processes = task_processes(task_id)
    found = {p.pid for p in processes}
    return [p for p in processes if p.ppid() not in found]


def pids(task_ids: set[str]) -> dict[str, frozenset[int]]:
    """Each task's root process: a task launched again would have a new one (its
    children may still be starting, so they are not compared)."""
    return {task_id: frozenset(p.pid for p in trees(task_id)) for task_id in task_ids}


def settled(group: MasterGroup, count: int) -> tuple[set[str], dict[str, frozenset[int]]]:
    """At least `count` running tasks, each showing its process (a task that has just
    started may not yet), and their root processes."""

    def seen() -> tuple[set[str], dict[str, frozenset[int]]] | None:
        running = running_ids(group)
        found = pids(running)
        return (running, found) if len(running) >= count and all(found.values()) else None

    found: tuple[set[str], dict[str, frozenset[int]]] = wait_for(
        seen, 30, f"{count} running tasks and their processes"
    )
    return found


def assert_acknowledged_present(group: MasterGroup, writer: Writer) -> None:
    tasks, apps = stored(group)
    task_ids = {a.body.get("id") for a in writer.acknowledged("task")}
    missing = sorted(str(t) for t in task_ids if t not in tasks)
    assert missing == [], f"acknowledged tasks lost: {missing}"
    lost_apps = sorted({a.name for a in writer.acknowledged("app")} - apps)
    assert lost_apps == [], f"acknowledged apps lost: {lost_apps}"


def test_kill9_of_the_leader_under_writes(group: MasterGroup) -> None:
    """Pass: a new leader within 10 s, no task restarted, every acknowledged write kept."""
    writer = Writer(group.urls, "w", group.headers, group.ssl_context)
    writer.start()
    try:
        wait_for(lambda: len(writer.acknowledged("task")) >= 20, 30, "20 acknowledged tasks")
        running, before = settled(group, 10)
        old = group.wait_leader()
        acknowledged_then = len([a for a in writer.answers if a.acknowledged])
        daemon = group.masters[old]
        assert daemon is not None
        daemon.kill9()
        killed_at = time.monotonic()
        others = [i for i in range(len(group.urls)) if i != old]
        new = group.wait_leader(others, timeout=15)
        failover = time.monotonic() - killed_at
        print(f"new leader master-{new} after {failover:.1f}s")
        assert failover < 10, f"no new leader within 10 s ({failover:.1f}s)"
        wait_for(
            lambda: len([a for a in writer.answers if a.acknowledged]) >= acknowledged_then + 20,
            30,
            "writes to be accepted again",
        )
        group.restart(old)  # as its supervisor would; it follows now
    finally:
        writer.stopping.set()
        writer.join(30)
    assert any(not a.acknowledged for a in writer.answers), "no write failed: proved nothing"
    assert group.wait_leader() == new
    assert_acknowledged_present(group, writer)
    wait_for(lambda: group.agent_registered("agent-1"), 30, "the agent to follow the leader")
    acknowledged_tasks = {str(a.body["id"]) for a in writer.acknowledged("task")}
    wait_for(lambda: acknowledged_tasks <= running_ids(group), 60, "acknowledged tasks to run")
    assert pids(running) == before, "a task running at the crash was restarted"
    for task_id in acknowledged_tasks:
        assert len(trees(task_id)) == 1, f"{task_id} was launched more than once"


def test_paused_leader_accepts_no_write_after_its_term(group: MasterGroup) -> None:
    """Pass: of the writes sent to a leader while it was paused past its lease, none is
    accepted by it (it answers 503, or forwards to the new leader); nothing it refused is in
    the store, and everything acknowledged is. Meanwhile the agent follows the new leader
    and no task is restarted."""
    old = group.wait_leader()
    old_url = group.urls[old]
    daemon = group.masters[old]
    assert daemon is not None
    # Writes to the leader alone, and through the other masters (forwarded to whoever
    # leads), from before the pause to after it.
    others = [i for i in range(len(group.urls)) if i != old]
    direct = Writer([old_url], "direct", group.headers, group.ssl_context)
    spread = Writer([group.urls[i] for i in others], "spread", group.headers, group.ssl_context)
    direct.start()
    spread.start()
    late: list[Answer] = []
    late_threads: list[threading.Thread] = []
    try:
        wait_for(lambda: len(direct.acknowledged("task")) >= 10, 30, "10 writes to the leader")
        running, before = settled(group, 5)
        daemon.signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        new = group.wait_leader(others, timeout=20)
        print(f"master-{new} leads {time.monotonic() - paused_at:.1f}s after the pause")

        # Writes sent to the paused leader now wait in its socket until it wakes up.
        def late_write(n: int) -> None:
            with httpx.Client(
                timeout=20, headers=group.headers, verify=group.ssl_context
            ) as client:
                late.append(write(client, old_url, "late", n))

        for n in range(1, 9):
            thread = threading.Thread(target=late_write, args=(n,), daemon=True)
            thread.start()
            late_threads.append(thread)
        spread_then = len(spread.acknowledged("task"))
        wait_for(
            lambda: len(spread.acknowledged("task")) >= spread_then + 5,
            20,
            "the new leader to write",
        )
        # The agent stops waiting for the frozen master's pongs and follows the new leader.
        agent = group.agents[0]
        wait_for(
            lambda: f"registered with {group.urls[new]}" in agent.log(),
            25,
            "the agent to leave the paused leader",
        )
        print(f"the agent follows master-{new} {time.monotonic() - paused_at:.1f}s after")
        time.sleep(max(0.0, LEASE + 1.0 - (time.monotonic() - paused_at)))
        daemon.signal(signal.SIGCONT)
        assert daemon.process is not None
        code = daemon.process.wait(20)
        assert code == EXIT_LEADERSHIP_LOST, f"the deposed leader exited with {code}"
        for thread in late_threads:
            thread.join(20)
    finally:
        direct.stopping.set()
        spread.stopping.set()
        direct.join(30)
        spread.join(30)

    # Everything the old leader received after it was paused: never served by itself.
    after_pause = [a for a in [*direct.answers, *late] if a.sent_at > paused_at]
    assert len(after_pause) >= 8
    print("sent to the paused leader:", sorted((a.status, a.served_by) for a in after_pause))
    accepted_by_old = [a for a in after_pause if a.acknowledged and a.served_by == old_url]
    assert accepted_by_old == [], f"the deposed leader accepted {accepted_by_old}"
    assert any(a.status == 503 for a in after_pause), "nothing reached the old leader"
    group.restart(old)
    assert group.wait_leader() == new
    assert pids(running) == before, "a task running before the pause was restarted"
    writers = Writer([], "", {}, group.ssl_context)
    writers.answers = [*direct.answers, *spread.answers, *late]
    assert_acknowledged_present(group, writers)
    # What the old leader refused was not half-applied either.
    tasks, apps = stored(group)
    names = {t["name"] for t in tasks.values()}
    refused = [a for a in after_pause if a.status == 503]
    leaked = [a.name for a in refused if a.name in names or a.name in apps]
    assert leaked == [], f"writes refused with 503 are in the store: {leaked}"
