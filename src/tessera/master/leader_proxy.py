"""A master that does not lead forwards every API request to the one that does, as
Marathon's leader proxy did: clients may talk to any master and get the leader's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Answered by every master itself: liveness and "who leads" (reads only: abdicating with
# DELETE /v2/leader goes to the leader), and the CA with this master's own agent port.
LOCAL_PATHS = frozenset(
    {
        "/ping",
        "/ca/dcos-ca.crt",
        "/v1/leader",
        "/v2/leader",
        "/marathon/v2/leader",
        "/service/marathon/v2/leader",
        "/openapi.json",
        "/docs",
    }
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)
FORWARDED_BY = "x-tessera-forwarded-by"
# Marathon's leader proxy defaults: a leader that is paused or cut off must not hold the
# client (and this master's connection) for longer; event streams may stay quiet forever.
FORWARD_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
STREAM_TIMEOUT = httpx.Timeout(10.0, connect=5.0, read=None)
# As Marathon: every answer names the master that served it, forwarded or not.
SERVED_BY = b"x-marathon-leader"


class LeaderProxy:
    """ASGI middleware. `leader_url()` returns None while this master leads (requests are
    served here), the leader's URL while another leads, and "" while no one leads."""

    def __init__(
        self,
        app: ASGIApp,
        leader_url: Callable[[], str | None],
        self_url: Callable[[], str],
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.app = app
        self.leader_url = leader_url
        self.self_url = self_url
        # Owned by the caller when given (the master's app closes it at shutdown).
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=FORWARD_TIMEOUT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["path"] in LOCAL_PATHS and scope["method"] in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        leader = self.leader_url()
        if leader is None:
            await self.app(scope, receive, self._marked(send))
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if not leader or FORWARDED_BY in headers:
            # No leader yet, or a loop between two masters that each think the other leads.
            await _answer(send, 503, b'{"message": "no leading master; try again shortly"}')
            return
        await self._forward(leader, scope, receive, send, headers)

    def _marked(self, send: Send) -> Send:
        served_by = self.self_url().encode()

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (SERVED_BY, served_by)]
                message = {**message, "headers": headers}
            await send(message)

        return send_marked

    async def _forward(
        self, leader: str, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
    ) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode()
        url = leader.rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        outgoing = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        outgoing[FORWARDED_BY] = self.self_url()
        stream = "text/event-stream" in headers.get("accept", "")
        request = self._http.build_request(
            scope["method"],
            url,
            headers=outgoing,
            content=body,
            timeout=STREAM_TIMEOUT if stream else FORWARD_TIMEOUT,
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as error:
            text = f'{{"message": "leader {leader} unreachable: {type(error).__name__}"}}'
            await _answer(send, 503, text.encode())
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k.encode(), v.encode())
                        for k, v in response.headers.items()
                        if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in _chunks(response):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        yield chunk


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
