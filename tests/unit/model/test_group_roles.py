"""enforceRole on groups and the role an app or a job runs under (DC/OS 2.0's rules)."""

from __future__ import annotations

import pytest

from tessera.model.app import InvalidApp
from tessera.model.group import (
    GroupSpec,
    effective_role,
    enforces_role,
    group_role,
    group_tree,
    job_role,
    keep_enforce_role,
    parse_group,
    role_error,
    top_level_group,
)


def test_new_top_level_groups_enforce_their_role_and_nested_ones_do_not() -> None:
    content = parse_group({"id": "/team-a", "groups": [{"id": "/team-a/web"}]})
    assert content.group.enforce_role
    assert not content.groups[0].enforce_role
    assert content.stated_enforce_role == frozenset()
    off = parse_group({"id": "/public", "enforceRole": False})
    assert not off.group.enforce_role
    assert off.stated_enforce_role == {"/public"}


def test_enforce_role_below_the_top_or_not_a_boolean_is_refused() -> None:
    with pytest.raises(InvalidApp) as nested:
        parse_group({"id": "/team-a", "groups": [{"id": "/team-a/web", "enforceRole": True}]})
    assert nested.value.errors[0].path == "/groups/0/enforceRole"
    with pytest.raises(InvalidApp) as text:
        parse_group({"id": "/team-a", "enforceRole": "yes"})
    assert text.value.errors[0].path == "/enforceRole"
    # What GET shows on nested groups can be sent back.
    parse_group({"id": "/team-a", "groups": [{"id": "/team-a/web", "enforceRole": False}]})


def test_an_update_that_does_not_name_enforce_role_keeps_the_stored_value() -> None:
    stored = {"/old": GroupSpec("/old", enforce_role=False)}
    assert not keep_enforce_role(parse_group({"id": "/old"}), stored).group.enforce_role
    stated = parse_group({"id": "/old", "enforceRole": True})
    assert keep_enforce_role(stated, stored).group.enforce_role
    assert keep_enforce_role(parse_group({"id": "/new"}), stored).group.enforce_role


def test_groups_stored_before_the_field_existed_do_not_enforce() -> None:
    old = GroupSpec.from_json({"id": "/shop", "dependencies": [], "version": ""})
    assert not old.enforce_role
    assert GroupSpec.from_json(GroupSpec("/t", enforce_role=True).to_json()).enforce_role


def test_apps_below_an_enforcing_group_run_under_its_role() -> None:
    groups = {"/team-a": GroupSpec("/team-a", enforce_role=True), "/public": GroupSpec("/public")}
    assert top_level_group("/team-a/x/web") == "/team-a"
    assert top_level_group("/web") is None
    assert effective_role("/team-a/x/web", groups) == "team-a"
    assert effective_role("/team-a/web", groups, requested="*") == "team-a"
    assert effective_role("/public/web", groups) == "*"
    assert effective_role("/public/web", groups, requested="public") == "public"
    assert effective_role("/web", groups) == "*"
    # A top-level group that only exists because of its apps is new: it enforces.
    assert enforces_role("/shop", groups)
    assert effective_role("/shop/web", groups) == "shop"


def test_a_team_cannot_pick_another_teams_role() -> None:
    groups = {"/team-a": GroupSpec("/team-a", enforce_role=True), "/public": GroupSpec("/public")}
    assert role_error("/team-a/web", "team-a", groups) is None
    assert role_error("/team-a/web", "*", groups) is None
    error = role_error("/team-a/web", "team-b", groups)
    assert error is not None and "team-a" in error
    # Without enforcement: *, the group's role, or the one the app already had.
    assert role_error("/public/web", "public", groups) is None
    assert role_error("/public/web", "legacy", groups, previous="legacy") is None
    assert role_error("/public/web", "team-b", groups) is not None
    # An enforcing group forgets the old role.
    assert role_error("/team-a/web", "legacy", groups, previous="legacy") is not None
    assert role_error("/web", "team-a", groups) is not None


def test_jobs_of_a_team_run_under_the_teams_role() -> None:
    groups = {"/team-a": GroupSpec("/team-a", enforce_role=True), "/public": GroupSpec("/public")}
    assert job_role("team-a.nightly", groups) == "team-a"
    assert job_role("team-a", groups, requested="other") == "team-a"
    assert job_role("public.backup", groups) == "*"
    assert job_role("nightly", groups) == "*"
    assert job_role("nightly", groups, requested="batch") == "batch"


def test_the_tree_shows_enforce_role() -> None:
    groups = {"/team-a": GroupSpec("/team-a", enforce_role=True), "/old": GroupSpec("/old")}
    tree = group_tree("/", {}, groups, lambda app: {})
    assert tree["enforceRole"] is False
    shown = {g["id"]: g["enforceRole"] for g in tree["groups"]}
    assert shown == {"/team-a": True, "/old": False}


def test_native_tasks_take_the_role_of_their_group() -> None:
    groups = {"/team-a": GroupSpec("/team-a", enforce_role=True), "/public": GroupSpec("/public")}
    assert group_role("/team-a", groups) == "team-a"
    assert group_role("/team-a/batch", groups) == "team-a"
    assert group_role("/public", groups) == "*"
    assert group_role("/", groups) == "*"
