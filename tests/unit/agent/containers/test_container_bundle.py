"""The OCI config of a container task: both command tables, users, env, mounts, privileges."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.agent.containers.bundle import (
    DEFAULT_CAPABILITIES,
    SANDBOX_PATH,
    BundleError,
    BundleInputs,
    ContainerUser,
    Parameters,
    build_config,
    container_env,
    parse_parameters,
    parse_size,
    process_args,
    resolve_user,
    working_dir,
)
from tessera.agent.containers.rootfs import MAX_MOUNT_OPTIONS, RootfsError, overlay_options
from tessera.agent.containers.runtime import runc_start_error

ENTRY_AND_CMD = {"Entrypoint": ["/entry.sh", "--flag"], "Cmd": ["serve", "-p", "80"]}
CMD_ONLY = {"Cmd": ["httpd", "-f"]}


# ---- the command tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cmd", "args", "image", "expected"),
    [
        # MESOS (Mesos' containerizer): cmd runs in a shell and ignores the image.
        ("MESOS", "echo hi", None, ENTRY_AND_CMD, ["/bin/sh", "-c", "echo hi"]),
        ("MESOS", "echo hi", None, CMD_ONLY, ["/bin/sh", "-c", "echo hi"]),
        ("MESOS", None, ["a", "b"], ENTRY_AND_CMD, ["/entry.sh", "--flag", "a", "b"]),
        ("MESOS", None, ["a", "b"], CMD_ONLY, ["a", "b"]),
        ("MESOS", None, None, ENTRY_AND_CMD, ["/entry.sh", "--flag", "serve", "-p", "80"]),
        ("MESOS", None, None, CMD_ONLY, ["httpd", "-f"]),
        # DOCKER: cmd is handed to the entrypoint as /bin/sh -c cmd; args replace Cmd.
        (
            "DOCKER",
            "echo hi",
            None,
            ENTRY_AND_CMD,
            ["/entry.sh", "--flag", "/bin/sh", "-c", "echo hi"],
        ),
        ("DOCKER", "echo hi", None, CMD_ONLY, ["/bin/sh", "-c", "echo hi"]),
        ("DOCKER", None, ["a"], ENTRY_AND_CMD, ["/entry.sh", "--flag", "a"]),
        ("DOCKER", None, ["a"], CMD_ONLY, ["a"]),
        ("DOCKER", None, None, ENTRY_AND_CMD, ["/entry.sh", "--flag", "serve", "-p", "80"]),
        ("DOCKER", None, None, CMD_ONLY, ["httpd", "-f"]),
    ],
)
def test_command_tables(
    kind: str, cmd: str | None, args: list[str] | None, image: dict[str, Any], expected: list[str]
) -> None:
    assert process_args(kind, cmd, args, image) == expected


@pytest.mark.parametrize("kind", ["DOCKER", "MESOS"])
def test_nothing_to_run_is_an_error(kind: str) -> None:
    with pytest.raises(BundleError, match="no entrypoint and no cmd"):
        process_args(kind, None, None, {"Env": ["A=1"]})


# ---- users ------------------------------------------------------------------------------------

PASSWD = """root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000::/home/app:/bin/sh
"""
GROUP = """root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ContainerUser(0, 0, (), "/root", "root")),
        ("", ContainerUser(0, 0, (), "/root", "root")),
        ("app", ContainerUser(1000, 1000, (50,), "/home/app", "app")),
        ("1000", ContainerUser(1000, 1000, (50,), "/home/app", "app")),
        ("app:staff", ContainerUser(1000, 50, (), "/home/app", "app")),
        ("app:65534", ContainerUser(1000, 65534, (50,), "/home/app", "app")),
        ("4242", ContainerUser(4242, 4242, (), "/", "")),
        ("4242:7", ContainerUser(4242, 7, (), "/", "")),
    ],
)
def test_users_resolve_against_the_image(spec: str | None, expected: ContainerUser) -> None:
    assert resolve_user(spec, PASSWD, GROUP) == expected


def test_unknown_user_or_group_names_are_refused() -> None:
    with pytest.raises(BundleError, match="'ghost' is not in the image's /etc/passwd"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(BundleError, match="group 'wheel'"):
        resolve_user("app:wheel", PASSWD, GROUP)


def test_an_image_without_passwd_runs_numeric_users() -> None:
    assert resolve_user(None, "", "") == ContainerUser(0, 0, (), "/", "")


# ---- parameters --------------------------------------------------------------------------------


def test_supported_parameters() -> None:
    parameters = parse_parameters(
        [
            ("env", "A=1"),
            ("label", "team=shop"),
            ("user", "app"),
            ("workdir", "/srv"),
            ("hostname", "web"),
            ("shm-size", "128m"),
        ]
    )
    assert parameters == Parameters(
        env=(("A", "1"),),
        labels=(("team", "shop"),),
        user="app",
        workdir="/srv",
        hostname="web",
        shm_bytes=128 * 1024 * 1024,
    )


def test_unsupported_parameter_is_named() -> None:
    with pytest.raises(BundleError, match="'pid'"):
        parse_parameters([("pid", "host")])


@pytest.mark.parametrize(
    ("text", "size"),
    [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("100", 100), ("2GB", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size() -> None:
    with pytest.raises(BundleError):
        parse_size("lots")


# ---- the whole config -------------------------------------------------------------------------


def inputs(**changes: Any) -> BundleInputs:
    values: dict[str, Any] = {
        "kind": "DOCKER",
        "cmd": None,
        "args": None,
        "image_config": {"Env": ["PATH=/bin", "A=image"], "Cmd": ["httpd"], "WorkingDir": ""},
        "env": {"A": "task", "PORT0": "80"},
        "user": ContainerUser(0, 0, (), "/root", "root"),
        "parameters": Parameters(),
        "sandbox": "/var/lib/tessera/sandboxes/t1",
        "rootfs": "/var/lib/tessera/containers/t1/rootfs",
        "cgroups_path": "/tessera/agent-1/t1/ctr",
        "hostname": "t1",
    }
    values.update(changes)
    return BundleInputs(**values)


def test_environment_layers_image_then_task_then_parameters() -> None:
    env = container_env(inputs(parameters=Parameters(env=(("B", "param"),))))
    assert env["PATH"] == "/bin"  # the image's
    assert env["A"] == "task"  # the task's env wins over the image's
    assert env["B"] == "param"
    assert env["MESOS_SANDBOX"] == SANDBOX_PATH
    assert env["HOME"] == "/root"


def test_working_directory_defaults() -> None:
    assert working_dir(inputs()) == "/"
    assert working_dir(inputs(kind="MESOS")) == SANDBOX_PATH
    assert working_dir(inputs(image_config={"WorkingDir": "/app"})) == "/app"
    assert working_dir(inputs(parameters=Parameters(workdir="/srv"))) == "/srv"


def test_config_of_an_unprivileged_bridged_container() -> None:
    config = build_config(inputs(netns="/run/netns/t1"))
    process = config["process"]
    assert process["args"] == ["httpd"]
    assert process["terminal"] is False
    assert process["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["effective"]
    linux = config["linux"]
    assert linux["cgroupsPath"] == "/tessera/agent-1/t1/ctr"
    assert {"type": "network", "path": "/run/netns/t1"} in linux["namespaces"]
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "/proc/kcore" in linux["maskedPaths"]
    sandbox = next(m for m in config["mounts"] if m["destination"] == SANDBOX_PATH)
    assert sandbox["source"] == "/var/lib/tessera/sandboxes/t1"
    sysfs = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert "ro" in sysfs["options"]


def test_host_network_joins_no_network_namespace() -> None:
    namespaces = build_config(inputs())["linux"]["namespaces"]
    assert [n["type"] for n in namespaces] == ["pid", "ipc", "uts", "mount"]


def test_non_root_users_get_no_effective_capabilities() -> None:
    config = build_config(inputs(user=ContainerUser(1000, 1000, (50,), "/home/app", "app")))
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert config["process"]["capabilities"]["effective"] == []


def test_privileged_containers_get_every_capability_and_device() -> None:
    config = build_config(inputs(privileged=True))
    assert "CAP_SYS_ADMIN" in config["process"]["capabilities"]["effective"]
    assert config["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "maskedPaths" not in config["linux"]


def test_shm_size_and_labels() -> None:
    parameters = Parameters(labels=(("team", "shop"),), shm_bytes=1 << 27)
    config = build_config(inputs(parameters=parameters))
    shm = next(m for m in config["mounts"] if m["destination"] == "/dev/shm")
    assert f"size={1 << 27}" in shm["options"]
    assert config["annotations"]["team"] == "shop"


# ---- overlay options ----------------------------------------------------------------------------


def test_overlay_lists_the_top_layer_first_with_short_names() -> None:
    options = overlay_options(3, "/s/upper", "/s/work")
    assert options == "lowerdir=l/2:l/1:l/0,upperdir=/s/upper,workdir=/s/work"


def test_many_layers_fit_in_one_page() -> None:
    assert len(overlay_options(120, "/a" * 100, "/b" * 100)) < MAX_MOUNT_OPTIONS


def test_too_many_layers_are_refused() -> None:
    with pytest.raises(RootfsError, match="too many layers"):
        overlay_options(2000, "/u", "/w")


# ---- why runc could not start a container ----------------------------------------------------


def test_runc_start_errors_are_read_from_its_log_line() -> None:
    line = (
        'time="2026-12-06T03:03:50Z" level=error msg="runc run failed: unable to start '
        'container process: exec: \\"httpd\\": executable file not found in $PATH"\n'
    )
    assert runc_start_error("some output\n" + line) == (
        'unable to start container process: exec: "httpd": executable file not found in $PATH'
    )
    assert runc_start_error("the program's own error\n") is None
