"""Reading a cluster's state from its dashboard (the REST API Ray's state CLI uses)."""

from __future__ import annotations

import requests

from rayfleet.errors import ClusterError, ClusterNotRunning

__all__ = ["list_nodes"]


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
