"""`rayfleet ui` and `rayfleet models` on a fleet whose registry this machine can't see (its storage.path not
mounted here, or no storage at all): one clear error with the fix, exit 1, nothing created here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

EXE = str(Path(sys.executable).parent / "rayfleet")


@pytest.mark.parametrize("verb", [["ui", "--port", "5999"], ["models"]])
def test_a_fleet_storage_not_mounted_here_is_named_with_the_fix(tmp_path, verb):
    shared = tmp_path / "not-mounted" / "shared"
    (tmp_path / "fleet.yaml").write_text(f"name: lab\nhead:\n  host: 127.0.0.1\nstorage:\n  path: {shared}\n")
    (tmp_path / "bare.yaml").write_text("name: lab\nhead:\n  host: 127.0.0.1\n")
    env = {"PATH": "/usr/bin:/bin", "RAYFLEET_HOME": str(tmp_path / "home")}
    r = subprocess.run([EXE, *verb, "-f", "fleet.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"error: The storage path {shared} of fleet 'lab' does not exist on this machine.",
        "hint: Mount the fleet's shared storage here at the same path as on the nodes, or run rayfleet on a "
        "node of the fleet."], r.stderr
    assert not (tmp_path / "not-mounted").exists()      # no empty registry made where the share should be
    r = subprocess.run([EXE, *verb, "-f", "bare.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: Fleet 'lab' has no shared storage"), r.stderr
    assert "hint: Add 'storage: {path: /mnt/shared}' to fleet.yaml" in r.stderr
