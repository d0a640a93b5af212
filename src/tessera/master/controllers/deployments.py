"""Starts, advances, cancels and rolls back deployments; the only writer of app definitions.

Every change of apps or groups goes through `deploy`: it checks for deployments in the way
(409 unless forced), plans the steps, and commits the new definitions, their versions and
the deployment in one store transaction before anyone is told. `advance` moves running
deployments on as their steps converge, and fails (and rolls back) those that stall.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from tessera.clock import Clock
from tessera.master.controllers.service_state import ServiceState
from tessera.master.events import EventBus
from tessera.model.app import AppSpec, app_to_json, assign_service_ports, next_version
from tessera.model.group import GroupSpec
from tessera.reconcile.deployments import (
    Deployment,
    Progress,
    action_done,
    overdue,
    plan_steps,
    step_deadline,
    track_progress,
)

log = logging.getLogger(__name__)


class DeploymentConflict(Exception):
    """Apps are locked by running deployments (Marathon answers 409)."""

    def __init__(self, deployment_ids: list[str]) -> None:
        super().__init__(", ".join(deployment_ids))
        self.deployment_ids = deployment_ids


class DeploymentManager:
    def __init__(
        self,
        state: ServiceState,
        events: EventBus,
        clock: Clock,
        wake: Callable[[str | None], None],
    ) -> None:
        self.state = state
        self.events = events
        self.clock = clock
        self.wake = wake

    # ---- starting --------------------------------------------------------------------------

    async def deploy(
        self,
        changes: Mapping[str, AppSpec | None],
        *,
        force: bool = False,
        groups: Mapping[str, GroupSpec | None] | None = None,
        group_id: str = "/",
        rollback_of: str | None = None,
        restart: frozenset[str] = frozenset(),
        user: str | None = None,
    ) -> Deployment:
        """Commit new app definitions (None deletes) and the deployment that applies them;
        apps in `restart` get new instances even if their definition did not change.
        `user` (the acting principal's uid) goes into the apps' versionInfo."""
        state = self.state
        now = self.clock.wall()
        blocking = sorted(
            {d.id for app_id in changes for d in state.deployments_of(app_id)}
            | {d.id for d in state.deployments.values() if set(changes) & set(d.target)}
        )
        if blocking and not force:
            raise DeploymentConflict(blocking)
        version = next_version(now, state.last_version)
        changes = self._with_service_ports(changes)
        stamped = {
            app_id: self._stamp(app_id, app, version, app_id in restart, user or "")
            for app_id, app in changes.items()
        }
        group_changes = dict(groups or {})
        for group_id_changed, group in group_changes.items():
            if group is not None:
                # replace(): keeps enforceRole and whatever else the group says.
                group_changes[group_id_changed] = replace(group, version=version)
        target_apps = {**state.apps}
        for app_id, app in stamped.items():
            if app is None:
                target_apps.pop(app_id, None)
            else:
                target_apps[app_id] = app
        target_groups = {**state.groups}
        for changed_id, group in group_changes.items():
            if group is None:
                target_groups.pop(changed_id, None)
            else:
                target_groups[changed_id] = group
        # Raises CyclicDependencies before anything is written.
        steps = plan_steps(state.apps, target_apps, target_groups)
        deployment = Deployment(
            id=str(uuid.uuid4()),
            version=version,
            steps=steps,
            original={app_id: state.apps.get(app_id) for app_id in stamped},
            target=stamped,
            created_at=now,
            progress=Progress(0, -1, 1 << 30, now),
            rollback_of=rollback_of,
            group_id=group_id,
        )
        canceled = [state.deployments[d] for d in blocking]
        await state.commit(stamped, version, group_changes, [deployment], blocking)
        for old in canceled:
            self._publish_failed(old, "canceled by a forced deployment", now)
        self.events.publish(
            "deployment_info",
            now,
            plan=self.plan_json(deployment),
            currentStep=self._step_json(deployment),
            # Tessera's addition (clients ignore unknown event fields): who started it.
            **({"user": user} if user else {}),
        )
        log.info("deployment %s: %d steps for %s", deployment.id, len(steps), sorted(stamped))
        for touched in (deployment, *canceled):
            self._wake_apps(touched)
        return deployment

    def _stamp(
        self, app_id: str, app: AppSpec | None, version: str, restart: bool, user: str
    ) -> AppSpec | None:
        """The app at its new version; the config version (and who made it) moves only when
        the config changed (or a restart was asked for), so a pure scale restarts nothing."""
        if app is None:
            return None
        old = self.state.apps.get(app_id)
        fresh = app.with_changes(
            version=version,
            last_scaling_at=version,
            last_config_change_at=version,
            last_scaling_by=user,
            last_config_change_by=user,
        )
        if restart:
            return fresh
        if old is not None and old.same_config(fresh):
            return fresh.with_changes(
                last_config_change_at=old.config_version,
                last_config_change_by=old.last_config_change_by,
            )
        if app.last_config_change_at:
            # A stored definition coming back (a rollback): the tasks still running it
            # from before are current, the others get replaced.
            return fresh.with_changes(
                last_config_change_at=app.last_config_change_at,
                last_config_change_by=app.last_config_change_by,
            )
        return fresh

    def _with_service_ports(
        self, changes: Mapping[str, AppSpec | None]
    ) -> dict[str, AppSpec | None]:
        taken = {
            port
            for app_id, app in self.state.apps.items()
            if app_id not in changes
            for port in app.service_ports
        }
        return {
            app_id: (
                assign_service_ports(app, self.state.apps.get(app_id), taken)
                if app is not None
                else None
            )
            for app_id, app in changes.items()
        }

    def _wake_apps(self, deployment: Deployment) -> None:
        for app_id in {*deployment.original, *deployment.target}:
            self.wake(app_id)

    # ---- cancelling ----------------------------------------------------------------------

    async def cancel(self, deployment_id: str, *, force: bool) -> Deployment | None:
        """Stop a deployment; without `force`, deploy the original definitions back."""
        deployment = self.state.deployments[deployment_id]
        now = self.clock.wall()
        if force:
            await self.state.finish_deployment(deployment_id)
            self._publish_failed(deployment, "canceled", now)
            self._wake_apps(deployment)
            return None
        return await self.rollback(deployment, "canceled and rolled back")

    async def rollback(self, deployment: Deployment, reason: str) -> Deployment:
        """Replace `deployment` by one that restores its original definitions."""
        now = self.clock.wall()
        changes: dict[str, AppSpec | None] = {}
        for app_id, before in deployment.original.items():
            changes[app_id] = before
        self._publish_failed(deployment, reason, now)
        return await self.deploy(
            changes, force=True, group_id=deployment.group_id, rollback_of=deployment.id
        )

    def _publish_failed(self, deployment: Deployment, reason: str, now: float) -> None:
        self.events.publish(
            "deployment_step_failure",
            now,
            plan=self.plan_json(deployment),
            currentStep=self._step_json(deployment),
        )
        self.events.publish(
            "deployment_failed",
            now,
            id=deployment.id,
            reason=reason,
            plan=self.plan_json(deployment),
        )
        self.events.publish(
            "group_change_failed",
            now,
            groupId=deployment.group_id,
            version=deployment.version,
            reason=reason,
        )

    # ---- moving on ---------------------------------------------------------------------

    async def advance(self) -> None:
        """Move every running deployment on as far as its apps allow; fail stalled ones."""
        now = self.clock.wall()
        ordered = sorted(self.state.deployments.values(), key=lambda d: d.created_at)
        for deployment in ordered:
            if deployment.id not in self.state.deployments:
                continue
            try:
                await self._advance_one(deployment, now)
            except Exception:
                # One broken deployment must not stop the others (nor the apps' upkeep).
                log.exception("deployment %s: cannot advance it now", deployment.id)

    async def _advance_one(self, deployment: Deployment, now: float) -> None:
        moved = False
        while not deployment.done and all(
            action_done(action, deployment, self.state.tasks_of(action.app_id), now)
            for action in deployment.current_actions
        ):
            self.events.publish(
                "deployment_step_success",
                now,
                plan=self.plan_json(deployment),
                currentStep=self._step_json(deployment),
            )
            deployment = deployment.with_changes(current_step=deployment.current_step + 1)
            moved = True
        if deployment.done:
            await self.state.finish_deployment(deployment.id)
            # With the plan (as Marathon 1.x): who may see the event depends on its apps.
            self.events.publish(
                "deployment_success", now, id=deployment.id, plan=self.plan_json(deployment)
            )
            self.events.publish(
                "group_change_success", now, groupId=deployment.group_id, version=deployment.version
            )
            log.info("deployment %s finished", deployment.id)
            self._wake_apps(deployment)
            return
        tasks = {a.app_id: self.state.tasks_of(a.app_id) for a in deployment.current_actions}
        progress = track_progress(deployment, tasks, now)
        deployment = deployment.with_changes(progress=progress)
        if moved:
            await self.state.save_deployment(deployment)
            self._wake_apps(deployment)
        else:
            self.state.deployments[deployment.id] = deployment
        if overdue(deployment, now):
            reason = (
                f"no progress for {step_deadline(deployment):g} s "
                f"(upgradeStrategy.progressDeadlineSeconds) in step "
                f"{deployment.current_step + 1} of {len(deployment.steps)}"
            )
            log.warning("deployment %s failed: %s", deployment.id, reason)
            if deployment.rollback_of is None:
                await self.rollback(deployment, reason)
            else:
                await self.state.finish_deployment(deployment.id)
                self._publish_failed(deployment, reason, now)

    # ---- JSON ----------------------------------------------------------------------------

    def plan_json(self, deployment: Deployment) -> dict[str, Any]:
        """Marathon's DeploymentPlan for events: original and target roots with the apps."""

        def root(apps: Mapping[str, AppSpec | None]) -> dict[str, Any]:
            return {
                "id": "/",
                "apps": [app_to_json(a) for a in apps.values() if a is not None],
                "groups": [],
                "pods": [],
                "dependencies": [],
                "version": deployment.version,
            }

        return {
            "id": deployment.id,
            "version": deployment.version,
            "original": root(deployment.original),
            "target": root(deployment.target),
            "steps": [{"actions": [a.to_json() for a in step]} for step in deployment.steps],
        }

    @staticmethod
    def _step_json(deployment: Deployment) -> dict[str, Any]:
        return {
            "actions": [
                {"action": a.kind.value, "type": a.kind.value, "app": a.app_id}
                for a in deployment.current_actions
            ]
        }
