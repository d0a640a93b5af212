"""Schemathesis against the master in process: every operation of /openapi.json, as the
superuser and as a team user, must answer no 5xx and only what the document declares.

One master per module (MemoryStore, no agents), started on the first request and stopped
when the module ends. Only the bare prefixes (`/v2`, `/v1`, `/acs`, `/secrets`) are
fuzzed: the aliases (`/marathon`, `/service/marathon`, `/service/metronome`) serve the very
same handlers, and the route inventory test checks that they carry the same rules.

Examples per operation: TESSERA_FUZZ_EXAMPLES (10 by default, the CI profile); the long
run adds the coverage phase, 500 examples and fresh random cases (docs/api-schemas.md).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tessera.master.api.schemas import publish_request_schemas
from tessera.master.app import create_app
from tessera.master.config import MasterConfig
from tessera.store import MemoryStore
from tessera.testing.auth import auth_headers, create_user

EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "10"))
PHASES = os.environ.get("TESSERA_FUZZ_PHASES", "examples,fuzzing").split(",")
# CI replays the same cases every run (a red CI is a regression, not a lucky draw); the
# long run draws new ones with TESSERA_FUZZ_RANDOM=1.
RANDOM = os.environ.get("TESSERA_FUZZ_RANDOM") == "1"

# positive_data_acceptance is left out on purpose: the schema leaves to the handlers what
# spans fields or needs state (cmd or a container image, image and cron grammars, whether
# an id exists), so data the schema allows is often rightly 404, 409 or 422. The stateful
# checks (use_after_free, ensure_resource_availability) need the stateful phase, which
# the long run may add; missing_required_header has no required header to test.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

# Not fuzzed, and why.
SKIPPED_PATHS = (
    r"^/(marathon|service)/",  # aliases of the bare prefixes
    r"^/v2/events$",  # an endless event stream; its filtering has tests of its own
    r"^/v2/leader$",  # DELETE answers 501 on a lone master by design (no standby)
)

TEAM_GRANTS = [
    "dcos:service:marathon:marathon:services:/team-a full",
    "dcos:service:metronome:metronome:jobs:team-a full",
]


# The document is built from the app itself at collection (no master runs yet: /openapi.json
# itself needs a token, which the master writes once it leads); the first request starts
# the master's lifespan, in schemathesis' event-loop thread, for the rest of the module.
WORK_DIR = Path(tempfile.mkdtemp(prefix="tessera-fuzz-"))
atexit.register(shutil.rmtree, WORK_DIR, ignore_errors=True)
APP = create_app(MasterConfig(work_dir=WORK_DIR), store=MemoryStore())
publish_request_schemas(APP)  # until master/app.py does it
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # what from_asgi sets: requests go to the app in process
schema.config.generation.update(
    max_examples=EXAMPLES, with_security_parameters=False, deterministic=not RANDOM
)
schema.config.phases.update(phases=PHASES)
for _pattern in SKIPPED_PATHS:
    schema = schema.exclude(path_regex=_pattern)


@pytest.fixture(scope="module")
def superuser() -> Iterator[dict[str, str]]:
    with asgi.get_client(APP):
        pass  # started: the master leads and has written its superuser token
    try:
        yield auth_headers(WORK_DIR)
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def team_user(superuser: dict[str, str]) -> dict[str, str]:
    with asgi.get_client(APP) as client:
        return create_user(client, "alice", "alice-password-1", TEAM_GRANTS, admin=superuser)


def test_the_served_document_is_the_fuzzed_one(superuser: dict[str, str]) -> None:
    with asgi.get_client(APP) as client:
        served = client.get("/openapi.json", headers=superuser)
    assert served.status_code == 200
    assert served.json() == APP.openapi()


def checks_for(case: Case) -> list[Any]:
    """Query parameters are lenient by design, as in Marathon (an unknown `status` or
    `embed` is ignored): only schema-violating bodies must be refused."""
    if case.operation.body:
        return CHECKS
    return [check for check in CHECKS if check is not negative_data_rejection]


@schema.parametrize()
def test_every_operation_as_the_superuser(case: Case, superuser: dict[str, str]) -> None:
    case.call_and_validate(headers=superuser, checks=checks_for(case))


@schema.parametrize()
def test_every_operation_as_a_team_user(case: Case, team_user: dict[str, str]) -> None:
    case.call_and_validate(headers=team_user, checks=checks_for(case))
