"""CLI profiles: which cluster the `tessera` command talks to and with which credentials.

A profile is `$TESSERA_HOME/profiles/<name>.json` (0600): the master's URL, the CA file to
trust (the API is HTTPS with the cluster's own CA), and how to get a token — a token file kept
fresh by someone else (`tessera up` keeps `<work dir>/admin-token` current), a token saved by
`tessera login`, or a uid with a password file to log in again (`tessera token`).
`current-profile` names the profile in use. `TESSERA_TOKEN` and `TESSERA_CA` override whatever
a profile says.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path

from tessera.local.paths import local_cluster_dir, tessera_home
from tessera.master.auth_files import ADMIN_TOKEN
from tessera.security.ca import cli_client_context, write_private


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    token: str | None = None
    token_file: str | None = None
    uid: str | None = None
    password_file: str | None = None
    ca: str | None = None

    def stored_token(self) -> str | None:
        if self.token_file:
            with contextlib.suppress(OSError):
                return Path(self.token_file).read_text().strip() or None
        return self.token


def profiles_dir() -> Path:
    return tessera_home() / "profiles"


def current_profile_file() -> Path:
    return tessera_home() / "current-profile"


def save_profile(profile: Profile, make_current: bool = True) -> Path:
    path = profiles_dir() / f"{profile.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fields = {k: v for k, v in asdict(profile).items() if v is not None}
    write_private(path, json.dumps(fields, indent=2) + "\n")
    if make_current:
        current_profile_file().write_text(profile.name + "\n")
    return path


def load_profile(name: str) -> Profile | None:
    try:
        data = json.loads((profiles_dir() / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    known = set(Profile.__dataclass_fields__)
    return Profile(**{k: v for k, v in data.items() if k in known and isinstance(v, str)})


def current_profile() -> Profile | None:
    try:
        name = current_profile_file().read_text().strip()
    except OSError:
        return None
    return load_profile(name) if name else None


def profile_for(url: str) -> Profile | None:
    """The current profile if it is for `url`, else any profile for it."""
    current = current_profile()
    if current is not None and current.url.rstrip("/") == url.rstrip("/"):
        return current
    with contextlib.suppress(OSError):
        for path in sorted(profiles_dir().glob("*.json")):
            found = load_profile(path.stem)
            if found is not None and found.url.rstrip("/") == url.rstrip("/"):
                return found
    return None


def local_cluster_token(url: str) -> str | None:
    """The superuser token of a local cluster (`tessera up`) serving `url`."""
    work_dir = local_cluster_dir(url)
    if work_dir is not None:
        with contextlib.suppress(OSError):
            return (work_dir / ADMIN_TOKEN).read_text().strip() or None
    return None


def local_cluster_ca(url: str) -> str | None:
    """The CA file (`<work dir>/ca.pem`) of a local cluster (`tessera up`) serving `url`."""
    work_dir = local_cluster_dir(url)
    path = work_dir / "ca.pem" if work_dir is not None else None
    return str(path) if path is not None and path.exists() else None


def ca_for(url: str) -> str | None:
    """The CA certificate file to trust for `url`: TESSERA_CA, else the profile's `ca`, else a
    local cluster's; None: the system's trust store (a master behind a public certificate)."""
    if from_environment := os.environ.get("TESSERA_CA", "").strip():
        return from_environment
    profile = profile_for(url)
    if profile is not None and profile.ca:
        return profile.ca
    return local_cluster_ca(url)


def verify_for(url: str) -> ssl.SSLContext | bool:
    """What httpx checks the master's certificate with (`verify=`): the cluster CA only."""
    ca = ca_for(url)
    return cli_client_context(Path(ca)) if ca else True


def token_for(url: str) -> str | None:
    """TESSERA_TOKEN, else the profile's token for `url`, else a local cluster's."""
    if from_environment := os.environ.get("TESSERA_TOKEN", "").strip():
        return from_environment
    profile = profile_for(url)
    stored = profile.stored_token() if profile is not None else None
    return stored or local_cluster_token(url)
