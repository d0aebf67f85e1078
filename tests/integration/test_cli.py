"""The CLI against the session cluster: exit codes and exact messages."""

from __future__ import annotations

import pytest

from conftest import rayfleet_cli
from rayfleet.testing.tiny_model import SAMPLE_TEXTS, greedy_translations

pytestmark = pytest.mark.integration


def test_services_lists_the_translator(translator):
    r = rayfleet_cli("services")
    assert r.returncode == 0, r.stderr
    assert "translator" in r.stdout and "RUNNING" in r.stdout and translator[1] in r.stdout


def test_translate_command(translator, tiny_model):
    """One line per text, in order, each the in-process greedy translation (the service's limits)."""
    spec, url = translator
    texts = SAMPLE_TEXTS[:2]
    expected = greedy_translations(tiny_model, texts, max_new_tokens=spec.generation.max_new_tokens)
    assert expected[texts[0]] != expected[texts[1]] and all(expected.values())  # the check can tell them apart
    r = rayfleet_cli("translate", *texts, "--url", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [expected[t] for t in texts]


def test_translate_error_is_one_line_and_a_hint(translator):
    _, url = translator
    hint = f"hint: Fix the request; the service's limits are at {url}/info (limits)."
    r = rayfleet_cli("translate", "x" * 300, "--url", url)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: {url}/translate answered 413: text has 300 characters; the limit is 200", hint]
    r = rayfleet_cli("translate", "", "--url", url)   # FastAPI's validation list, read out (not a Python repr)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"error: {url}/translate answered 422: text: text must not be empty", hint]


def test_delete_unknown_service(translator):
    r = rayfleet_cli("services", "delete", "nope")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: No service named 'nope' (deployed: translator).",
        "hint: List them with: rayfleet services",
    ]


def test_serve_bad_spec_exact_error(tmp_path, local_cluster):
    p = tmp_path / "service.yaml"
    p.write_text("name: en-fr\nbatching:\n  max_batch_sise: 8\n")
    r = rayfleet_cli("serve", str(p), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: {p}:3:3: batching.max_batch_sise: unknown key 'max_batch_sise' — did you mean 'max_batch_size'?",
        f"hint: Fix {p} and run the command again.",
    ]


def test_debug_shows_traceback(tmp_path, local_cluster):
    p = tmp_path / "service.yaml"
    p.write_text("replicas: many\n")
    r = rayfleet_cli("--debug", "serve", str(p))
    assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_dashboard_on_the_local_cluster_is_its_url(local_cluster):
    r = rayfleet_cli("dashboard")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Dashboard: {local_cluster.dashboard_url}  (local cluster; its token: {local_cluster.token_path})\n"
