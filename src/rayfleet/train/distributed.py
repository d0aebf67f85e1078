"""DDP's process group on a fleet: gloo must talk over the node's cluster address.

Gloo picks the address it advertises to the other ranks by resolving the
machine's host name; where that resolves to loopback (Debian/Ubuntu's
``127.0.1.1 HOSTNAME`` in /etc/hosts, containers, the multihost lab) every rank
advertises 127.0.0.1 and ranks on other nodes fail with "Gloo connectFullMesh
failed ... Connection refused, remote=[127.0.0.1]" (or wait for the whole
process-group timeout). ``torch_config`` gives Ray Train a backend that first sets
``GLOO_SOCKET_IFNAME`` on every worker to the interface that holds the worker's
Ray node address (the one the fleet reaches it at), unless the user set it. On a
one-machine cluster the node address is loopback and nothing changes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ray.train.torch import TorchConfig

from rayfleet._compat.ray import torch_backend

__all__ = ["torch_config", "interface_of", "pin_gloo_interface"]

_IFNAME = "GLOO_SOCKET_IFNAME"


def interface_of(ip: str) -> str | None:
    """The network interface that holds the IPv4/IPv6 address ``ip``, or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == ip:
                return name
    return None


def pin_gloo_interface() -> str | None:
    """In a training worker: gloo uses the interface of this node's Ray address. Returns it."""
    if os.environ.get(_IFNAME):
        return os.environ[_IFNAME]
    import ray

    name = interface_of(ray.util.get_node_ip_address())
    if name:
        os.environ[_IFNAME] = name
    return name


class _FleetTorchBackend(torch_backend()):
    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(pin_gloo_interface)
        super().on_start(worker_group, backend_config)


@dataclass
class _FleetTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _FleetTorchBackend


def torch_config(use_gpu: bool) -> TorchConfig:
    """Ray Train's TorchConfig (gloo on CPU, nccl on GPU) with gloo bound to the node's address."""
    return _FleetTorchConfig(backend="nccl" if use_gpu else "gloo")
