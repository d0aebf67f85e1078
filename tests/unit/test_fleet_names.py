"""Hosts written as names in fleet.yaml: resolved once on this machine; Ray and the launcher get
addresses, nodes are matched by address; a name that doesn't resolve is a clear error (and a ✗ row
of `rayfleet check`, with no SSH attempted). "localhost" stands in for a name any machine resolves."""

from __future__ import annotations

import pytest

from rayfleet.cluster.launcher import node_plan, render, worker_start_command
from rayfleet.config.fleet import FleetSpec
from rayfleet.errors import HostNotResolved

pytestmark = pytest.mark.unit

SESSION = "session_2026-01-01_00-00-00_000000_1"
UNKNOWN = "no-such-node.invalid"  # .invalid never resolves (RFC 2606)


def _fleet(head: str, worker: str) -> FleetSpec:
    return FleetSpec.model_validate(dict(name="t", head={"host": head}, python="/opt/venv",
                                         workers=[{"host": worker, "resources": {"num_cpus": 3}}],
                                         ssh={"user": "root", "key": "/k"}, security={"auth": "disabled"}))


def test_names_become_addresses_for_ray_and_the_launcher():
    fleet = _fleet("localhost", "127.0.0.9")
    assert (fleet.head.address, fleet.head.label) == ("127.0.0.1", "localhost (127.0.0.1)")
    assert fleet.workers[0].label == "127.0.0.9"
    cfg = render(fleet, None)
    assert cfg["provider"]["head_ip"] == "127.0.0.1" and cfg["provider"]["worker_ips"] == ["127.0.0.9"]
    start = worker_start_command(fleet, SESSION)
    assert '"head": "127.0.0.1:6379"' in start and "localhost" not in start
    plan = node_plan(fleet)
    assert plan["resources"]["127.0.0.9"] == ["--num-cpus=3"]  # per-node resources chosen by the node's address
    assert fleet.node("localhost") is fleet.head and fleet.node("127.0.0.1") is fleet.head
    assert fleet.node("127.0.0.9") is fleet.workers[0] and fleet.node("elsewhere") is None


def test_a_name_that_does_not_resolve_is_a_clear_error():
    fleet = _fleet("127.0.0.1", UNKNOWN)
    with pytest.raises(HostNotResolved) as e:
        render(fleet, None)
    assert e.value.message.startswith(f"Host name '{UNKNOWN}' of the fleet does not resolve on this machine (")
    assert e.value.hint == ("Add it to DNS or /etc/hosts (here and on the nodes), or write its IP address in "
                            "fleet.yaml.")


def test_check_reports_an_unresolved_name_without_trying_ssh():
    from rayfleet.cluster.preflight import _HostCheck

    fleet = _fleet("127.0.0.1", UNKNOWN)
    check = _HostCheck(fleet, fleet.workers[0], runner=None, nonce="n")
    check.start()  # would need a runner to log in; an unresolved name never gets that far
    row = check.rows["ssh"]
    assert (row.host, row.ok) == (UNKNOWN, False)
    assert row.detail.startswith("the name does not resolve on this machine (")
    assert row.fix.startswith("add it to DNS or /etc/hosts")


def test_the_launcher_connects_through_a_host_key_check(tmp_path):
    """Ray's launcher ssh (no host key checks of its own) goes through rayfleet's ProxyCommand; the pinned
    keys reach the head for its autoscaler. The command survives Ray's rsync --rsh quoting (no quotes,
    no backslashes)."""
    import shlex
    import subprocess

    from rayfleet.cluster.launcher import proxy_command, remote_known_hosts

    fleet = _fleet("localhost", "127.0.0.9")
    known = tmp_path / "known_hosts"
    cfg = render(fleet, None, known)
    proxy = cfg["auth"]["ssh_proxy_command"]
    assert proxy == proxy_command(fleet) and cfg["file_mounts"][remote_known_hosts(fleet)] == str(known)
    assert '"' not in proxy and "'" not in proxy and "\\" not in proxy
    assert "StrictHostKeyChecking=yes" in proxy and "-W %h:%p" in proxy
    # the shell ssh runs it with expands the fleet's files where set, else the head's copies
    env = {"RAYFLEET_KNOWN_HOSTS": str(known), "RAYFLEET_SSH_KEY": "/k", "HOME": "/home/u", "PATH": "/usr/bin:/bin"}
    words = subprocess.run(["bash", "-c", "printf '%s\\n' " + proxy.replace("%", "%%")], env=env,
                           capture_output=True, text=True).stdout.split("\n")
    assert f"UserKnownHostsFile={known}" in words and "/k" in words
    del env["RAYFLEET_KNOWN_HOSTS"], env["RAYFLEET_SSH_KEY"]
    words = subprocess.run(["bash", "-c", "printf '%s\\n' " + proxy.replace("%", "%%")], env=env,
                           capture_output=True, text=True).stdout.split("\n")
    assert "UserKnownHostsFile=/home/u/.rayfleet/t/known_hosts" in words and "/home/u/ray_bootstrap_key.pem" in words
    assert shlex.split(proxy)[0] == "ssh"
    assert "ssh_proxy_command" not in render(fleet, None)["auth"]
