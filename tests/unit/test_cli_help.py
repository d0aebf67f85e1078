"""Every command has help with an example; user errors without a cluster are one clean line."""

from __future__ import annotations

import pytest

from conftest import rayfleet_cli

pytestmark = pytest.mark.unit

COMMANDS = [["up"], ["down"], ["status"], ["serve"], ["services"], ["services", "delete"], ["translate"],
            ["init"], ["check"], ["install"], ["exec"], ["logs"], ["export-ray-config"], ["dashboard"], ["train"], ["tune"], ["jobs"],
            ["models"], ["translate-file"], ["metrics"], ["metrics", "url"], ["metrics", "query"], ["metrics", "grafana"], ["top"], ["ui"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_an_example(cmd):
    r = rayfleet_cli(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Example: rayfleet " + cmd[0] in r.stdout


def test_commands_need_a_running_cluster(tmp_path):
    env = {"RAYFLEET_HOME": str(tmp_path / "empty")}
    r = rayfleet_cli("status", env=env)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: No local cluster is running (no {tmp_path}/empty/local.json).",
        "hint: Start one with: rayfleet up --local",
    ]
    r = rayfleet_cli("down", "--local", env=env)
    assert r.returncode == 0 and "No local cluster is running" in r.stdout


def test_up_without_fleet_file_explains(tmp_path):
    r = rayfleet_cli("up", env={"RAYFLEET_HOME": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: fleet.yaml: no such file.",
        "hint: Write one with 'rayfleet init --head HOST --worker HOST ...', pass -f FILE, "
        "or use --local for a cluster on this machine.",
    ]


def test_init_writes_a_fleet_that_gets_the_runtime_unless_given_a_venv(tmp_path):
    import getpass

    from rayfleet.config.fleet import FleetSpec
    from rayfleet.config.loader import load_model

    r = rayfleet_cli("init", "--head", "10.0.0.1", "--worker", "gpu1.lan", "-o", str(tmp_path / "a.yaml"))
    assert r.returncode == 0, r.stderr
    spec = load_model(FleetSpec, tmp_path / "a.yaml")
    assert spec.shipped and spec.runtime.path == "~/.rayfleet/runtime" and spec.ssh.user == getpass.getuser()
    assert [w.host for w in spec.workers] == ["gpu1.lan"]
    r = rayfleet_cli("init", "--head", "10.0.0.1", "--venv", "/opt/venv", "--ssh-user", "rayfleet",
                     "-o", str(tmp_path / "b.yaml"))
    assert r.returncode == 0, r.stderr
    spec = load_model(FleetSpec, tmp_path / "b.yaml")
    assert spec.python == "/opt/venv" and not spec.shipped and spec.ssh.user == "rayfleet"
