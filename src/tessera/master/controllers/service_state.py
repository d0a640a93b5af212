"""What the services controllers know: apps, groups, deployments and each app's live tasks.

Loaded from the store at start and changed only after the store has committed the change,
so memory never holds anything a restart would lose. Store kinds: `apps` (app id -> app
JSON), `app_versions` (`<app id>@<version>` -> app JSON, or a tombstone when the app was
deleted at that version), `groups` (explicit groups), `deployments` (running deployments).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from tessera.model.app import AppSpec, InvalidApp, app_from_json, app_to_json
from tessera.model.group import GroupSpec
from tessera.model.task import Task
from tessera.reconcile.deployments import Deployment
from tessera.store import Delete, Operation, Put, StateStore

APPS = "apps"
APP_VERSIONS = "app_versions"
GROUPS = "groups"
DEPLOYMENTS = "deployments"
log = logging.getLogger(__name__)

# Versions kept per app (Marathon's --max_versions default is 50).
MAX_VERSIONS = 50


def version_key(app_id: str, version: str) -> str:
    return f"{app_id}@{version}"


class ServiceState:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.apps: dict[str, AppSpec] = {}
        self.groups: dict[str, GroupSpec] = {}
        self.deployments: dict[str, Deployment] = {}
        # app id -> (version, deleted) in ascending order, tombstones included
        self.versions: dict[str, list[tuple[str, bool]]] = {}
        # app id -> task id -> task, for tasks that have not ended
        self.live_tasks: dict[str, dict[str, Task]] = {}
        # app id -> the latest task that ended badly (Marathon's lastTaskFailure)
        self.last_failure: dict[str, Task] = {}
        self.last_version = ""

    async def load(self) -> None:
        """Everything from the store, replacing what memory held (a master that lost and
        won back the leadership starts from the store, not from what it knew before)."""
        self.apps.clear()
        self.groups.clear()
        self.deployments.clear()
        self.versions.clear()
        self.live_tasks.clear()
        self.last_failure.clear()
        for key, data in (await self.store.load(APPS)).items():
            try:
                app = app_from_json(data)
            except InvalidApp as error:
                # Stored by an older version with laxer rules: say so, keep the rest going.
                log.error("app %s in the store is no longer valid, not managed: %s", key, error)
                continue
            self.apps[app.id] = app
        for data in (await self.store.load(GROUPS)).values():
            group = GroupSpec.from_json(data)
            self.groups[group.id] = group
        for key, data in (await self.store.load(DEPLOYMENTS)).items():
            try:
                deployment = Deployment.from_json(data)
            except (InvalidApp, KeyError, ValueError) as error:
                log.error("deployment %s in the store cannot be read, dropped: %s", key, error)
                continue
            self.deployments[deployment.id] = deployment
        for key, data in (await self.store.load(APP_VERSIONS)).items():
            app_id, _, version = key.rpartition("@")
            self.versions.setdefault(app_id, []).append((version, bool(data.get("deleted"))))
        for entries in self.versions.values():
            entries.sort()
        stamps = [v for entries in self.versions.values() for v, _ in entries]
        self.last_version = max(stamps, default="")

    # ---- tasks -------------------------------------------------------------------------------

    def index_task(self, task: Task) -> None:
        app_id = task.spec.app_id
        if not app_id:
            return
        if task.state.terminal:
            live = self.live_tasks.get(app_id)
            if live is not None:
                live.pop(task.id, None)
                if not live:
                    del self.live_tasks[app_id]
        else:
            self.live_tasks.setdefault(app_id, {})[task.id] = task

    def tasks_of(self, app_id: str) -> list[Task]:
        return list(self.live_tasks.get(app_id, {}).values())

    def knows(self, app_id: str) -> bool:
        """An app this controller manages (or is removing) — other tasks are not ours."""
        if app_id in self.apps:
            return True
        return any(app_id in d.original or app_id in d.target for d in self.deployments.values())

    # ---- deployments -------------------------------------------------------------------------

    def deployment_of(self, app_id: str) -> Deployment | None:
        for deployment in self.deployments.values():
            if app_id in deployment.original or app_id in deployment.target:
                return deployment
        return None

    def deployments_of(self, app_id: str) -> list[Deployment]:
        return [d for d in self.deployments.values() if app_id in d.affected_apps]

    # ---- versions ----------------------------------------------------------------------------

    def app_versions(self, app_id: str) -> list[str]:
        """Versions of an existing app, newest first (Marathon's order)."""
        return [v for v, deleted in reversed(self.versions.get(app_id, [])) if not deleted]

    async def app_at(self, app_id: str, version: str) -> AppSpec | None:
        data = await self.store.get(APP_VERSIONS, version_key(app_id, version))
        if data is None or data.get("deleted"):
            return None
        return app_from_json(data)

    def app_as_of(self, app_id: str, version: str) -> str | None:
        """The version an app had at `version` (None: it did not exist then)."""
        found: str | None = None
        for stamp, deleted in self.versions.get(app_id, []):
            if stamp > version:
                break
            found = None if deleted else stamp
        return found

    # ---- writes (memory follows the store) ---------------------------------------------------

    def operations(
        self,
        apps: Mapping[str, AppSpec | None],
        version: str,
        groups: Mapping[str, GroupSpec | None] = {},
        deployments: Iterable[Deployment] = (),
        finished: Iterable[str] = (),
    ) -> list[Operation]:
        ops: list[Operation] = []
        for app_id, app in apps.items():
            if app is None:
                ops.append(Delete(APPS, app_id))
                ops.append(Put(APP_VERSIONS, version_key(app_id, version), {"deleted": True}))
            else:
                data = app_to_json(app, users=True)
                ops.append(Put(APPS, app_id, data))
                ops.append(Put(APP_VERSIONS, version_key(app_id, version), data))
            ops.extend(self._trim_versions(app_id))
        for group_id, group in groups.items():
            if group is None:
                ops.append(Delete(GROUPS, group_id))
            else:
                ops.append(Put(GROUPS, group_id, group.to_json()))
        for deployment in deployments:
            ops.append(Put(DEPLOYMENTS, deployment.id, deployment.to_json()))
        for deployment_id in finished:
            ops.append(Delete(DEPLOYMENTS, deployment_id))
        return ops

    def _trim_versions(self, app_id: str) -> list[Operation]:
        entries = self.versions.get(app_id, [])
        excess = len(entries) + 1 - MAX_VERSIONS
        return [Delete(APP_VERSIONS, version_key(app_id, v)) for v, _ in entries[: max(0, excess)]]

    def apply(
        self,
        apps: Mapping[str, AppSpec | None],
        version: str,
        groups: Mapping[str, GroupSpec | None] = {},
        deployments: Iterable[Deployment] = (),
        finished: Iterable[str] = (),
    ) -> None:
        for app_id, app in apps.items():
            entries = self.versions.setdefault(app_id, [])
            del entries[: max(0, len(entries) + 1 - MAX_VERSIONS)]
            entries.append((version, app is None))
            if app is None:
                self.apps.pop(app_id, None)
            else:
                self.apps[app_id] = app
        for group_id, group in groups.items():
            if group is None:
                self.groups.pop(group_id, None)
            else:
                self.groups[group_id] = group
        for deployment_id in finished:
            self.deployments.pop(deployment_id, None)
        for deployment in deployments:
            self.deployments[deployment.id] = deployment
        if version > self.last_version:
            self.last_version = version

    async def commit(
        self,
        apps: Mapping[str, AppSpec | None],
        version: str,
        groups: Mapping[str, GroupSpec | None] = {},
        deployments: Iterable[Deployment] = (),
        finished: Iterable[str] = (),
    ) -> None:
        """Make the change durable, then apply it in memory."""
        deployments = list(deployments)
        finished = list(finished)
        await self.store.commit(self.operations(apps, version, groups, deployments, finished))
        self.apply(apps, version, groups, deployments, finished)

    async def save_deployment(self, deployment: Deployment) -> None:
        await self.store.commit([Put(DEPLOYMENTS, deployment.id, deployment.to_json())])
        self.deployments[deployment.id] = deployment

    async def finish_deployment(self, deployment_id: str) -> None:
        await self.store.commit([Delete(DEPLOYMENTS, deployment_id)])
        self.deployments.pop(deployment_id, None)
