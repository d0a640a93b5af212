"""The CLI's master client with several master URLs: it moves past dead masters and past
masters that have no leader, but never sends a write twice when it may have applied."""

from __future__ import annotations

import httpx
import pytest
import typer

from tessera.cli.client import MasterClient

NO_LEADER = {"message": "no leading master; try again shortly"}
STORE_DOWN = {"message": "store unavailable, retry later: timeout"}


def client_for(answers: dict[str, httpx.Response | None], seen: list[str]) -> MasterClient:
    def handle(request: httpx.Request) -> httpx.Response:
        host = str(request.url.host)
        seen.append(f"{request.method} {host}")
        answer = answers[host]
        if answer is None:
            raise httpx.ConnectError("refused", request=request)
        return answer

    client = MasterClient("http://m1:5050,http://m2:5050,http://m3:5050")
    client._http = httpx.Client(transport=httpx.MockTransport(handle))
    return client


def test_a_dead_master_and_one_without_leader_are_skipped() -> None:
    seen: list[str] = []
    client = client_for(
        {
            "m1": None,
            "m2": httpx.Response(503, json=NO_LEADER),
            "m3": httpx.Response(201, json={"id": "t"}),
        },
        seen,
    )
    assert client.post("/v1/tasks", {"cmd": "true"}) == {"id": "t"}
    assert seen == ["POST m1", "POST m2", "POST m3"]
    assert client.url == "http://m3:5050"  # asked first next time


def test_a_write_whose_outcome_is_unknown_is_not_sent_again() -> None:
    seen: list[str] = []
    client = client_for(
        {
            "m1": httpx.Response(503, json=STORE_DOWN),
            "m2": httpx.Response(201, json={}),
            "m3": httpx.Response(201, json={}),
        },
        seen,
    )
    with pytest.raises(typer.Exit):  # after printing the master's message
        client.post("/v1/tasks", {"cmd": "true"})
    assert seen == ["POST m1"]
    # A read may be asked again anywhere.
    seen.clear()
    assert client.get("/v1/tasks") == {}
    assert seen == ["GET m1", "GET m2"]
