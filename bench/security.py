"""Security benchmark: what authentication and authorisation cost, through the master's API.

Two real masters side by side in one run, no agents (apps have 0 instances, so only the
API is measured): one as shipped (every request authenticated and authorised, over HTTPS),
one with `--insecure-no-auth` (plain HTTP on loopback). Each gets the same 1,000 apps
(`POST /v2/apps`, timed), then `GET /v2/apps` is timed at that size: sequentially (p50/p99)
and with 8 clients at once (requests/s), as the superuser and as a team user who may read
one team's 100 apps (the list is filtered per app). Last, login throughput under the
hashing cap (argon2id, 2 at once) and `/ping` latency while 16 clients log in.

Goal (issue 10): authenticated and authorised reads within 1.25x of the unauthenticated
p99. The secure master's API is HTTPS (the cluster CA), so this measures auth and TLS
together; the clients keep their connections (keep-alive), as real clients do.

Run: .venv/bin/python bench/security.py [--apps 1000] [--gets 200]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tessera.testing.auth import create_user
from tessera.testing.cluster import Cluster

TEAMS = 10


def app(index: int) -> dict[str, Any]:
    return {"id": f"/team-{index % TEAMS}/app-{index:04d}", "cmd": "sleep 3600", "instances": 0}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


Target = tuple[str, dict[str, str], ssl.SSLContext]  # URL, headers, the CA it trusts


def post_apps(targets: dict[str, Target], count: int) -> dict[str, list[float]]:
    """The same apps to every target, interleaved."""
    clients = {
        name: httpx.Client(base_url=url, headers=headers, timeout=60, verify=trust)
        for name, (url, headers, trust) in targets.items()
    }
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for index in range(count):
            for name, http in clients.items():
                started = time.perf_counter()
                answer = http.post("/v2/apps", json=app(index))
                latencies[name].append(time.perf_counter() - started)
                answer.raise_for_status()
    finally:
        for http in clients.values():
            http.close()
    return latencies


def sequential_gets(readers: dict[str, Target], calls: int) -> dict[str, list[float]]:
    """Calls interleaved between the readers, so that the machine's noise hits all alike."""
    clients = {
        name: httpx.Client(base_url=url, headers=headers, timeout=60, verify=trust)
        for name, (url, headers, trust) in readers.items()
    }
    latencies: dict[str, list[float]] = {name: [] for name in readers}
    try:
        for http in clients.values():
            http.get("/v2/apps").raise_for_status()  # warm: connection, token cache
        for _ in range(calls):
            for name, http in clients.items():
                started = time.perf_counter()
                http.get("/v2/apps").raise_for_status()
                latencies[name].append(time.perf_counter() - started)
    finally:
        for http in clients.values():
            http.close()
    return latencies


async def concurrent_gets(target: Target, calls: int, clients: int) -> float:
    """Requests per second with `clients` connections busy at once."""
    url, headers, trust = target
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits, verify=trust
    ) as http:

        async def share(n: int) -> None:
            for _ in range(n):
                (await http.get("/v2/apps")).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(share(calls // clients) for _ in range(clients)))
        return (calls // clients * clients) / (time.perf_counter() - started)


async def logins(
    url: str, trust: ssl.SSLContext, password: str, count: int, clients: int
) -> tuple[float, list[float]]:
    """(logins per second, /ping latencies meanwhile) with `clients` logging in at once."""
    body = {"uid": "admin", "password": password}
    pings: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=120, verify=trust) as http:

        async def login_share(n: int) -> None:
            for _ in range(n):
                (await http.post("/acs/api/v1/auth/login", json=body)).raise_for_status()

        async def ping() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await http.get("/ping")
                pings.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        pinger = asyncio.create_task(ping())
        started = time.perf_counter()
        await asyncio.gather(*(login_share(count // clients) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        await pinger
    return (count // clients * clients) / elapsed, pings


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="GET rounds; p99s are per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-security-") as root:
        for name in ("secure", "open"):
            (Path(root) / name).mkdir()
        secure = Cluster(Path(root) / "secure")
        open_ = Cluster(Path(root) / "open", insecure=True)
        try:
            secure.start_master()
            open_.start_master()
            plain: Target = (open_.url, {}, open_.ssl_context)
            targets = {
                "no-auth": plain,
                "auth + TLS": (secure.url, secure.headers, secure.ssl_context),
            }
            posts = post_apps(targets, args.apps)
            team = create_user(
                secure.http,
                "bench-team",
                "bench-team-pass",
                ["dcos:service:marathon:marathon:services:/team-1 full"],
            )
            readers = {
                "no-auth": plain,
                "auth + TLS (superuser)": (secure.url, secure.headers, secure.ssl_context),
                "auth + TLS (team user, filtered)": (secure.url, team, secure.ssl_context),
            }
            rounds = [sequential_gets(readers, args.gets) for _ in range(args.rounds)]
            rates = {
                name: asyncio.run(concurrent_gets(target, args.gets, 8))
                for name, target in readers.items()
            }
            password = (secure.root / "master" / "admin-password").read_text().strip()
            login_rate, pings = asyncio.run(
                logins(secure.url, secure.ssl_context, password, 32, 16)
            )
        finally:
            secure.stop()
            open_.stop()

    print(f"POST /v2/apps x {args.apps} (one client, sequential):")
    for name, values in posts.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(f"  {name:28s} p50 {ms(p50):>9s}  p99 {ms(p99):>9s}")
    print(
        f"GET /v2/apps with {args.apps} apps ({args.rounds} rounds of {args.gets} interleaved "
        "calls: medians over rounds; 8 clients for req/s):"
    )
    p99s = {name: statistics.median(percentile(r[name], 0.99) for r in rounds) for name in readers}
    for name in readers:
        p50 = statistics.median(statistics.median(r[name]) for r in rounds)
        ratio = p99s[name] / p99s["no-auth"]
        print(
            f"  {name:32s} p50 {ms(p50):>9s}  p99 {ms(p99s[name]):>9s}  p99 ratio "
            f"{ratio:4.2f}x  {rates[name]:6.1f} req/s"
        )
    print(
        f"logins (argon2id, 2 at once): {login_rate:.1f}/s with 16 clients; /ping meanwhile "
        f"p50 {ms(statistics.median(pings))} p99 {ms(percentile(pings, 0.99))}"
    )
    superuser_ratio = p99s["auth + TLS (superuser)"] / p99s["no-auth"]
    verdict = "met" if superuser_ratio <= 1.25 else "NOT met"
    print(
        f"goal: authenticated p99 over TLS <= 1.25x unauthenticated: {superuser_ratio:.2f}x "
        f"{verdict}"
    )


if __name__ == "__main__":
    main()
