"""Credentials for tests: the superuser's token a master leaves in its work dir, and users."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from tessera.master.auth_files import ADMIN_TOKEN
from tessera.model.permissions import escaped_rid


class HttpClient(Protocol):
    """httpx.Client and Starlette's TestClient both fit."""

    def put(self, url: str, **kwargs: Any) -> Any: ...

    def post(self, url: str, **kwargs: Any) -> Any: ...


def admin_token(work_dir: Path) -> str:
    """The superuser token the master wrote when it started leading."""
    return (work_dir / ADMIN_TOKEN).read_text().strip()


def auth_headers(work_dir: Path) -> dict[str, str]:
    return {"Authorization": f"token={admin_token(work_dir)}"}


def token_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"token={token}"}


def grant(client: HttpClient, uid: str, permission: str, admin: dict[str, str]) -> None:
    """`permission` as DC/OS writes it: `<rid> <action>[,<action>]`."""
    rid, _, actions = permission.rpartition(" ")
    for action in actions.split(","):
        answer = client.put(
            f"/acs/api/v1/acls/{escaped_rid(rid)}/users/{uid}/{action}", headers=admin
        )
        assert answer.status_code == 204, answer.text


def create_user(
    client: HttpClient,
    uid: str,
    password: str,
    grants: Iterable[str],
    admin: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create a user through the IAM API with these grants; return its auth headers.
    `admin` defaults to the client's own headers (a client made with the superuser's)."""
    headers = admin or {}
    answer = client.put(f"/acs/api/v1/users/{uid}", json={"password": password}, headers=headers)
    assert answer.status_code == 201, answer.text
    for permission in grants:
        grant(client, uid, permission, headers)
    return login(client, uid, password)


def login(client: HttpClient, uid: str, password: str) -> dict[str, str]:
    answer = client.post("/acs/api/v1/auth/login", json={"uid": uid, "password": password})
    assert answer.status_code == 200, answer.text
    return token_headers(answer.json()["token"])
