"""`/v2/queue`: instances waiting to run, with their backoff delay and, from the placement
engine, how many agents turned them down for which reason."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tessera.master.api.marathon_v2 import app_json, not_found, services
from tessera.master.auth import can_read_app
from tessera.master.controllers.services import ServicesController
from tessera.master.events import timestamp
from tessera.model.app import AppSpec, canonical_path
from tessera.model.task import TaskState

router = APIRouter()

# A role's quota first (it holds the instance whatever the agents offer: Mesos would not
# even offer), then Marathon's reasons in its order; the engine's others follow.
_REASON_ORDER = (
    "QuotaExceeded",
    "UnfulfilledRole",
    "UnfulfilledConstraint",
    "NoCorrespondingReservationFound",
    "AgentMaintenance",
    "InsufficientCpus",
    "InsufficientMemory",
    "InsufficientDisk",
    "InsufficientGpus",
    "InsufficientPorts",
    "DeclinedScarceResources",
)


@router.get("/v2/queue")
async def queue(request: Request) -> dict[str, Any]:
    controller = services(request)
    entries = []
    for app_id in sorted(controller.state.apps):
        if not can_read_app(request, app_id):
            continue
        entry = _entry(controller, controller.state.apps[app_id])
        if entry is not None:
            entries.append(entry)
    return {"queue": entries}


def _entry(controller: ServicesController, app: AppSpec) -> dict[str, Any] | None:
    queued = [t for t in controller.state.tasks_of(app.id) if t.state is TaskState.TASK_QUEUED]
    waiting = controller.waiting.get(app.id)
    if not queued and waiting is None:
        return None
    now = controller.master.clock.wall()
    count = len(queued) + (waiting.count if waiting else 0)
    since = min([t.created_at for t in queued] + ([waiting.since] if waiting else []))
    left = 0.0
    if waiting is not None and waiting.allowed_at is not None:
        left = max(0.0, waiting.allowed_at - now)
    reasons: dict[str, int] = {}
    for task in queued:
        for reason, agents in task.queued_reasons.items():
            reasons[reason] = max(reasons.get(reason, 0), agents)
    agents = len(controller.master.state.agents)
    ordered = [r for r in _REASON_ORDER if r in reasons]
    ordered += sorted(r for r in reasons if r not in _REASON_ORDER)
    declined = max(reasons.values(), default=0)
    return {
        # With the last failure: why the instances wait (an image that cannot be pulled).
        "app": app_json(controller, app, {"app.lastTaskFailure"}),
        "count": count,
        "delay": {"timeLeftSeconds": round(left), "overdue": left == 0.0},
        "since": timestamp(since),
        "processedOffersSummary": {
            "processedOffersCount": agents,
            "unusedOffersCount": declined,
            "lastUnusedOfferAt": timestamp(now) if declined else None,
            "rejectSummaryLastOffers": [
                {"reason": r, "declined": reasons[r], "processed": agents} for r in ordered
            ],
        },
        "lastUnusedOffers": [],
    }


@router.delete("/v2/queue/{app_id:path}/delay", status_code=204)
async def reset_delay(app_id: str, request: Request) -> Response:
    controller = services(request)
    app_id = canonical_path(app_id)
    if app_id not in controller.state.apps:
        raise not_found(app_id)
    controller.reset_delay(app_id)
    return Response(status_code=204)
