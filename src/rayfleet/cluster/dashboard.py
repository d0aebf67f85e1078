"""Reading a cluster's state from its dashboard (the REST API Ray's state CLI uses)."""

from __future__ import annotations

import requests

from rayfleet.errors import ClusterError, ClusterNotRunning

__all__ = ["list_nodes", "resource_usage", "get_json"]


def get_json(dashboard_url: str, path: str, headers: dict[str, str], timeout_s: float, error: type, api: str):
    """GET ``path`` of the dashboard, as JSON: what Ray's Jobs and Serve clients read, but with a timeout
    (theirs wait without end; a dashboard started again by a restarted head was seen not to answer for
    minutes). ``error(...)`` when it doesn't answer within ``timeout_s``; other failures raise as requests
    does (callers wrap them with ``errors.foreign``)."""
    try:
        r = requests.get(f"{dashboard_url}{path}", headers=headers, timeout=timeout_s)
    except requests.Timeout:
        raise error(f"{api} at {dashboard_url} did not answer within {timeout_s:.0f} s.",
                    hint="A head that has just started again can take a while: try again.") from None
    r.raise_for_status()
    return r.json()


def list_nodes(dashboard_url: str, headers: dict[str, str], timeout_s: float = 10) -> list[dict]:
    """Ray's node table, alive and dead nodes alike."""
    try:
        r = requests.get(f"{dashboard_url}/api/v0/nodes", params={"detail": "true", "limit": 1000},
                         headers=headers, timeout=timeout_s)
    except requests.RequestException as e:
        raise ClusterNotRunning(f"The dashboard at {dashboard_url} does not answer: {e.__class__.__name__}.",
                                hint="Is the cluster up? Check with: rayfleet status") from e
    if r.status_code != 200:
        raise ClusterError(f"The dashboard answered {r.status_code} when asked for nodes: {r.text[:200]}")
    return r.json().get("data", {}).get("result", {}).get("result", [])


def resource_usage(dashboard_url: str, headers: dict[str, str], timeout_s: float = 10) -> dict[str, dict]:
    """``{"cluster": {resource: (used, total)}, "nodes": [{resource: (used, total)}, ...],
    "pending": [(bundles, count), ...]}`` of the alive nodes; ``pending``: what Ray's tasks and
    actors (one bundle each) and placement groups (their bundles, placed together) wait for: the
    autoscaler's resource and placement-group demands. Totals come from the node table (right from the start); what is used comes
    from the autoscaler's load report (what ``ray status`` shows), which is empty for the
    first seconds of a cluster: then nothing counts as used."""
    nodes = [n for n in list_nodes(dashboard_url, headers, timeout_s) if n.get("state") == "ALIVE"]
    try:
        r = requests.get(f"{dashboard_url}/api/cluster_status", headers=headers, timeout=timeout_s)
        report = (((r.json().get("data") or {}).get("clusterStatus") or {}).get("loadMetricsReport") or {}
                  if r.status_code == 200 else {})
    except (requests.RequestException, ValueError):
        report = {}
    by_node = report.get("usageByNode") or {}
    out_nodes = []
    for n in nodes:
        used = by_node.get(n.get("node_id", ""), {})
        out_nodes.append({k: (float((used.get(k) or [0.0])[0]), float(v))
                          for k, v in (n.get("resources_total") or {}).items()})
    cluster: dict[str, tuple[float, float]] = {}
    for node in out_nodes:
        for k, (u, t) in node.items():
            cu, ct = cluster.get(k, (0.0, 0.0))
            cluster[k] = (cu + u, ct + t)
    pending: list[tuple[tuple[dict[str, float], ...], int]] = []
    for shape, count in report.get("resourceDemand") or []:
        pending.append((({k: float(v) for k, v in shape.items()},), int(count)))
    for group, count in report.get("pgDemand") or []:
        bundles = [{k: float(v) for k, v in shape.items()} for shape, n in group.get("bundles") or []
                   for _ in range(int(n))]
        pending.append((tuple(bundles), int(count)))
    return {"cluster": cluster, "nodes": out_nodes, "pending": pending}
