"""The private internals rayfleet's adapters (``rayfleet._compat``) use still have the shape the
adapters were written for: each test fails when an upgrade moves, renames or reshapes one."""

from __future__ import annotations

import inspect
import re
import sys
import zipfile
from pathlib import Path

import pytest

from rayfleet._compat import WRITTEN_FOR, require
from rayfleet.errors import CompatError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_adapters_are_written_for_the_versions_pyproject_pins():
    text = (ROOT / "pyproject.toml").read_text()
    for dist, spec in WRITTEN_FOR.items():
        m = re.search(rf'"{re.escape(dist)}(?:\[[^\]]*\])?([=<>!~][^"]+)"', text)
        assert m, dist
        assert m.group(1).replace(" ", "") == spec.replace(" ", ""), dist
        require(dist, "test")  # and the installed one is one of them


def test_another_version_is_one_clear_error_naming_the_adapter():
    with pytest.raises(CompatError) as e:
        require("ray", "rayfleet._compat.ray", installed="2.61.0")
    assert e.value.message == ("rayfleet._compat.ray was written for ray==2.60.0; ray 2.61.0 is installed, "
                               "whose internals it uses may have changed.")
    assert e.value.hint == "Install the version rayfleet pins: pip install 'ray==2.60.0'"
    with pytest.raises(CompatError, match="mlflow 4.0.0 is installed"):
        require("mlflow", "rayfleet._compat.mlflow", installed="4.0.0")


# ---- Ray: packaging a working dir ----------------------------------------------------------

def test_packaging_follows_rays_rules(tmp_path):
    from rayfleet._compat import ray as compat

    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("k")
    (tmp_path / "data" / "big.bin").write_text("b")
    (tmp_path / ".gitignore").write_text("*.bin\n")
    for skipped in (".git", "__pycache__", ".venv"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "f").write_text("s")
    seen: list[str] = []
    compat.walk_package(tmp_path, lambda p: seen.append(str(p.relative_to(tmp_path))) if p.is_file() else None)
    assert sorted(seen) == [".gitignore", "app.py", "data/keep.txt"]

    assert re.fullmatch(r"_ray_pkg_[0-9a-f]{16}\.zip", compat.package_uri_name(tmp_path))
    compat.create_package(tmp_path, tmp_path.parent / "pkg.zip")
    with zipfile.ZipFile(tmp_path.parent / "pkg.zip") as z:
        assert sorted(n for n in z.namelist() if not n.endswith("/")) == [".gitignore", "app.py", "data/keep.txt"]
    assert 1 << 20 <= compat.package_limit() <= 1 << 30


# ---- Ray: Serve --------------------------------------------------------------------------

def test_serve_client_has_the_calls_rayfleet_makes():
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    for method, params in (("deploy_applications", ["self", "config"]), ("get_serve_details", ["self"]),
                           ("delete_applications", ["self"])):
        got = list(inspect.signature(getattr(ServeSubmissionClient, method)).parameters)
        assert got[:len(params)] == params, (method, got)
    assert "headers" in inspect.signature(ServeSubmissionClient).parameters


def test_build_app_from_a_builder_and_size_its_ingress(tmp_path, monkeypatch):
    from rayfleet._compat import ray as compat

    (tmp_path / "compat_app.py").write_text(
        "from ray import serve\n"
        "@serve.deployment\n"
        "class Echo:\n"
        "    def __init__(self, word):\n"
        "        self.word = word\n"
        "def build(args):\n"
        "    return Echo.bind(args['word'])\n"
        "bound = Echo.bind('fixed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        app = compat.build_app("compat_app:build", {"word": "hi"})
        assert compat.ingress(app).name == "Echo"
        compat.set_ingress_options(app, {"num_replicas": 3})
        assert compat.ingress(app).num_replicas == 3
        assert compat.ingress(compat.build_app("compat_app:bound", {})).name == "Echo"
    finally:
        sys.modules.pop("compat_app", None)


# ---- Ray: auth, Train, a node's files and processes -----------------------------------

def test_auth_reload_and_the_torch_backend_hook_exist():
    from ray._raylet import AuthenticationTokenLoader, Config

    assert callable(Config.initialize)
    assert callable(AuthenticationTokenLoader.instance().reset_cache)

    from rayfleet._compat.ray import torch_backend

    assert list(inspect.signature(torch_backend().on_start).parameters) == ["self", "worker_group",
                                                                            "backend_config"]


def test_node_files_and_process_names_match_rays_source():
    import ray._private.services as services
    from ray._private import ray_constants
    import ray.autoscaler._private.local.config as local_config

    from rayfleet._compat import ray as compat

    assert compat.SESSION_LATEST == ray_constants.SESSION_LATEST
    raylet = inspect.getsource(services.start_raylet)
    assert 'f"--gcs-address={gcs_address}"' in raylet and 'f"--session-name={session_name}"' in raylet
    assert compat.raylet_args("h:1", "s") == ("--gcs-address=h:1", "--session-name=s")
    assert services.RAYLET_EXECUTABLE.endswith("/" + compat.RAYLET_COMMAND)
    source = inspect.getsource(local_config)
    assert '"cluster-{}.state"' in source and '"cluster-{}.lock"' in source
    assert compat.launcher_state_files("f", "/d") == ["/d/cluster-f.state", "/d/cluster-f.lock"]
    pattern = compat.ray_process_pattern()
    for proc in ("/x/ray/core/src/ray/raylet/raylet --gcs-address=1", "/x/gcs_server --x", "ray::IDLE",
                 "python -u /x/ray/dashboard/dashboard.py", "python /x/log_monitor.py"):
        assert re.search(pattern, proc), proc


# ---- CTranslate2 and MLflow ------------------------------------------------------------------

def test_the_ctranslate2_converter_hooks_exist():
    from ctranslate2.converters import TransformersConverter
    from ctranslate2.converters.converter import Converter

    assert list(inspect.signature(TransformersConverter._load).parameters) == ["self"]
    assert "self._load()" in inspect.getsource(Converter.convert)
    assert list(inspect.signature(TransformersConverter.load_model).parameters)[:3] == [
        "self", "model_class", "model_name_or_path"]


def test_mlflow_artifact_root_variable_is_set_and_restored(monkeypatch):
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR

    from rayfleet._compat.mlflow import default_artifact_root

    assert ARTIFACT_ROOT_ENV_VAR in inspect.getsource(tracking_utils)  # the store still reads it
    monkeypatch.delenv(ARTIFACT_ROOT_ENV_VAR, raising=False)
    import os

    with default_artifact_root("/srv/artifacts"):
        assert os.environ[ARTIFACT_ROOT_ENV_VAR] == "/srv/artifacts"
    assert ARTIFACT_ROOT_ENV_VAR not in os.environ
