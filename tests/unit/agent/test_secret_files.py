import os
import stat
from pathlib import Path

import pytest

from tessera.agent.environment import task_environment
from tessera.agent.secret_files import SecretFileError, remove_secret_files, write_secret_files
from tessera.model.protocol import LaunchSecrets
from tessera.model.secret_refs import SecretUse
from tessera.model.task import TaskSpec

ME = (os.geteuid(), os.getegid())


def test_files_are_0400_in_a_0700_sandbox_and_go_when_asked(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    written = write_secret_files(sandbox, {"db": "one", "creds/api": "two"}, *ME)
    assert stat.S_IMODE(sandbox.stat().st_mode) == 0o700
    assert (sandbox / "db").read_text() == "one"
    assert (sandbox / "creds" / "api").read_text() == "two"
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
    remove_secret_files(written)
    assert not (sandbox / "db").exists() and not (sandbox / "creds" / "api").exists()


def test_symlinks_placed_in_the_sandbox_are_not_followed(tmp_path: Path) -> None:
    sandbox, outside = tmp_path / "sandbox", tmp_path / "outside"
    sandbox.mkdir()
    outside.mkdir()
    (sandbox / "link").symlink_to(outside / "target")
    (sandbox / "dir").symlink_to(outside)
    with pytest.raises(SecretFileError):
        write_secret_files(sandbox, {"link": "v"}, *ME)
    with pytest.raises(SecretFileError):
        write_secret_files(sandbox, {"dir/x": "v"}, *ME)
    assert list(outside.iterdir()) == []


def test_an_existing_file_is_not_overwritten_and_nothing_half_written_stays(
    tmp_path: Path,
) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "taken").write_text("artifact")
    with pytest.raises(SecretFileError) as failed:
        write_secret_files(sandbox, {"first": "v1", "taken": "v2"}, *ME)
    assert "v2" not in str(failed.value)
    assert (sandbox / "taken").read_text() == "artifact"
    assert not (sandbox / "first").exists()


def test_launch_secrets_keep_only_what_the_spec_asks_and_hide_values() -> None:
    uses = (SecretUse("/a/db", env="DB"), SecretUse("/a/db", file="f"))
    secrets = LaunchSecrets.from_json(
        [
            {"env": "DB", "value": "s3cret"},
            {"env": "EXTRA", "value": "x"},
            {"file": "f", "value": "s3cret"},
            {"bogus": 1},
        ]
    ).only(uses)
    assert secrets.env == {"DB": "s3cret"} and secrets.files == {"f": "s3cret"}
    assert "s3cret" not in repr(secrets)
    assert secrets.missing(uses) == []
    assert LaunchSecrets().missing(uses) == ["DB", "f"]


def test_env_secrets_join_the_task_environment() -> None:
    spec = TaskSpec(name="t", cmd="true", env={"A": "1"})
    env = task_environment("t.1", spec, [], "host", {"DB": "s3cret"})
    assert env["DB"] == "s3cret" and env["A"] == "1"
    assert "DB" not in task_environment("t.1", spec, [], "host")
