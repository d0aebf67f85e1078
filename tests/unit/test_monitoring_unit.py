"""cluster/monitoring.py without a Prometheus: its config, where it looks for the binary, its PID record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
