"""The secret store on the master: sealed values in the StateStore, opened only for a launch.

Kind `secrets`, key the canonical secret path (`/team-a/db`), value the sealed value
(security/secret_box.py: ciphertext, wrapped data key, KEK id) and metadata (author,
description, times). The clear value is never stored, logged, or kept in memory beyond the
call that needs it: `read` for the secrets API, `deliver` for a task's launch message.
Every write goes through one revision-checked commit, so two creates of the same path
cannot both succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tessera.clock import Clock, SystemClock
from tessera.model.secret_refs import owner_path_of_job, space_error
from tessera.model.task import Task
from tessera.security.secret_box import Sealed, SecretBoxError, open_sealed, seal
from tessera.store.base import Delete, Put, StaleRevision, StateStore

log = logging.getLogger(__name__)

KIND = "secrets"
_ATTEMPTS = 5


class SecretExists(Exception):
    pass


class SecretNotFound(LookupError):
    pass


class SecretUnavailable(Exception):
    """A task's secret cannot be delivered (deleted, outside its space, does not open)."""


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret's metadata, as the API shows it besides the value."""

    path: str
    author: str
    description: str
    created: str
    updated: str


class SecretStore:
    def __init__(
        self, store: StateStore, kek: Callable[[], bytes], clock: Clock | None = None
    ) -> None:
        self.store = store
        self.kek = kek
        self.clock = clock or SystemClock()

    # ---- the API's operations ---------------------------------------------------------

    async def create(self, path: str, value: bytes, author: str, description: str = "") -> None:
        """`path` canonical. SecretExists if there is one; ValueTooLarge over 1 MiB."""
        sealed = seal(value, path, self.kek())
        now = self._now()
        record = _record(sealed, SecretInfo(path, author, description, now, now))

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is not None:
                raise SecretExists(path)
            return record

        await self._write(path, change)

    async def update(
        self, path: str, value: bytes | None, description: str | None, author: str
    ) -> None:
        """A new value and/or description; SecretNotFound if there is none."""
        sealed = seal(value, path, self.kek()) if value is not None else None

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                raise SecretNotFound(path)
            info = _info(path, old)
            return _record(
                sealed or Sealed.from_json(old["sealed"]),
                SecretInfo(
                    path,
                    author,
                    description if description is not None else info.description,
                    info.created,
                    self._now(),
                ),
            )

        await self._write(path, change)

    async def read(self, path: str) -> tuple[SecretInfo, bytes]:
        row = await self.store.get(KIND, path)
        if row is None:
            raise SecretNotFound(path)
        return _info(path, row), self._open(path, row)

    async def delete(self, path: str) -> None:
        if await self.store.get(KIND, path) is None:
            raise SecretNotFound(path)
        await self.store.commit([Delete(KIND, path)])

    async def paths(self) -> list[str]:
        """Every secret's canonical path, sorted (the API filters by the caller's grants)."""
        return sorted(await self.store.load(KIND))

    # ---- delivery --------------------------------------------------------------------

    async def deliver(self, task: Task) -> list[dict[str, str]]:
        """The values of `task`'s secrets for its launch message only (the agent channel's
        SecretResolver): `{"env": NAME, "value": ...}` or `{"file": path, "value": ...}`.
        The space rule is checked again: the app or job may predate a rule change."""
        owner = _owner(task)
        delivered: list[dict[str, str]] = []
        for use in task.spec.secrets:
            problem = space_error(use.source, owner)
            if problem:
                raise SecretUnavailable(problem)
            row = await self.store.get(KIND, use.source)
            if row is None:
                raise SecretUnavailable(f"the secret {use.source!r} does not exist")
            try:
                text = self._open(use.source, row).decode()
            except UnicodeDecodeError:
                raise SecretUnavailable(f"the secret {use.source!r} is not UTF-8 text") from None
            target = {"env": use.env} if use.env is not None else {"file": str(use.file)}
            delivered.append({**target, "value": text})
        return delivered

    # ---- inside -----------------------------------------------------------------------

    def _open(self, path: str, row: dict[str, Any]) -> bytes:
        try:
            return open_sealed(Sealed.from_json(row["sealed"]), path, self.kek())
        except (SecretBoxError, KeyError, TypeError) as error:
            # The path only: the row holds nothing readable, and the value nothing to log.
            log.error("secret %s does not open: %s", path, error)
            raise SecretUnavailable(f"the secret {path!r} cannot be decrypted") from None

    async def _write(
        self, path: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> None:
        for _ in range(_ATTEMPTS):
            revision = await self.store.revision()
            record = change(await self.store.get(KIND, path))
            try:
                await self.store.commit([Put(KIND, path, record)], expect_revision=revision)
                return
            except StaleRevision:
                continue  # another write landed in between: decide again on fresh state
        raise StaleRevision(-1, -1)

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock.wall(), UTC).isoformat()


def _record(sealed: Sealed, info: SecretInfo) -> dict[str, Any]:
    return {
        "sealed": sealed.to_json(),
        "author": info.author,
        "description": info.description,
        "created": info.created,
        "updated": info.updated,
    }


def _info(path: str, row: dict[str, Any]) -> SecretInfo:
    return SecretInfo(
        path,
        str(row.get("author", "")),
        str(row.get("description", "")),
        str(row.get("created", "")),
        str(row.get("updated", "")),
    )


def _owner(task: Task) -> str:
    """The service path a task's secrets are checked against: its app, or its job."""
    owner = task.spec.app_id or ""
    return owner if owner.startswith("/") else owner_path_of_job(owner or task.spec.name)
