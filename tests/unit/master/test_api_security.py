"""The attack suite against the master's API in process: who gets in, who sees what.

Principals: `admin` (superuser), `alice` (full on /team-a and job ids team-a.*), `ro` (read
on /team-a), `bob` (full on /team-b), and an anonymous client. Every route of the app is
enumerated, so a new route that forgets its permission rule fails here.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.model.permissions import UnknownRoute, route_rule
from tessera.security.tokens import new_signing_key
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers, create_user, login

SERVICES = "dcos:service:marathon:marathon:services"
JOBS = "dcos:service:metronome:metronome:jobs"
PREFIXES = ("", "/marathon", "/service/marathon")


class Api:
    def __init__(self, client: TestClient, work_dir: Path) -> None:
        self.client = client
        self.admin = auth_headers(work_dir)
        self.alice = create_user(
            client,
            "alice",
            "alice-pass-1",
            [f"{SERVICES}:/team-a full", f"{JOBS}:team-a full"],
            self.admin,
        )
        self.ro = create_user(
            client,
            "ro",
            "ro-pass-123",
            [f"{SERVICES}:/team-a read", f"{JOBS}:team-a read"],
            self.admin,
        )
        self.bob = create_user(
            client,
            "bob",
            "bob-pass-12",
            [f"{SERVICES}:/team-b full", f"{JOBS}:team-b full"],
            self.admin,
        )

    def call(self, method: str, path: str, who: dict[str, str] | None, **kw: Any) -> Any:
        return self.client.request(method, path, headers=who or {}, **kw)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work_dir = tmp_path_factory.mktemp("master")
    app = create_app(MasterConfig(work_dir=work_dir), store=MemoryStore())
    with TestClient(app, raise_server_exceptions=False) as client:
        found = Api(client, work_dir)
        for who, app_id in ((found.alice, "/team-a/web"), (found.bob, "/team-b/web")):
            body = {"id": app_id, "cmd": "sleep 1000", "instances": 0}
            assert found.call("POST", "/v2/apps", who, json=body).status_code == 201
        for who, job in ((found.alice, "team-a.nightly"), (found.bob, "team-b.nightly")):
            body = {"id": job, "run": {"cmd": "true", "cpus": 0.1, "mem": 32}}
            assert found.call("POST", "/v1/jobs", who, json=body).status_code == 201
        yield found


def _sample(path: str) -> str:
    """A concrete URL for a route template."""
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_has_a_rule_and_needs_credentials(api: Api) -> None:
    contexts = [
        c
        for c in iter_route_contexts(api.client.app.routes)  # type: ignore[attr-defined]
        if isinstance(c.original_route, APIRoute)
    ]
    assert len(contexts) > 100
    checked = 0
    for context in contexts:
        route = context.original_route
        assert isinstance(route, APIRoute) and context.path is not None
        for method in sorted(route.methods - {"HEAD"}):
            try:
                rule = route_rule(method, context.path)
            except UnknownRoute:
                pytest.fail(f"{method} {context.path} has no permission rule")
            answer = api.call(method, _sample(context.path), None)
            if rule.public:
                assert answer.status_code != 401, (method, context.path)
                continue
            assert answer.status_code == 401, (method, context.path, answer.status_code)
            assert answer.headers["www-authenticate"].startswith("acsjwt")
            checked += 1
    assert checked > 100


def test_anonymous_post_runs_nothing(api: Api) -> None:
    answer = api.call("POST", "/v2/apps", None, json={"id": "/miner", "cmd": "curl x|sh"})
    assert answer.status_code == 401
    assert "/miner" not in {a["id"] for a in api.call("GET", "/v2/apps", api.admin).json()["apps"]}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_other_teams_objects_are_403_whether_they_exist_or_not(api: Api, prefix: str) -> None:
    for app_id in ("team-b/web", "team-b/ghost"):
        for method, path, body in (
            ("GET", f"/v2/apps/{app_id}", None),
            ("GET", f"/v2/apps/{app_id}/versions", None),
            ("GET", f"/v2/apps/{app_id}/tasks", None),
            ("PUT", f"/v2/apps/{app_id}", {"instances": 5}),
            ("PATCH", f"/v2/apps/{app_id}", {"instances": 5}),
            ("DELETE", f"/v2/apps/{app_id}", None),
            ("POST", f"/v2/apps/{app_id}/restart", None),
            ("DELETE", f"/v2/apps/{app_id}/tasks", None),
            ("DELETE", f"/v2/queue/{app_id}/delay", None),
            ("GET", f"/v2/groups/{app_id}", None),
        ):
            answer = api.call(method, prefix + path, api.alice, json=body)
            assert answer.status_code == 403, (method, path, answer.status_code)
    assert api.call("GET", prefix + "/v2/apps/team-a/web", api.alice).status_code == 200


def test_lists_and_groups_show_nothing_of_other_teams(api: Api) -> None:
    apps = api.call("GET", "/v2/apps", api.alice).json()["apps"]
    assert [a["id"] for a in apps] == ["/team-a/web"]
    root = api.call("GET", "/v2/groups", api.alice).json()
    assert json.dumps(root).count("team-b") == 0
    assert [g["id"] for g in root["groups"]] == ["/team-a"]
    for path in ("/v2/tasks", "/v2/deployments", "/v2/queue", "/v1/tasks", "/v1/queue"):
        assert "team-b" not in api.call("GET", path, api.alice).text, path
    jobs = api.call("GET", "/v1/jobs", api.alice).json()
    assert [j["id"] for j in jobs] == ["team-a.nightly"]
    assert len(api.call("GET", "/v2/apps", api.admin).json()["apps"]) == 2


def test_path_tricks_are_refused(api: Api) -> None:
    for path in (
        "/v2/apps/team-ab/x",
        "/v2/apps/team-a-evil",
        "/v2/apps/team-a/../team-b/web",
        "/v2/apps/team-a/%2e%2e/team-b/web",
        "/v2/apps/team-a%2F..%2Fteam-b/web",
        "/v2/apps//team-b/web",
        "/v2/apps/Team-B/web",
        "/v2/apps/team-\u0430/web",  # Cyrillic a
    ):
        answer = api.call("PUT", path, api.alice, json={"instances": 1})
        assert answer.status_code in (403, 404, 422), (path, answer.status_code)
        assert answer.status_code != 404 or "team-b" not in path, path
    bodies = [
        {"id": "/team-a", "apps": [{"id": "/team-b/x", "cmd": "sleep 1"}]},
        {"id": "/team-a", "groups": [{"id": "/team-b"}]},
        {"id": "/team-a", "groups": [{"id": "../team-b", "apps": [{"id": "x", "cmd": "s"}]}]},
    ]
    for body in bodies:
        answer = api.call("PUT", "/v2/groups/team-a", api.alice, json=body)
        assert answer.status_code in (403, 422), (body, answer.status_code)
    assert api.call("PUT", "/v2/groups", api.alice, json={"id": "/"}).status_code == 403
    many = [{"id": "/team-a/w2", "cmd": "sleep 1"}, {"id": "/team-b/w2", "cmd": "sleep 1"}]
    assert api.call("PUT", "/v2/apps", api.alice, json=many).status_code == 403
    ids = [a["id"] for a in api.call("GET", "/v2/apps", api.admin).json()["apps"]]
    assert "/team-b/x" not in ids and "/team-a/w2" not in ids


def test_metronome_jobs_of_other_teams(api: Api) -> None:
    for method, path in (
        ("GET", "/v1/jobs/team-b.nightly"),
        ("DELETE", "/v1/jobs/team-b.nightly"),
        ("POST", "/v1/jobs/team-b.nightly/runs"),
        ("GET", "/v1/jobs/team-b.nightly/runs"),
        ("GET", "/service/metronome/v1/jobs/team-b.nightly"),
    ):
        assert api.call(method, path, api.alice).status_code == 403, path
    body = {"id": "team-ab.x", "run": {"cmd": "true", "cpus": 0.1, "mem": 32}}
    assert api.call("POST", "/v1/jobs", api.alice, json=body).status_code == 403


def test_read_only_users_read_but_never_write(api: Api) -> None:
    for path in ("/v2/apps/team-a/web", "/v2/apps", "/v2/groups/team-a", "/v1/jobs/team-a.nightly"):
        assert api.call("GET", path, api.ro).status_code == 200, path
    for method, path, body in (
        ("PUT", "/v2/apps/team-a/web", {"instances": 2}),
        ("POST", "/v2/apps/team-a/web/restart", None),
        ("DELETE", "/v2/apps/team-a/web", None),
        ("POST", "/v2/apps", {"id": "/team-a/new", "cmd": "sleep 1"}),
        ("POST", "/v1/jobs/team-a.nightly/runs", None),
        ("DELETE", "/v1/jobs/team-a.nightly", None),
    ):
        assert api.call(method, path, api.ro, json=body).status_code == 403, (method, path)


def test_admin_functions_and_self_promotion(api: Api) -> None:
    for method, path in (
        ("DELETE", "/v2/leader"),
        ("GET", "/v2/info"),
        ("GET", "/v1/agents"),
        ("PUT", "/acs/api/v1/users/mallory"),
        ("GET", "/acs/api/v1/users"),
    ):
        assert api.call(method, path, api.alice, json={"password": "x" * 12}).status_code == 403
    grant = "/acs/api/v1/acls/dcos:superuser/users/alice/full"
    assert api.call("PUT", grant, api.alice).status_code == 403
    assert (
        api.call("PUT", "/acs/api/v1/groups/superusers/users/alice", api.alice).status_code == 403
    )
    # Even a holder of the IAM API cannot pass on what it does not hold itself.
    acs = "/acs/api/v1/acls/dcos:adminrouter:acs/users/ro/full"
    assert api.call("PUT", acs, api.admin).status_code == 204
    ro_grants_super = api.call("PUT", "/acs/api/v1/acls/dcos:superuser/users/ro/full", api.ro)
    assert ro_grants_super.status_code == 403
    assert api.call("DELETE", acs, api.admin).status_code == 204


def test_running_as_root_needs_its_permission(api: Api) -> None:
    body = {"id": "/team-a/rooted", "cmd": "id", "user": "root", "instances": 0}
    assert api.call("POST", "/v2/apps", api.alice, json=body).status_code == 403
    task = {"name": "t", "cmd": "id", "user": "root", "group": "/team-a"}
    assert api.call("POST", "/v1/tasks", api.alice, json=task).status_code == 403
    assert api.call("POST", "/v2/apps", api.admin, json=body).status_code == 201


def _forged(payload: dict[str, Any], alg: str = "RS256") -> str:
    if alg == "none":
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=")
        return f"{header.decode()}.{body.decode()}."
    return jwt.encode(payload, new_signing_key(2048), algorithm="RS256")


def test_bad_tokens_are_401_never_500(api: Api) -> None:
    now = time.time()
    claims = {"uid": "admin", "iss": "x", "aud": "tessera", "iat": now, "exp": now + 60,
              "jti": "j", "typ": "user"}  # fmt: skip
    real = api.admin["Authorization"].removeprefix("token=")
    header, payload, signature = real.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["uid"] = "bob"
    swapped = base64.urlsafe_b64encode(json.dumps(tampered).encode()).rstrip(b"=").decode()
    for value in (
        f"token={_forged(claims, 'none')}",
        f"token={_forged(claims)}",
        f"token={header}.{swapped}.{signature}",
        "token=",
        "token=abc",
        "Bearer",
        "Basic !!!",
        "token=" + "a" * 20000,
    ):
        answer = api.call("GET", "/v2/apps", {"Authorization": value})
        assert answer.status_code == 401, (value[:40], answer.status_code)
    assert api.call("GET", f"/v2/apps?token={real}", None).status_code == 401
    assert api.call("GET", f"/v2/apps?access_token={real}", None).status_code == 401


def test_revoked_and_deleted_users_lose_their_tokens(api: Api) -> None:
    headers = create_user(api.client, "eve", "eve-pass-12", [f"{SERVICES}:/team-e read"], api.admin)
    assert api.call("GET", "/v2/apps", headers).status_code == 200
    # A new password ends every session of the old one.
    change = api.call("PATCH", "/acs/api/v1/users/eve", api.admin, json={"password": "new-pass-12"})
    assert change.status_code == 204
    assert api.call("GET", "/v2/apps", headers).status_code == 401
    fresh = login(api.client, "eve", "new-pass-12")
    assert api.call("GET", "/v2/apps", fresh).status_code == 200
    assert api.call("DELETE", "/acs/api/v1/users/eve", api.admin).status_code == 204
    assert api.call("GET", "/v2/apps", fresh).status_code == 401


def test_brute_force_is_429_and_unknown_users_look_alike(api: Api) -> None:
    wrong = api.call("POST", "/acs/api/v1/auth/login", None, json={"uid": "bob", "password": "x"})
    ghost = api.call(
        "POST", "/acs/api/v1/auth/login", None, json={"uid": "nobody", "password": "x"}
    )
    assert wrong.status_code == ghost.status_code == 401
    assert wrong.json() == ghost.json()
    for _ in range(5):
        api.call("POST", "/acs/api/v1/auth/login", None, json={"uid": "bob", "password": "nope"})
    right = api.call(
        "POST", "/acs/api/v1/auth/login", None, json={"uid": "bob", "password": "bob-pass-12"}
    )
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) >= 1


def test_huge_and_deep_bodies_are_4xx_and_the_master_stays_up(api: Api) -> None:
    huge = api.call("POST", "/v2/apps", api.admin, content=b"x" * (10 * 1024 * 1024))
    assert huge.status_code == 413
    deep = ("[" * 10000 + "]" * 10000).encode()
    for method, path in (("POST", "/v2/apps"), ("POST", "/v1/jobs"), ("POST", "/v1/tasks"),
                         ("POST", "/v2/groups"), ("PUT", "/acs/api/v1/users/x")):  # fmt: skip
        typed = {**api.admin, "content-type": "application/json"}
        answer = api.call(method, path, typed, content=deep)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert api.call("GET", "/ping", None).text == "pong"


def test_events_carry_no_other_teams_data(api: Api) -> None:
    from tessera.master.api.marathon_v2_events import event_visible
    from tessera.model.permissions import Principal, PrincipalKind, grant

    alice = Principal.build("alice", PrincipalKind.USER, [grant(f"{SERVICES}:/team-a", "full")])
    plan = {"original": {"apps": []}, "target": {"apps": [{"id": "/team-b/web"}]}}
    assert not event_visible(alice, {"eventType": "status_update_event", "appId": "/team-b/web"})
    assert not event_visible(alice, {"eventType": "deployment_success", "plan": plan})
    assert not event_visible(alice, {"eventType": "event_stream_attached"})
    assert event_visible(alice, {"eventType": "status_update_event", "appId": "/team-a/web"})


def test_mass_assignment_of_role_and_enforce_role(api: Api) -> None:
    stolen = {"id": "/team-a/thief", "cmd": "sleep 1", "role": "team-b", "instances": 0}
    answer = api.call("POST", "/v2/apps", api.alice, json=stolen)
    assert answer.status_code == 422 and answer.json()["details"][0]["path"] == "/role"
    ours = api.call("GET", "/v2/apps/team-a/web", api.alice).json()["app"]
    assert ours["role"] == "team-a"  # a new top-level group enforces its role
    escape = {"id": "/team-a", "enforceRole": False}
    assert api.call("PUT", "/v2/groups/team-a", api.alice, json=escape).status_code == 403
    job = {"id": "team-a.sneaky", "run": {"cmd": "true", "cpus": 0.1, "mem": 32, "role": "x"}}
    assert api.call("POST", "/v1/jobs", api.alice, json=job).status_code in (201, 422)
    assert api.call("PUT", "/v1/quotas/team-a", api.alice, json={"cpus": 100}).status_code == 403


def test_service_accounts_log_in_with_their_key(api: Api) -> None:
    from tessera.security.tokens import private_key_to_pem, public_key_to_pem

    key = new_signing_key(2048)
    public = public_key_to_pem(key.public_key()).decode()
    created = api.call("PUT", "/acs/api/v1/users/ci-bot", api.admin, json={"public_key": public})
    assert created.status_code == 201
    now = int(time.time())
    login_jwt = jwt.encode({"uid": "ci-bot", "exp": now + 120, "jti": "once"}, key, "RS256")
    body = {"uid": "ci-bot", "token": login_jwt}
    answer = api.call("POST", "/acs/api/v1/auth/login", None, json=body)
    assert answer.status_code == 200
    claims = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    assert claims["typ"] == "service" and claims["exp"] - claims["iat"] <= 3600 + 1
    # A login token is single-use, and one signed by another key is refused.
    assert api.call("POST", "/acs/api/v1/auth/login", None, json=body).status_code == 401
    other = jwt.encode({"uid": "ci-bot", "exp": now + 120}, new_signing_key(2048), "RS256")
    refused = api.call(
        "POST", "/acs/api/v1/auth/login", None, json={"uid": "ci-bot", "token": other}
    )
    assert refused.status_code == 401
    assert private_key_to_pem(key)  # the key stays with the service


def test_marathon_post_events_name_the_acting_user(api: Api) -> None:
    from tessera.master.api.marathon_v2 import services

    controller = services(api.client)  # type: ignore[arg-type]
    subscription = controller.events.subscribe(["api_post_event"])
    try:
        body = {"id": "/team-a/evented", "cmd": "sleep 1", "instances": 0}
        assert api.call("POST", "/v2/apps", api.alice, json=body).status_code == 201
        event = subscription.queue.get_nowait()
        assert event["user"] == "alice"
    finally:
        controller.events.unsubscribe(subscription)


def test_version_info_names_who_changed_the_app_when_asked(api: Api) -> None:
    body = {"id": "/team-a/owned", "cmd": "sleep 1000", "instances": 0}
    assert api.call("POST", "/v2/apps", api.alice, json=body).status_code == 201
    scaled = api.call("PUT", "/v2/apps/team-a/owned?force=true", api.admin, json={"cpus": 0.5})
    assert scaled.status_code == 200, scaled.text
    scaled = api.call("PUT", "/v2/apps/team-a/owned?force=true", api.admin, json={"instances": 1})
    assert scaled.status_code == 200, scaled.text
    # Marathon clients refuse unknown keys in versionInfo: only with the embed.
    plain = api.call("GET", "/v2/apps/team-a/owned", api.alice).json()["app"]["versionInfo"]
    assert set(plain) == {"lastScalingAt", "lastConfigChangeAt"}
    asked = api.call(
        "GET", "/v2/apps/team-a/owned", api.alice, params={"embed": "app.versionInfo.user"}
    ).json()["app"]["versionInfo"]
    assert asked["lastScalingBy"] == asked["lastConfigChangeBy"] == "admin"
    # A pure scale keeps who made the config it runs.
    api.call("PUT", "/v2/apps/team-a/owned?force=true", api.alice, json={"instances": 0})
    listed = api.call("GET", "/v2/apps", api.alice, params={"embed": "apps.versionInfo.user"})
    info = next(a for a in listed.json()["apps"] if a["id"] == "/team-a/owned")["versionInfo"]
    assert info["lastScalingBy"] == "alice" and info["lastConfigChangeBy"] == "admin"
    versions = api.call("GET", "/v2/apps/team-a/owned/versions", api.alice).json()["versions"]
    first = api.call(
        "GET",
        f"/v2/apps/team-a/owned/versions/{versions[-1]}",
        api.alice,
        params={"embed": "app.versionInfo.user"},
    ).json()
    assert first["versionInfo"]["lastConfigChangeBy"] == "alice"
