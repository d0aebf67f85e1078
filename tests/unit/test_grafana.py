"""rayfleet metrics grafana's files: Ray's dashboards and rayfleet's, provisioning that points at them."""

from __future__ import annotations

import json

import pytest
import yaml

from rayfleet.cluster import grafana

pytestmark = pytest.mark.unit


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards(tmp_path):
    files = grafana.write(tmp_path / "g", "http://127.0.0.1:9090")
    names = sorted(f.name for f in files if f.suffix == ".json")
    assert "rayfleet.json" in names and {"ray_default.json", "ray_serve.json", "ray_train.json"} <= set(names)
    ds = yaml.safe_load((tmp_path / "g/provisioning/datasources/rayfleet.yml").read_text())
    assert ds["datasources"][0] == {"name": "Prometheus", "type": "prometheus", "access": "proxy",
                                         "isDefault": True, "url": "http://127.0.0.1:9090"}
    prov = yaml.safe_load((tmp_path / "g/provisioning/dashboards/rayfleet.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == str(tmp_path / "g" / "dashboards")
    for f in files:
        if f.suffix == ".json":
            json.loads(f.read_text())   # every dashboard is JSON Grafana can load


def test_every_expression_is_concrete_with_all_variables_at_all():
    for name, content in {**grafana.ray_dashboards(), "rayfleet": json.dumps(grafana.rayfleet_dashboard())}.items():
        d = json.loads(content)
        exprs = grafana.expressions(d)
        assert exprs, name
        for e in exprs:
            assert "$" not in grafana.concrete(e, d), (name, e)
    d = grafana.rayfleet_dashboard()
    assert grafana.concrete('x{application=~"$service"}[$__rate_interval]', d) == 'x{application=~".*"}[1m]'
    # no two panels overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
