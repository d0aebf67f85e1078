"""The model registry against SQLite and a real PostgreSQL server (scripts/postgres.sh).

Registration is all or nothing; unknown refs and unreachable databases are
clear errors; ``rayfleet models`` shows what was registered.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, rayfleet_cli
from rayfleet.errors import RegistryError
from rayfleet.registry.store import Registry

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def postgres_uri():
    """A real PostgreSQL server: $RAYFLEET_TEST_PG_URI, else one started by scripts/postgres.sh."""
    if os.environ.get("RAYFLEET_TEST_PG_URI"):
        yield os.environ["RAYFLEET_TEST_PG_URI"]
        return
    env = dict(os.environ)   # the test session's RAYFLEET_HOME: a server of its own, in a new private dir
    env.pop("RAYFLEET_PG_DIR", None)
    script = str(ROOT / "scripts" / "postgres.sh")
    was_running = subprocess.run([script, "uri"], env=env, capture_output=True).returncode == 0
    r = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    if not was_running:   # private: an unguessable dir of mode 0700, a random password in a 0600 file
        pg_dir = Path((Path(env["RAYFLEET_HOME"]) / "postgres.dir").read_text().strip())
        password = (pg_dir / "password").read_text().strip()
        assert pg_dir.name.startswith("rayfleet-pg.") and (pg_dir.stat().st_mode & 0o777) == 0o700
        assert ((pg_dir / "password").stat().st_mode & 0o777) == 0o600 and len(password) >= 24
        assert f":{password}@127.0.0.1:" in r.stdout.strip().splitlines()[-1]
    try:
        yield r.stdout.strip().splitlines()[-1]
    finally:
        if not was_running:
            subprocess.run([script, "remove"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def registry(request, tmp_path_factory) -> Registry:
    """One registry per backend for the module (creating the schema takes seconds)."""
    tmp = tmp_path_factory.mktemp(f"registry-{request.param}")
    if request.param == "sqlite":
        return Registry(f"sqlite:///{tmp}/mlflow.db")
    return Registry(request.getfixturevalue("postgres_uri"), artifact_root=str(tmp / "artifacts"))


def _name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def test_register_show_promote_resolve(registry, tiny_model):
    name = _name()
    run = registry.start_run("registry-test", "run-1", {"training.lr": 0.002})
    registry.log_metrics(run, {"exact_match": 0.5}, step=100)
    v1 = registry.register(name, tiny_model, run, metrics={"exact_match": 0.95, "bleu": 97.5}, alias="staging")
    registry.finish_run(run, ok=True)
    assert (v1.version, v1.aliases, v1.metrics) == ("1", ["staging"], {"exact_match": 0.95, "bleu": 97.5})
    run2 = registry.start_run("registry-test", "run-2", {})
    v2 = registry.register(name, tiny_model, run2, metrics={"exact_match": 0.97})
    assert v2.version == "2"

    registry.promote(name, "1", "production")
    assert registry.by_alias(name, "production").version == "1"
    path = registry.resolve(f"registry://{name}@production")
    assert (path / "config.json").is_file() and (path / "vocab.json").is_file()
    assert registry.resolve(f"registry://{name}/2") != path
    listed = {m.name: m for m in registry.list_models()}[name]
    assert [(v.version, v.aliases) for v in listed.versions] == [("1", ["production", "staging"]), ("2", [])]


def test_unknown_refs_are_clear_errors(registry, tiny_model):
    name = _name()
    run = registry.start_run("registry-test", "run", {})
    registry.register(name, tiny_model, run, metrics={}, alias="staging")
    with pytest.raises(RegistryError) as e:
        registry.resolve(f"registry://{name}/7")
    assert e.value.message == f"Model '{name}' has no version 7 (versions: 1)."
    with pytest.raises(RegistryError) as e:
        registry.resolve(f"registry://{name}@production")
    assert e.value.message == f"Model '{name}' has no alias 'production' (aliases: staging)."
    with pytest.raises(RegistryError) as e:
        registry.resolve("registry://no-such-model/1")
    assert e.value.message.startswith("No registered model 'no-such-model' (registered models: ")


def test_registration_is_all_or_nothing(registry, tiny_model, tmp_path, monkeypatch):
    name = _name()
    run = registry.start_run("registry-test", "run", {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError) as e:
        registry.register(name, empty, run, metrics={})
    assert e.value.message == f"{empty} holds no model (config.json is missing); nothing was registered."

    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", boom)
    with pytest.raises(RegistryError) as e:
        registry.register(name, tiny_model, run, metrics={"bleu": 1.0}, alias="staging")
    assert e.value.message == f"Registering '{name}' failed, nothing was registered: database went away"
    assert name not in {m.name for m in registry.list_models()}


def test_unreachable_database():
    reg = Registry("postgresql://rayfleet:pw@127.0.0.1:1/registry")
    with pytest.raises(RegistryError) as e:
        reg.check(timeout_s=3)
    assert e.value.message.startswith("Can't reach the registry database postgresql")
    assert ":***@127.0.0.1:1/registry" in e.value.message and "pw@" not in e.value.message
    assert e.value.hint.startswith("Check host, port, user, password and database name")


def test_models_cli_against_postgres(postgres_uri, tiny_model, tmp_path):
    name = _name()
    reg = Registry(postgres_uri, artifact_root=str(tmp_path / "artifacts"))
    run = reg.start_run("registry-test", "cli", {})
    reg.register(name, tiny_model, run, metrics={"exact_match": 0.93}, alias="staging")
    r = rayfleet_cli("models", "--registry", postgres_uri, "--name", name)
    assert r.returncode == 0, r.stderr
    assert name in r.stdout and "staging" in r.stdout and "0.930" in r.stdout
    r = rayfleet_cli("models", "--registry", postgres_uri, "promote", name, "1", "--alias", "production")
    assert r.returncode == 0, r.stderr
    assert f"{name}@production -> version 1" in r.stdout
    r = rayfleet_cli("models", "--registry", "postgresql://rayfleet:pw@127.0.0.1:1/registry")
    assert r.returncode == 1
    assert r.stderr.startswith("error: Can't reach the registry database postgresql")


def test_resolve_model_serves_registry_refs(tiny_model, tmp_path, monkeypatch):
    """serve's resolve_model turns registry:// refs into the version's directory."""
    from rayfleet.serve.models import resolve_model

    monkeypatch.setenv("RAYFLEET_REGISTRY_URI", f"sqlite:///{tmp_path}/mlflow.db")
    reg = Registry()
    name = _name()
    reg.register(name, tiny_model, reg.start_run("serve", "r", {}), metrics={}, alias="production")
    assert Path(resolve_model(f"registry://{name}@production"), "config.json").is_file()
    with pytest.raises(RegistryError):
        resolve_model(f"registry://{name}/2")
