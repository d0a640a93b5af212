"""The permission model: DC/OS rids, segment-wise coverage, refusals, routes, escalation, teams."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.model.permissions import (
    ACS,
    ADMIN_LEADER,
    AGENTS,
    JOBS,
    METHOD_EXCEPTIONS,
    PLANNED_ROUTES,
    ROUTES,
    SECRETS,
    SECRETS_LIST,
    SERVICES,
    Action,
    Grant,
    Grants,
    Ids,
    InvalidRid,
    Listing,
    Need,
    PathRefused,
    Principal,
    PrincipalKind,
    Rid,
    UnknownRoute,
    action_for_method,
    allowed,
    grant,
    job_rid,
    may_grant,
    parse_grant,
    parse_rid,
    permitted,
    quota_rid,
    required,
    route_rule,
    sandbox_rid,
    secret_rid,
    service_path,
    service_rid,
    task_user_rid,
    team_groups,
    visible,
)

S = SERVICES + ":"
QUOTA = "dcos:mesos:master:quota:role"
USER = "dcos:mesos:master:task:user"
APP = "/v2/apps/{app_id:path}"
GROUP = "/v2/groups/{group_id:path}"


def grants(*specs: str) -> Grants:
    return Grants.of(parse_grant(spec) for spec in specs)


# ---- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family", "tail"),
    [
        ("dcos:service:marathon:marathon:services:/team-a", SERVICES, "/team-a"),
        ("dcos:service:marathon:marathon:services:/team-a/web", SERVICES, "/team-a/web"),
        ("dcos:service:marathon:marathon:services:/", SERVICES, None),
        ("dcos:service:marathon:marathon:services", SERVICES, None),
        ("dcos:service:marathon:marathon:services:/team-a/", SERVICES, "/team-a"),
        ("dcos:service:metronome:metronome:jobs:team-a", JOBS, "team-a"),
        ("dcos:service:metronome:metronome:jobs:team-a.nightly", JOBS, "team-a.nightly"),
        ("dcos:service:metronome:metronome:jobs", JOBS, None),
        ("dcos:service:marathon:marathon:admin:leader", ADMIN_LEADER, None),
        ("dcos:mesos:master:agent", AGENTS, None),
        ("dcos:mesos:master:quota:role:team-a", "dcos:mesos:master:quota:role", "team-a"),
        ("dcos:mesos:master:task:user:root", "dcos:mesos:master:task:user", "root"),
        ("dcos:mesos:agent:sandbox:app_id:/team-a", "dcos:mesos:agent:sandbox:app_id", "/team-a"),
        ("dcos:secrets:default:/team-a/db_password", SECRETS, "/team-a/db_password"),
        ("dcos:secrets:default", SECRETS, None),
        ("dcos:secrets:list:default:/team-a", SECRETS_LIST, "/team-a"),
        ("dcos:adminrouter:acs", ACS, None),
        ("dcos:superuser", "dcos:superuser", None),
        # DC/OS rids no route needs: stored as opaque, exact rids.
        ("dcos:adminrouter:service:marathon", "dcos:adminrouter:service:marathon", None),
    ],
)
def test_parse_rid(text: str, family: str, tail: str | None) -> None:
    assert parse_rid(text) == Rid(family, tail)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "superuser",
        "dcos",
        "dcos:service:marathon:marathon:services:/team-a/../team-b",
        "dcos:service:marathon:marathon:services:/Team-A",
        "dcos:service:marathon:marathon:services:/team-a//web",
        "dcos:service:marathon:marathon:services:/team-a%2Fweb",
        "dcos:service:marathon:marathon:services/team-a",
        "dcos:service:metronome:metronome:jobs:team-a..x",
        "dcos:service:metronome:metronome:jobs:Team-a",
        "dcos:mesos:master:task:user:ro ot",
        "dcos:superuser\n",
        "dcos:service:marathon:marathon:services:/tеam-a",  # Cyrillic e
    ],
)
def test_invalid_rids(text: str) -> None:
    with pytest.raises(InvalidRid):
        parse_rid(text)


def test_rid_prints_canonically() -> None:
    assert str(parse_rid(S + "/team-a/")) == S + "/team-a"
    assert str(parse_rid(S + "/")) == SERVICES


@pytest.mark.parametrize(
    ("text", "rid", "actions"),
    [
        (S + "/team-a full", S + "/team-a", {Action.FULL}),
        (S + "/team-a read,update", S + "/team-a", {Action.READ, Action.UPDATE}),
        ("dcos:superuser full", "dcos:superuser", {Action.FULL}),
    ],
)
def test_parse_grant(text: str, rid: str, actions: set[Action]) -> None:
    assert parse_grant(text) == Grant(parse_rid(rid), frozenset(actions))


@pytest.mark.parametrize("text", [S + "/team-a", S + "/team-a admin", S + "/team-a ,"])
def test_invalid_grants(text: str) -> None:
    with pytest.raises(InvalidRid):
        parse_grant(text)


# ---- allowed ----------------------------------------------------------------------------------

TEAM_A_FULL = (S + "/team-a full",)
CASES = [
    # services: segment-wise prefixes
    (TEAM_A_FULL, "read", S + "/team-a", True),
    (TEAM_A_FULL, "delete", S + "/team-a/web", True),
    (TEAM_A_FULL, "update", S + "/team-a/x/y", True),
    (TEAM_A_FULL, "full", S + "/team-a/x", True),
    (TEAM_A_FULL, "read", S + "/team-ab", False),
    (TEAM_A_FULL, "read", S + "/team-ab/x", False),
    (TEAM_A_FULL, "read", S + "/team-a-evil", False),
    (TEAM_A_FULL, "read", S + "/team-a.x", False),
    (TEAM_A_FULL, "read", S + "/team-b/web", False),
    (TEAM_A_FULL, "read", S + "/", False),
    (TEAM_A_FULL, "read", SERVICES, False),
    ((S + "/team-a/web read",), "read", S + "/team-a", False),
    ((S + "/ read",), "read", S + "/anything/below", True),
    ((SERVICES + " read",), "read", S + "/anything", True),
    ((SERVICES + " read",), "read", SERVICES, True),
    # actions
    ((S + "/team-a read",), "update", S + "/team-a/web", False),
    ((S + "/team-a read,update",), "update", S + "/team-a/web", True),
    ((S + "/team-a create,read,update,delete",), "full", S + "/team-a", False),
    ((S + "/team-a read", S + "/team-a update"), "update", S + "/team-a/x", True),
    # superuser: any action on it allows everything
    (("dcos:superuser read",), "full", S + "/", True),
    (("dcos:superuser read",), "delete", "dcos:mesos:master:agent", True),
    # Metronome job ids are dotted
    (("dcos:service:metronome:metronome:jobs:team-a full",), "read", JOBS + ":team-a", True),
    (("dcos:service:metronome:metronome:jobs:team-a full",), "read", JOBS + ":team-a.x.y", True),
    (("dcos:service:metronome:metronome:jobs:team-a full",), "read", JOBS + ":team-ab", False),
    (("dcos:service:metronome:metronome:jobs:team-a full",), "read", JOBS + ":team-ab.x", False),
    (("dcos:service:metronome:metronome:jobs:team-a full",), "read", JOBS, False),
    ((JOBS + " read",), "read", JOBS + ":any.job", True),
    # families never cover each other
    (TEAM_A_FULL, "read", JOBS + ":team-a", False),
    (TEAM_A_FULL, "read", "dcos:mesos:agent:sandbox:app_id:/team-a", False),
    # exact rids
    ((ADMIN_LEADER + " full",), "update", ADMIN_LEADER, True),
    ((ADMIN_LEADER + " full",), "read", "dcos:service:marathon:marathon:admin:config", False),
    ((QUOTA + ":team-a read",), "read", QUOTA + ":team-a", True),
    ((QUOTA + ":team-a read",), "read", QUOTA + ":team-ab", False),
    ((QUOTA + " read",), "read", QUOTA + ":x", True),
    ((USER + ":nobody create",), "create", USER + ":root", False),
    (("dcos:adminrouter:service:marathon full",), "read", S + "/team-a", False),
    # secrets: paths too
    ((SECRETS + ":/team-a full",), "read", SECRETS + ":/team-a/db", True),
    ((SECRETS + ":/team-a full",), "read", SECRETS + ":/team-ab/db", False),
    ((SECRETS + " read",), "read", SECRETS + ":/x/y", True),
    ((SECRETS + ":/team-a full",), "read", SECRETS_LIST + ":/team-a", False),
    # nothing held
    ((), "read", S + "/team-a", False),
]  # fmt: skip


@pytest.mark.parametrize(("held", "action", "rid", "expected"), CASES)
def test_allowed(held: tuple[str, ...], action: str, rid: str, expected: bool) -> None:
    assert allowed(grants(*held), action, rid) is expected
    assert allowed(grants(*held), Action(action), parse_rid(rid)) is expected


def test_allowed_takes_a_principal_or_plain_grants() -> None:
    alice = Principal.build("alice", PrincipalKind.USER, [grant(S + "/team-a", "read")])
    assert allowed(alice, "read", S + "/team-a/web")
    assert allowed([grant(S + "/team-a", "read")], "read", S + "/team-a/web")
    assert not allowed(alice, "read", S + "/team-b")


def test_principal_holds_its_groups_grants() -> None:
    bob = Principal.build(
        "bob",
        PrincipalKind.SERVICE,
        own=[grant(JOBS + ":team-b", "read")],
        group_grants={"team-b-viewers": [grant(S + "/team-b", "read")], "empty": []},
    )
    assert bob.groups == frozenset({"team-b-viewers", "empty"})
    assert allowed(bob, "read", S + "/team-b/web")
    assert allowed(bob, "read", JOBS + ":team-b.nightly")
    assert not allowed(bob, "update", S + "/team-b/web")
    assert not bob.grants.superuser
    assert Principal.build(
        "root", PrincipalKind.USER, [grant("dcos:superuser", "full")]
    ).grants.superuser


def test_grants_merge_per_rid() -> None:
    merged = Grants.of([grant(S + "/a", "read"), grant(S + "/a/", "update")])
    assert merged.items == frozenset({grant(S + "/a", "read", "update")})


# ---- paths refused, never repaired ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/team-a/../team-b/web",
        "team-a/..",
        "/team-a/./web",
        "/team-a%2Fweb",
        "/team-a/%2e%2e/team-b",
        "%2e%2e",
        "//team-b/web",
        "/team-a//web",
        "/Team-B",
        "/team-a/Web",
        "/team-a/web\n",
        "/tеam-a",  # Cyrillic e
        "/team-a/-web",
        "/team-a/web-",
        "/team a",
        "/team-a/*",
        "/team-a/we_b",
    ],
)
def test_paths_are_refused(raw: str) -> None:
    with pytest.raises(PathRefused):
        service_path(raw)
    with pytest.raises(PathRefused):
        service_rid(raw)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("team-a/web", "/team-a/web"),
        ("/team-a/web/", "/team-a/web"),
        ("/team-a/web.v2", "/team-a/web.v2"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_paths_are_normalised(raw: str, canonical: str) -> None:
    assert service_path(raw) == canonical


@pytest.mark.parametrize("raw", ["team-a..x", ".team-a", "team-a.", "Team-a", "team_a", "a/b", ""])
def test_job_ids_are_refused(raw: str) -> None:
    with pytest.raises(PathRefused):
        job_rid(raw) if raw else job_rid("%")


def test_rid_helpers() -> None:
    assert service_rid("/") == Rid(SERVICES)
    assert service_rid("team-a/web") == Rid(SERVICES, "/team-a/web")
    assert job_rid("team-a.nightly") == Rid(JOBS, "team-a.nightly")
    assert sandbox_rid("/team-a/web") == parse_rid("dcos:mesos:agent:sandbox:app_id:/team-a/web")
    assert secret_rid("team-a/db") == parse_rid(SECRETS + ":/team-a/db")
    assert quota_rid("team-a") == parse_rid("dcos:mesos:master:quota:role:team-a")
    assert task_user_rid("root") == parse_rid("dcos:mesos:master:task:user:root")


# ---- property: a grant on /a covers /a and /a/... only ------------------------------------------

_SEGMENTS = st.text(alphabet=string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=6)
_VALID = re.compile(
    r"(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])"
)


@given(
    granted=st.lists(_SEGMENTS, min_size=1, max_size=3),
    asked=st.lists(_SEGMENTS, min_size=0, max_size=5),
    action=st.sampled_from(list(Action)),
)
def test_a_grant_never_reaches_outside_its_subtree(
    granted: list[str], asked: list[str], action: Action
) -> None:
    if not all(_VALID.fullmatch(s) for s in granted):
        return
    grant_path = "/" + "/".join(granted)
    held = Grants.of([grant(SERVICES + ":" + grant_path, "full")])
    path = "/" + "/".join(asked)
    try:
        rid = service_rid(path)
    except PathRefused:
        return
    inside = path == grant_path or path.startswith(grant_path + "/")
    assert allowed(held, action, rid) is inside


@given(
    granted=st.from_regex(r"[a-z]{1,3}(\.[a-z]{1,3}){0,2}", fullmatch=True),
    asked=st.from_regex(r"[a-z]{1,3}(\.[a-z]{1,3}){0,3}", fullmatch=True),
)
def test_a_job_grant_never_reaches_outside_its_prefix(granted: str, asked: str) -> None:
    held = Grants.of([grant(JOBS + ":" + granted, "read")])
    inside = asked == granted or asked.startswith(granted + ".")
    assert allowed(held, "read", job_rid(asked)) is inside


# ---- lists and escalation ---------------------------------------------------------------------


def test_visible_needs_read_on_any_cancel_needs_update_on_all() -> None:
    alice = grants(S + "/team-a full")
    deployment = [service_rid("/team-a/web"), service_rid("/team-b/db")]
    assert visible(alice, deployment)
    assert not visible(alice, [service_rid("/team-b/db")])
    assert not visible(alice, [])
    assert visible(grants("dcos:superuser full"), [])
    cancel = required(
        route_rule("DELETE", "/v2/deployments/{deployment_id}"),
        {"deployment_id": "d1"},
        ids=["/team-a/web", "/team-b/db"],
    )
    assert not permitted(alice, cancel)
    assert permitted(grants(S + "/team-a update", S + "/team-b update"), cancel)


@pytest.mark.parametrize(
    ("held", "rid", "actions", "expected"),
    [
        ((S + "/team-a full",), S + "/team-a/web", ["read", "update"], True),
        ((S + "/team-a full",), S + "/team-a", ["full"], True),
        ((S + "/team-a read",), S + "/team-a/web", ["read"], True),
        ((S + "/team-a read",), S + "/team-a/web", ["update"], False),
        ((S + "/team-a read,update",), S + "/team-a", ["full"], False),
        ((S + "/team-a full",), S + "/team-ab", ["read"], False),
        ((S + "/team-a full",), S + "/", ["read"], False),
        ((S + "/team-a full",), "dcos:superuser", ["full"], False),
        ((S + "/team-a full", ACS + " full"), "dcos:superuser", ["read"], False),
        ((S + "/team-a full",), S + "/team-a", [], False),
        (("dcos:superuser full",), "dcos:superuser", ["full"], True),
        (("dcos:superuser full",), S + "/", ["full"], True),
    ],
)
def test_may_grant(held: tuple[str, ...], rid: str, actions: list[str], expected: bool) -> None:
    assert may_grant(grants(*held), rid, actions) is expected


# ---- routes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "action"),
    [("GET", "read"), ("head", "read"), ("POST", "create"), ("PUT", "update"),
     ("PATCH", "update"), ("DELETE", "delete")],
)  # fmt: skip
def test_action_for_method(method: str, action: str) -> None:
    assert action_for_method(method) == action


def test_unknown_methods_and_routes_fail_closed() -> None:
    with pytest.raises(ValueError):
        action_for_method("OPTIONS")
    with pytest.raises(UnknownRoute):
        route_rule("GET", "/v2/secret-backdoor")
    with pytest.raises(UnknownRoute):
        route_rule("POST", "/v2/info")


def test_actions_follow_http_except_where_marathon_says_otherwise() -> None:
    for (method, template), rule in ROUTES.items():
        if rule.action is None:
            continue
        if (method, template) in METHOD_EXCEPTIONS:
            assert rule.action in (Action.UPDATE, Action.FULL), (method, template)
            assert rule.action != action_for_method(method), (method, template)
        else:
            assert rule.action == action_for_method(method), (method, template)


def test_every_route_rule_is_consistent() -> None:
    for (method, template), rule in {**ROUTES, **PLANNED_ROUTES}.items():
        assert method in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        if rule.param is not None:
            assert "{" + rule.param in template, (method, template)
        if rule.action is None:
            assert rule.family is None and rule.ids is Ids.NONE
        else:
            assert rule.family is not None and not rule.public
        if rule.listing is not None:
            assert method == "GET"


@pytest.mark.parametrize("prefix", ["", "/marathon", "/service/marathon"])
def test_marathon_aliases_share_rules(prefix: str) -> None:
    assert (
        route_rule("GET", prefix + "/v2/apps/{app_id:path}")
        is ROUTES[("GET", "/v2/apps/{app_id:path}")]
    )
    assert route_rule("HEAD", prefix + "/v2/apps") is ROUTES[("GET", "/v2/apps")]
    assert route_rule("GET", prefix + "/ping").public


def test_metronome_alias_shares_rules() -> None:
    assert (
        route_rule("POST", "/service/metronome/v1/jobs/{job_id}/runs")
        is ROUTES[("POST", "/v1/jobs/{job_id}/runs")]
    )
    assert route_rule("GET", "/service/metronome/ping").public


def need(action: str, rid: str) -> Need:
    return Need(Action(action), parse_rid(rid))


REQUESTS = [
    # (method, template, path params, ids, query, needs)
    ("GET", "/v2/apps", {}, [], {}, []),
    ("GET", APP, {"app_id": "team-a/web"}, [], {}, [need("read", S + "/team-a/web")]),
    ("GET", APP, {"app_id": "team-a/*"}, [], {}, [need("read", S + "/team-a")]),
    ("GET", APP, {"app_id": "*"}, [], {}, []),
    ("POST", "/v2/apps", {}, ["/team-a/web"], {}, [need("create", S + "/team-a/web")]),
    ("POST", "/v2/apps", {}, [], {}, [need("full", SERVICES)]),
    ("PUT", "/v2/apps", {}, ["/team-a/x", "/team-b/y"], {},
     [need("update", S + "/team-a/x"), need("update", S + "/team-b/y")]),
    ("PUT", APP, {"app_id": "team-a/web"}, ["/team-a/web"], {},
     [need("update", S + "/team-a/web")]),
    ("POST", "/v2/apps/{app_id:path}/restart", {"app_id": "team-a/web"}, [], {},
     [need("update", S + "/team-a/web")]),
    ("DELETE", "/v2/apps/{app_id:path}/tasks/{task_id}", {"app_id": "/team-a/web", "task_id": "t"},
     [], {}, [need("update", S + "/team-a/web")]),
    ("DELETE", APP, {"app_id": "team-a/web"}, [], {}, [need("delete", S + "/team-a/web")]),
    ("POST", "/v2/tasks/delete", {}, ["/team-a/web", "/team-b/db"], {},
     [need("update", S + "/team-a/web"), need("update", S + "/team-b/db")]),
    ("POST", "/v2/tasks/delete", {}, [], {}, [need("full", SERVICES)]),
    ("POST", "/v2/groups", {}, [], {}, [need("full", SERVICES)]),
    ("PUT", "/v2/groups", {}, [], {}, [need("full", SERVICES)]),
    ("DELETE", "/v2/groups", {}, [], {}, [need("full", SERVICES)]),
    ("PUT", "/v2/groups/{group_id:path}", {"group_id": ""}, [], {}, [need("full", SERVICES)]),
    ("DELETE", "/v2/groups/{group_id:path}", {"group_id": "/"}, [], {}, [need("full", SERVICES)]),
    ("GET", "/v2/groups/{group_id:path}", {"group_id": ""}, [], {}, []),
    ("GET", GROUP + "/versions", {"group_id": ""}, [], {}, [need("read", SERVICES)]),
    ("PUT", GROUP, {"group_id": "team-a"}, ["/team-a/x", "/team-b/x"], {},
     [need("update", S + "/team-a"), need("update", S + "/team-a/x"),
      need("update", S + "/team-b/x")]),
    ("POST", "/v2/groups/{group_id:path}", {"group_id": "team-a/sub"}, ["/team-a/sub/web"], {},
     [need("create", S + "/team-a/sub"), need("create", S + "/team-a/sub/web")]),
    ("DELETE", "/v2/deployments/{deployment_id}", {"deployment_id": "d"}, ["/team-a/web"], {},
     [need("update", S + "/team-a/web")]),
    ("DELETE", "/v2/queue/{app_id:path}/delay", {"app_id": "team-a/web"}, [], {},
     [need("update", S + "/team-a/web")]),
    ("GET", "/v2/info", {}, [], {}, [need("read", "dcos:service:marathon:marathon:admin:config")]),
    ("DELETE", "/v2/leader", {}, [], {}, [need("update", ADMIN_LEADER)]),
    ("GET", "/v2/events", {}, [], {}, []),
    ("GET", "/v1/jobs/{job_id}", {"job_id": "team-a.nightly"}, [], {},
     [need("read", JOBS + ":team-a.nightly")]),
    ("POST", "/v1/jobs", {}, ["team-a.nightly"], {}, [need("create", JOBS + ":team-a.nightly")]),
    ("POST", "/v1/jobs/{job_id}/runs", {"job_id": "team-b.nightly"}, [], {},
     [need("update", JOBS + ":team-b.nightly")]),
    ("POST", "/v1/tasks", {}, ["/team-a"], {}, [need("create", S + "/team-a")]),
    ("DELETE", "/v1/tasks/{task_id}", {"task_id": "t"}, ["/team-a/batch"], {},
     [need("update", S + "/team-a/batch")]),
    ("GET", "/v1/agents", {}, [], {}, [need("read", AGENTS)]),
    ("GET", "/v1/tasks", {}, [], {}, []),
    ("GET", "/secrets/v1/secret/default/{path:path}", {"path": "team-a/db"}, [], {},
     [need("read", SECRETS + ":/team-a/db")]),
    ("GET", "/secrets/v1/secret/default/{path:path}", {"path": "team-a"}, [], {"list": "true"},
     [need("read", SECRETS_LIST + ":/team-a")]),
    ("PUT", "/v1/quotas/{role}", {"role": "team-a"}, [], {}, [need("update", QUOTA + ":team-a")]),
    ("GET", "/v1/audit", {}, [], {"path": "/team-a/web"}, [need("read", S + "/team-a/web")]),
    ("GET", "/v1/audit", {}, [], {}, []),
    ("POST", "/v1/tasks/{task_id}/sandbox-grant", {"task_id": "t"}, ["/team-a/web"], {},
     [need("read", "dcos:mesos:agent:sandbox:app_id:/team-a/web")]),
    ("PUT", "/acs/api/v1/acls/{rid:path}/users/{uid}/{action}",
     {"rid": "x", "uid": "u", "action": "read"}, [], {}, [need("full", ACS)]),
]  # fmt: skip


@pytest.mark.parametrize(("method", "template", "params", "ids", "query", "needs"), REQUESTS)
def test_required(
    method: str,
    template: str,
    params: dict[str, str],
    ids: list[str],
    query: dict[str, str],
    needs: list[Need],
) -> None:
    assert list(required(route_rule(method, template), params, ids, query)) == needs


@pytest.mark.parametrize(
    ("template", "param", "raw"),
    [
        ("/v2/apps/{app_id:path}", "app_id", "team-a/../team-b/web"),
        ("/v2/apps/{app_id:path}", "app_id", "team-a%2Fweb"),
        ("/v2/apps/{app_id:path}", "app_id", "/team-a//web"),
        ("/v2/apps/{app_id:path}", "app_id", "Team-B/web"),
        ("/v2/groups/{group_id:path}", "group_id", "team-a/./x"),
        ("/v1/jobs/{job_id}", "job_id", "team-a..x"),
        ("/v1/jobs/{job_id}", "job_id", "TEAM-A"),
    ],
)
def test_required_refuses_tricky_paths(template: str, param: str, raw: str) -> None:
    with pytest.raises(PathRefused):
        required(route_rule("GET", template), {param: raw})


def test_required_refuses_tricky_body_ids() -> None:
    with pytest.raises(PathRefused):
        required(route_rule("POST", "/v2/apps"), {}, ["/team-a/../team-b/x"])


def test_public_and_open_routes_need_nothing() -> None:
    assert route_rule("POST", "/acs/api/v1/auth/login").public
    assert required(route_rule("GET", "/v1/leader")) == ()
    assert not route_rule("GET", "/v1/leader").public


def test_list_routes_say_what_they_filter() -> None:
    for template, listing in [
        ("/v2/apps", Listing.APPS),
        ("/v2/groups", Listing.GROUPS),
        ("/v2/tasks", Listing.TASKS),
        ("/v2/deployments", Listing.DEPLOYMENTS),
        ("/v2/queue", Listing.QUEUE),
        ("/v2/events", Listing.EVENTS),
        ("/v1/jobs", Listing.JOBS),
        ("/v1/tasks", Listing.TASKS),
    ]:
        assert route_rule("GET", template).listing is listing


# ---- teams ------------------------------------------------------------------------------------


def test_team_groups() -> None:
    groups = team_groups("team-a")
    assert set(groups) == {"team-a-admins", "team-a-developers", "team-a-viewers"}
    admins, devs, viewers = (
        Grants.of(groups[f"team-a-{name}"]) for name in ("admins", "developers", "viewers")
    )
    for held in (admins, devs, viewers):
        assert allowed(held, "read", S + "/team-a/web")
        assert allowed(held, "read", JOBS + ":team-a.nightly")
        assert allowed(held, "read", "dcos:mesos:master:quota:role:team-a")
        assert not allowed(held, "read", S + "/team-ab")
        assert not allowed(held, "read", S + "/team-b/web")
        assert not allowed(held, "update", "dcos:mesos:master:quota:role:team-a")
    assert allowed(admins, "full", S + "/team-a")
    assert allowed(admins, "full", JOBS + ":team-a")
    assert allowed(admins, "read", "dcos:mesos:agent:sandbox:app_id:/team-a/web")
    assert allowed(admins, "update", SECRETS + ":/team-a/db")
    assert allowed(admins, "read", SECRETS_LIST + ":/team-a")
    for action in ("create", "read", "update", "delete"):
        assert allowed(devs, action, S + "/team-a/web")
        assert allowed(devs, action, JOBS + ":team-a.x")
    assert not allowed(devs, "full", S + "/team-a")
    assert allowed(devs, "read", "dcos:mesos:agent:sandbox:app_id:/team-a/web")
    assert not allowed(devs, "read", SECRETS + ":/team-a/db")
    for action in ("create", "update", "delete"):
        assert not allowed(viewers, action, S + "/team-a/web")
    # Admins may hand out what their team holds, nothing more.
    assert may_grant(admins, S + "/team-a/web", ["read"])
    assert not may_grant(admins, S + "/team-b", ["read"])


@pytest.mark.parametrize("team", ["", "Team-a", "team.a", "team/a", "-a", "a-", "team_a"])
def test_invalid_team_names(team: str) -> None:
    with pytest.raises(PathRefused):
        team_groups(team)


# ---- speed ------------------------------------------------------------------------------------


def test_ten_thousand_checks_stay_cheap() -> None:
    held = Grants.of(
        [grant(f"{S}/team-{i}", "read") for i in range(20)] + [grant(JOBS + ":team-a", "full")]
    )
    rid = service_rid("/team-19/web/x")
    import time  # only this test reads the clock

    start = time.perf_counter()
    for _ in range(10_000):
        allowed(held, Action.READ, rid)
    # A generous bound (measured ~40 ms on the 2-core machine): catches an accidental O(n^2).
    assert time.perf_counter() - start < 1.0
