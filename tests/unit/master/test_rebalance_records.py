"""The master's rebalance records and rules: the opt-out label, each app's move rules from
its upgradeStrategy, and a stored rebalance read back as it was written."""

from __future__ import annotations

from tessera.master.controllers.rebalance import Rebalance, Status, move_rules, opted_out
from tessera.model.app import AppSpec, UpgradeStrategy
from tessera.placement.rebalance import Move


def _app(**fields: object) -> AppSpec:
    return AppSpec(id="/shop/web", cmd="serve", instances=4, cpus=0.5, mem=64, **fields)  # type: ignore[arg-type]


def test_the_label_opts_an_app_out() -> None:
    assert not opted_out(_app())
    for value in ("off", "false", "No", " 0 "):
        assert opted_out(_app(labels={"TESSERA_REBALANCE": value}))
    assert not opted_out(_app(labels={"TESSERA_REBALANCE": "on"}))


def test_move_rules_follow_the_apps_upgrade_strategy() -> None:
    app = _app(upgrade_strategy=UpgradeStrategy(0.5, 0.25), constraints=(("hostname", "UNIQUE"),))
    rules = move_rules({app.id: app})[app.id]
    assert rules.instances == 4 and rules.movable
    assert (rules.minimum_health_capacity, rules.maximum_over_capacity) == (0.5, 0.25)
    assert rules.surge == 1 and rules.slack == 2
    assert rules.request.resources.cpus == 0.5 and rules.request.app == "/shop/web"
    assert [c.field for c in rules.request.constraints] == ["hostname"]


def test_a_rebalance_record_reads_back_as_written() -> None:
    waves = (
        (Move("/a", "a.1", "x", "y"), Move("/b", "b.1", "x", "z")),
        (Move("/a", "a.2", "w", "y"),),
    )
    record = Rebalance(
        id="rebalance-1",
        status=Status.CANCELLING,
        created_at=1.0,
        updated_at=2.0,
        waves=waves,
        freed=("x", "w"),
        summary={"agentsBefore": 4, "agentsAfter": 2},
        wave=1,
        wave_started_at=2.0,
        user="alice",
        done=("a.1", "b.1"),
    )
    assert Rebalance.from_json(record.to_json()) == record
    assert record.status.active and not Status.CANCELLED.active
    assert [m.task_id for m in record.moves] == ["a.1", "b.1", "a.2"]
