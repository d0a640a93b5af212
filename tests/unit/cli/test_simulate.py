"""`tessera simulate`, run in-process: file formats, the plan it writes, one-line errors."""

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tessera.cli.simulate import simulate

EXAMPLES = Path(__file__).parents[3] / "docs" / "examples"

app = typer.Typer()
app.command()(simulate)
runner = CliRunner()


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def run(
    tmp_path: Path, cluster: Any, workload: Any, *extra: str
) -> tuple[int, str, dict[str, Any] | None]:
    output = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        [
            "--cluster",
            str(write(tmp_path, "cluster.json", cluster)),
            "--workload",
            str(write(tmp_path, "workload.json", workload)),
            "--output",
            str(output),
            *extra,
        ],
    )
    plan = json.loads(output.read_text()) if output.exists() else None
    return result.exit_code, result.output, plan


AGENT = {
    "id": "a",
    "hostname": "h",
    "resources": {"cpus": 4, "mem": 4096, "disk": 1000, "gpus": 0, "ports": [[31000, 31009]]},
    "attributes": {"zone": "z1"},
    "count": 3,
}


def test_places_and_writes_the_plan(tmp_path: Path) -> None:
    workload = {
        "apps": [
            {"id": "/web", "instances": 4, "cpus": 1, "mem": 512, "portDefinitions": [{"port": 0}]},
            {"id": "/db", "instances": 2, "cpus": 1, "mem": 8192},
        ]
    }
    code, output, plan = run(tmp_path, {"agents": [AGENT]}, workload)
    assert code == 0, output
    assert plan is not None
    assert set(plan) == {"placements", "unplaced", "summary"}
    assert plan["placements"][0] == {"app": "/web", "instance": 0, "agent": "a-0", "ports": [31000]}
    (unplaced,) = plan["unplaced"]
    assert unplaced["app"] == "/db" and unplaced["count"] == 2
    # Each of the 3 agents is counted once; all lack memory, one may be out of cpus first.
    assert sum(unplaced["reasons"].values()) == 3 and "InsufficientMemory" in unplaced["reasons"]
    summary = plan["summary"]
    # Replicas spread: no agent holds more than two of the four /web instances.
    assert summary["placed"] == 4 and summary["unplaced"] == 2 and summary["agents_used"] == 2
    assert summary["utilization"]["cpus"] == pytest.approx(4 / 12, abs=1e-4)
    assert summary["utilization"]["mem"] == pytest.approx(2048 / 12288, abs=1e-4)
    assert summary["seconds"] >= 0
    assert "placed" in output and "InsufficientMemory" in output


def test_count_stamps_out_suffixed_copies(tmp_path: Path) -> None:
    workload = {
        "apps": [
            {
                "id": "/x",
                "instances": 3,
                "cpus": 4,
                "mem": 1,
                "constraints": [["hostname", "UNIQUE"]],
            }
        ]
    }
    _, _, plan = run(tmp_path, {"agents": [AGENT]}, workload)
    assert plan is not None
    assert sorted(p["agent"] for p in plan["placements"]) == ["a-0", "a-1", "a-2"]


def test_a_single_agent_keeps_its_id_and_hostname_defaults_to_it(tmp_path: Path) -> None:
    agent = {"id": "solo", "resources": {"cpus": 1, "mem": 256}}
    workload = {
        "apps": [
            {
                "id": "x",
                "instances": 1,
                "cpus": 1,
                "mem": 128,
                "constraints": [["hostname", "CLUSTER", "solo"]],
            }
        ]
    }
    code, output, plan = run(tmp_path, {"agents": [agent]}, workload)
    assert code == 0, output
    assert plan is not None
    assert plan["placements"] == [{"app": "/x", "instance": 0, "agent": "solo", "ports": []}]


def test_spread_policy(tmp_path: Path) -> None:
    workload = {"apps": [{"id": "/x", "instances": 3, "cpus": 1, "mem": 1}]}
    _, _, binpacked = run(tmp_path, {"agents": [AGENT]}, workload, "--no-spread-replicas")
    _, _, spread = run(tmp_path, {"agents": [AGENT]}, workload, "--policy", "spread")
    _, _, replicas = run(tmp_path, {"agents": [AGENT]}, workload)
    assert binpacked is not None and spread is not None and replicas is not None
    assert binpacked["summary"]["agents_used"] == 1
    assert spread["summary"]["agents_used"] == 3
    # Binpack spreads the replicas of one app by default.
    assert replicas["summary"]["agents_used"] == 3


def test_marathon_defaults_and_unknown_marathon_fields(tmp_path: Path) -> None:
    workload = {"apps": [{"id": "/x", "cmd": "sleep 100", "container": {"type": "DOCKER"}}]}
    code, output, plan = run(tmp_path, {"agents": [AGENT]}, workload)
    assert code == 0, output
    assert plan is not None and plan["summary"]["placed"] == 1
    assert plan["summary"]["utilization"]["cpus"] == pytest.approx(1 / 12, abs=1e-4)


def test_without_output_prints_the_summary_only(tmp_path: Path) -> None:
    cluster = write(tmp_path, "c.json", {"agents": [AGENT]})
    workload = write(tmp_path, "w.json", {"apps": [{"id": "/x"}]})
    result = runner.invoke(app, ["--cluster", str(cluster), "--workload", str(workload)])
    assert result.exit_code == 0
    assert "agents used" in result.output
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize(
    ("cluster", "workload", "message"),
    [
        ("{not json", {"apps": []}, "cluster.json: not valid JSON"),
        (
            {"agents": [{"id": "a"}]},
            {"apps": []},
            "cluster.json: agents/0/resources: Field required",
        ),
        (
            {"agents": [{**AGENT, "resources": {"cpus": -1}}]},
            {"apps": []},
            "cluster.json: agents/0/resources/cpus: Input should be greater than or equal to 0",
        ),
        ({"agents": [{**AGENT, "count": 0}]}, {"apps": []}, "agents/0/count"),
        (
            {"agents": [{**AGENT, "resources": {"ports": [[32000, 31000]]}}]},
            {"apps": []},
            "agents/0/resources/ports: invalid port range 32000-31000",
        ),
        (
            {"agents": [{**AGENT, "resources": {"ports": [[1, 10], [5, 20]]}}]},
            {"apps": []},
            "ports: port ranges 1-10 and 5-20 overlap",
        ),
        ({"agents": [AGENT, AGENT]}, {"apps": []}, "agents/1/id: duplicate agent id a-0"),
        (
            {"agents": [AGENT]},
            {"apps": [{"id": "/x", "cpus": 0}]},
            "workload.json: apps/0/cpus: Input should be greater than or equal to 0.001",
        ),
        ({"agents": [AGENT]}, {"apps": [{"id": "/X Y"}]}, "apps/0/id: must be a path"),
        ({"agents": [AGENT]}, {"apps": [{"instances": 1}]}, "apps/0/id: Field required"),
        (
            {"agents": [AGENT]},
            {"apps": [{"id": "/x", "constraints": [["hostname", "MAX_PER"]]}]},
            "apps/0/constraints/0: constraint ['hostname', 'MAX_PER']: MAX_PER requires a value",
        ),
        (
            {"agents": [AGENT]},
            {"apps": [{"id": "/x"}, {"id": "x"}]},
            "apps/1/id: duplicate app id /x",
        ),
        (
            {"agents": [AGENT]},
            {"apps": [{"id": "/x", "portDefinitions": [{"port": 70000}]}]},
            "apps/0/portDefinitions/0/port",
        ),
        (
            {"agents": [AGENT]},
            {
                "apps": [
                    {
                        "id": "/x",
                        "portDefinitions": [{"port": 80}, {"port": 80}],
                        "requirePorts": True,
                    }
                ]
            },
            "apps/0: request /x: required host ports must be distinct",
        ),
        ({"agents": [AGENT]}, {"applications": []}, "workload.json: apps: Field required"),
    ],
)
def test_bad_files_get_one_clear_line_and_exit_code_2(
    tmp_path: Path, cluster: Any, workload: Any, message: str
) -> None:
    code, output, plan = run(tmp_path, cluster, workload)
    assert code == 2
    assert plan is None
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert message in " ".join(output.split()), output


def test_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--cluster", str(tmp_path / "nope.json"), "--workload", str(tmp_path / "w.json")]
    )
    assert result.exit_code == 2
    assert "nope.json: cannot read" in result.output


def test_documented_examples_run(tmp_path: Path) -> None:
    output = tmp_path / "plan.json"
    result = runner.invoke(
        app,
        [
            "--cluster",
            str(EXAMPLES / "simulate-cluster.json"),
            "--workload",
            str(EXAMPLES / "simulate-workload.json"),
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(output.read_text())
    assert plan["summary"]["placed"] > 0


def _current(tmp_path: Path, placements: list[dict[str, Any]]) -> str:
    return str(write(tmp_path, "current.json", {"placements": placements, "unplaced": []}))


def test_current_plan_then_rebalance_frees_agents(tmp_path: Path) -> None:
    agent = {**AGENT, "count": 4}
    workload = {"apps": [{"id": "/web", "instances": 3, "cpus": 1, "mem": 512}]}
    # One instance per agent on a0-a2, plus one of a deleted app on a3.
    now = [{"app": "/web", "instance": i, "agent": f"a-{i}", "ports": []} for i in range(3)]
    now.append({"app": "/gone", "instance": 0, "agent": "a-3", "ports": []})
    code, output, plan = run(
        tmp_path, {"agents": [agent]}, workload, "--current", _current(tmp_path, now), "--rebalance"
    )
    assert code == 0, output
    assert plan is not None
    assert plan["summary"]["agents_before"] == 3 and plan["summary"]["agents_after"] == 2
    (move,) = plan["moves"]
    assert move["app"] == "/web" and move["instance"] in (0, 1, 2)
    agents = {p["agent"] for p in plan["placements"]}
    assert len(agents) == 2 and move["to"] in agents and move["from"] not in agents
    assert "rebalance: 1 moves" in output


def test_missing_instances_are_placed_and_nothing_to_gain_says_so(tmp_path: Path) -> None:
    unique = [["hostname", "UNIQUE"]]
    workload = {"apps": [{"id": "/web", "instances": 2, "cpus": 1, "constraints": unique}]}
    now = [{"app": "/web", "instance": 1, "agent": "a-0", "ports": []}]
    code, output, plan = run(
        tmp_path, {"agents": [AGENT]}, workload, "--current", _current(tmp_path, now), "--rebalance"
    )
    assert code == 0, output
    assert plan is not None and plan["moves"] == []
    assert sorted(p["instance"] for p in plan["placements"]) == [0, 1]
    assert plan["summary"]["rebalance"].startswith("nothing to gain")
    assert "nothing to gain" in output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rebalance", "--max-moves", "-1"], "--max-moves: must be >= 0"),
        (["--max-moves", "3"], "--max-moves: only with --rebalance"),
    ],
)
def test_bad_max_moves_is_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    workload = {"apps": [{"id": "/web"}]}
    code, output, _ = run(tmp_path, {"agents": [AGENT]}, workload, *extra)
    assert code == 2 and message in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("placements", "field"),
    [
        ([{"app": "/web", "instance": -1, "agent": "a-0"}], "placements/0/instance"),
        ([{"app": "/web", "instance": 0, "agent": "nowhere"}], "placements/0/agent"),
        ([{"app": "/web", "agent": "a-0"}], "placements/0/instance"),
    ],
)
def test_malformed_current_plan_names_the_field(
    tmp_path: Path, placements: list[dict[str, Any]], field: str
) -> None:
    workload = {"apps": [{"id": "/web"}]}
    current = _current(tmp_path, placements)
    code, output, _ = run(tmp_path, {"agents": [AGENT]}, workload, "--current", current)
    assert code == 2 and field in output and len(output.strip().splitlines()) == 1
