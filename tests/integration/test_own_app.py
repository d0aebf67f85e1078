"""Your own Serve app as a rayfleet service (examples/own-app) on the session cluster, through
``rayfleet.connect()`` and the CLI: deploy, call, update under load (0 failed requests),
a builder's args, a bound app, errors that keep the previous version serving, delete.

Cost: ~3 min on 2 cores.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import ROOT, rayfleet_cli
from rayfleet.errors import ServeError
from rayfleet.serve.deploy import delete_service

pytestmark = pytest.mark.integration

APP_DIR = ROOT / "examples" / "own-app"
POSITIVE = "a great, friendly place"   # score 0.96 with the example's weights


@pytest.fixture(scope="module")
def cluster(local_cluster):
    import rayfleet

    c = rayfleet.connect()
    yield c
    for s in c.services():
        if s.kind == "app":
            c.delete_service(s.name)


def predict(url: str, text: str, timeout: float = 30) -> tuple[int, dict]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("POST", f"{u.path}/predict", body=json.dumps({"text": text}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body or b"null")
        except ValueError:  # not the app's answer (HAProxy's 404 page)
            return r.status, body.decode(errors="replace")
    finally:
        conn.close()


def spec_v(version: str, threshold: float) -> dict:
    spec = yaml.safe_load((APP_DIR / "service.yaml").read_text())
    spec["app"]["working_dir"] = str(APP_DIR)
    spec["app"]["env"] = {"APP_VERSION": version}
    spec["app"]["args"] = {"threshold": threshold}
    return spec


def test_own_app_deploy_update_under_load_errors_and_delete(cluster, tmp_path):
    status = cluster.serve(APP_DIR / "service.yaml")
    assert (status.name, status.kind, status.status, status.replicas, status.model) == \
        ("sentiment", "app", "RUNNING", 1, "app:build")
    url = status.url
    assert url.endswith("/sentiment")
    assert predict(url, POSITIVE) == (200, {"label": "positive", "score": 0.9608, "version": "1"})
    assert predict(url, "rude and slow")[1]["label"] == "negative"
    assert predict(url, "!!!")[0] == 422               # the app's own validation, passed through
    r = rayfleet_cli("services")
    assert re.search(rf"sentiment\s+│\s+app\s+│\s+RUNNING\s+│\s+1\s+│\s+app:build\s+│\s+{re.escape(url)}", r.stdout), \
        r.stdout

    # Update in place under load: a new version (env) with another builder argument; no request fails.
    stop = threading.Event()
    failures: list[str] = []
    versions: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                code, body = predict(url, POSITIVE)
                if code != 200:
                    failures.append(f"{code} {body}")
                else:
                    versions.append(body["version"])
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        status = cluster.serve(spec_v("2", 0.99))
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"update under load: {len(versions)} requests, {len(failures)} failed")
    assert failures == []
    assert "1" in versions and versions[-1] == "2" and len(versions) > 50
    assert predict(url, POSITIVE)[1] == {"label": "negative", "score": 0.9608, "version": "2"}  # threshold 0.99

    # A missing attribute: the deploy fails with the error; version 2 keeps serving.
    bad = spec_v("3", 0.5)
    bad["app"]["import_path"] = "app:nothing"
    with pytest.raises(ServeError) as e:
        cluster.serve(bad, timeout_s=120)
    assert e.value.message == "Service 'sentiment' can't be built: AttributeError: module 'app' has no attribute 'nothing'"
    assert e.value.hint == "Fix it and run 'rayfleet serve' again; the running service was not touched."
    assert {predict(url, POSITIVE)[1]["version"] for _ in range(10)} == {"2"}
    assert [(s.status, s.replicas) for s in cluster.services() if s.name == "sentiment"] == [("RUNNING", 1)]

    # An import error in the app's module: the same, from the build.
    broken_import = tmp_path / "broken-import"
    shutil.copytree(APP_DIR, broken_import)
    (broken_import / "app.py").write_text("import not_installed_module\n" + (APP_DIR / "app.py").read_text())
    with pytest.raises(ServeError) as e:
        cluster.serve(broken_import / "service.yaml", timeout_s=120)
    assert e.value.message == ("Service 'sentiment' can't be built: app.py, line 1, in <module>: ModuleNotFoundError: "
                               "No module named 'not_installed_module'")
    assert {predict(url, POSITIVE)[1]["version"] for _ in range(5)} == {"2"}

    # An exception in the replica's constructor (its weights file is missing), through the CLI:
    # one error line with the file, line and message; version 2 keeps serving.
    broken = tmp_path / "broken"
    shutil.copytree(APP_DIR, broken)
    (broken / "model.json").unlink()
    r = rayfleet_cli("serve", str(broken / "service.yaml"), "--timeout", "300", timeout=400)
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert re.fullmatch(r"error: Service 'sentiment' failed to deploy \((DEPLOY_FAILED|UNHEALTHY)\): app\.py, line "
                        r"\d+, in __init__: FileNotFoundError: \[Errno 2\] No such file or directory: '.*model\.json'",
                        first), r.stderr
    assert r.stderr.splitlines()[-1] == ("hint: Fix the cause above, then run 'rayfleet serve' again. The previous "
                                         "version keeps serving.")
    assert {predict(url, POSITIVE)[1]["version"] for _ in range(10)} == {"2"}

    # import_path naming a bound app (not a builder), the app's own sizing; then delete it.
    bound = {"name": "sentiment-bound", "route_prefix": "/bound",
             "app": {"import_path": "app:deployment", "working_dir": str(APP_DIR)}}
    s = cluster.serve(bound)
    assert (s.kind, s.replicas) == ("app", 1)
    assert predict(s.url, POSITIVE)[1]["label"] == "positive"
    bound["app"]["args"] = {"threshold": 0.2}
    with pytest.raises(ServeError) as e:
        cluster.serve(bound, timeout_s=120)
    assert e.value.message.startswith("Service 'sentiment-bound' can't be built: ValueError: Arguments can only be "
                                      "passed to an application builder function")
    # Deleted without waiting for its replica to drain (Serve's STOPPING, 10 s): no longer routed, listed
    # no more, and it deploys again at once (Serve's config has no entry for an app being deleted).
    delete_service(cluster.serve_target, "sentiment-bound", wait=False)
    assert predict(s.url, POSITIVE)[0] == 404
    assert predict(url, POSITIVE)[0] == 200             # the other service is untouched
    assert "sentiment-bound" not in [x.name for x in cluster.services()]
    del bound["app"]["args"]
    assert cluster.serve(bound).status == "RUNNING" and predict(s.url, POSITIVE)[0] == 200
    delete_service(cluster.serve_target, "sentiment-bound", wait=False)
    assert "sentiment-bound" not in [x.name for x in cluster.services()]

    r = rayfleet_cli("services", "delete", "sentiment")
    assert r.returncode == 0 and r.stdout.strip() == "Deleted service sentiment."
    assert all(s.name != "sentiment" for s in cluster.services())


@pytest.mark.parametrize("spec, expected", [
    ({"app": {"import_path": "app:build", "working_dir": "nope"}},
     ["error: app.working_dir 'nope': no such directory ({dir}/nope).",
      "hint: Give the directory with your app's code, relative to the service spec."]),
    ({"app": {"import_path": "sentiment_app:build", "working_dir": "."}},
     ["error: app.import_path 'sentiment_app:build': there is no sentiment_app.py or sentiment_app/ in the app's "
      "working_dir {dir}.",
      "hint: Point app.working_dir at the directory that holds the module, or fix app.import_path."]),
    ({"app": {"import_path": "app"}}, None),
    ({"app": {"import_path": "app:build"}, "model": "Helsinki-NLP/opus-mt-en-fr"}, None),
])
def test_bad_app_specs_fail_before_deploying(cluster, tmp_path, spec, expected):
    (tmp_path / "app.py").write_text("x = 1\n")
    p = tmp_path / "service.yaml"
    p.write_text(yaml.safe_dump({"name": "mine", **spec}))
    r = rayfleet_cli("serve", str(p), cwd=tmp_path)
    print(r.stderr)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    if expected is not None:
        assert r.stderr.splitlines() == [e.format(dir=tmp_path) for e in expected]
    else:
        assert r.stderr.startswith(f"error: {p}")
    assert all(s.name != "mine" for s in cluster.services())
