"""cluster/monitoring.py without a Prometheus: its config, where it looks for the binary, its PID record, its
plan (which the head's supervisor ensures after a reboot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from rayfleet.cluster import monitoring as prom

pytestmark = pytest.mark.unit


def test_the_config_scrapes_rays_service_discovery_file_and_prometheus_itself(tmp_path):
    sd = tmp_path / "ray" / "prom_metrics_service_discovery.json"
    conf = yaml.safe_load(prom.config_text(sd, 9191, scrape_interval_s=7))
    assert conf["global"] == {"scrape_interval": "7s", "evaluation_interval": "7s"}
    ray_job, self_job = conf["scrape_configs"]
    assert ray_job == {"job_name": "ray", "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "7s"}]}
    assert self_job["static_configs"] == [{"targets": ["127.0.0.1:9191"]}]
    assert prom.sd_file(tmp_path / "ray") == sd


def test_a_missing_binary_is_named(tmp_path):
    with pytest.raises(prom.MissingPrometheus, match=f"^{tmp_path}/prometheus is not an executable file$"):
        prom.find_binary(str(tmp_path / "prometheus"))
    with pytest.raises(prom.MissingPrometheus, match="^no 'no-such-prometheus-here' on PATH$"):
        prom.find_binary("no-such-prometheus-here")
    exe = tmp_path / "prom"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert prom.find_binary(str(exe)) == str(exe)


def test_the_pid_record_never_names_another_process(tmp_path):
    """A record whose PID now belongs to another process (or to none) is not Prometheus: stop touches nothing."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "prometheus.pid").write_text(json.dumps({"pid": other.pid, "start": 1, "port": 9090}))
        assert prom.running(tmp_path) is None
        assert prom.stop(tmp_path) is False
        assert other.poll() is None and not (tmp_path / "prometheus.pid").exists()
    finally:
        other.kill()
        other.wait()
    (tmp_path / "prometheus.pid").write_text("not json")
    assert prom.running(tmp_path) is None


def test_a_prometheus_that_cannot_start_says_why(tmp_path):
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\necho 'err=\"opening storage failed\"' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(prom.StartFailed) as e:
        prom.start(tmp_path / "p", binary=str(fake), port=1, retention="1d", sd=tmp_path / "sd.json")
    assert "(exit 1)" in str(e.value) and 'opening storage failed' in str(e.value)
    assert not (tmp_path / "p" / "prometheus.pid").exists()
    assert os.stat(tmp_path / "p").st_mode & 0o077 == 0


# A stand-in for Prometheus: answers /-/ready on its --web.listen-address until it is ended.
_FAKE = """#!{python}
import http.server, sys
port = int(next(a for a in sys.argv if a.startswith("--web.listen-address=")).rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ready")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_the_heads_supervisor_starts_the_planned_prometheus_again_and_a_stopped_one_never(tmp_path):
    """`ensure` leaves its plan beside Prometheus; the head's supervisor, after a start (a reboot took
    Prometheus too), starts it again from that plan, in a process that is not the supervisor's child;
    `stop` forgets the plan, and then the supervisor starts nothing."""
    import signal
    import socket

    from rayfleet.cluster.supervisor import HeadSpec, _Supervisor

    fake = tmp_path / "prometheus"
    fake.write_text(_FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path / "prom"
    plan = {"dir": str(d), "port": port, "retention": "1d", "binary": str(fake), "sd": str(tmp_path / "sd.json")}
    assert prom.ensure(plan).startswith("started (PID ")
    assert json.loads((d / prom.PLAN_FILE).read_text()) == plan
    first = prom.running(d)
    os.kill(first, signal.SIGKILL)   # as a reboot does
    for _ in range(50):
        if prom.running(d) is None:
            break
        time.sleep(0.1)
    sup = _Supervisor(HeadSpec(cluster_id="c", args=["true"], log=str(tmp_path / "log"),
                               restarts=str(tmp_path / "restarts.json"), record=str(tmp_path / "record"),
                               monitoring_dir=str(d)))
    try:
        sup.ensure_monitoring()
        again = prom.running(d)
        assert again is not None and again != first and prom.ready(port)
        assert int(open(f"/proc/{again}/stat").read().rsplit(")", 1)[1].split()[1]) != os.getpid()  # not our child
    finally:
        assert prom.stop(d) is True
    assert not (d / prom.PLAN_FILE).exists()
    sup.ensure_monitoring()
    assert prom.running(d) is None
