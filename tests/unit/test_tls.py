"""The fleet's CA and node certificates (cluster/tls.py): what they name, when they are reused or
renewed, and that they do what Ray's RAY_USE_TLS needs: a real gRPC server set up as Ray sets up its
own (``ray._common.tls_utils.add_port_to_grpc_server``) accepts a client with the fleet's certificate
and refuses one without any, or with another CA's."""

from __future__ import annotations

import os
import stat
from concurrent import futures

import grpc
import pytest

from rayfleet.cluster import tls
from rayfleet.cluster.launcher import node_plan
from rayfleet.config.fleet import FleetSpec

pytestmark = pytest.mark.unit


def _fleet(**security) -> FleetSpec:
    return FleetSpec.model_validate(dict(name="t", head={"host": "localhost"}, python="/opt/venv",
                                         workers=[{"host": "127.0.0.9"}], ssh={"user": "root", "key": "/k"},
                                         security=security))


def test_node_certificates_name_the_node_and_are_reused_until_renewed(tmp_path):
    fleet = _fleet()
    crt = tls.ensure_node_cert(tmp_path, fleet, fleet.head)
    assert crt.name == "127.0.0.1.crt"
    assert stat.S_IMODE(os.stat(crt.with_suffix(".key")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls" / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    before = crt.read_bytes()
    assert tls.ensure_node_cert(tmp_path, fleet, fleet.head).read_bytes() == before        # reused
    assert tls.ensure_node_cert(tmp_path, fleet, fleet.head, renew=True).read_bytes() != before
    tls.ensure_node_cert(tmp_path, fleet, fleet.workers[0])
    by_name = {c.name: c for c in tls.inventory(tmp_path, fleet)}
    assert set(by_name) == {"CA", "localhost (127.0.0.1)", "127.0.0.9"}
    assert by_name["localhost (127.0.0.1)"].sans == ("127.0.0.1", "localhost")
    assert by_name["127.0.0.9"].sans == ("127.0.0.1", "127.0.0.9", "localhost")
    assert 390 < by_name["127.0.0.9"].days_left <= 397 and by_name["CA"].days_left > 3600
    # a new CA: the node certificates of the old one are issued again
    old = (tmp_path / "tls" / "nodes" / "127.0.0.9.crt").read_bytes()
    tls.new_ca(tmp_path, fleet.name)
    assert tls.ensure_node_cert(tmp_path, fleet, fleet.workers[0]).read_bytes() != old


def test_every_ray_process_gets_the_tls_variables_unless_turned_off():
    env = node_plan(_fleet())["env"]
    assert env["RAY_USE_TLS"] == "1"
    assert env["RAY_TLS_SERVER_KEY"] == "~/.rayfleet/t/tls/node.key"   # node_start.py expands ~ on the node
    assert env["RAY_TLS_CA_CERT"] == "~/.rayfleet/t/tls/ca.crt"
    assert "RAY_USE_TLS" not in node_plan(_fleet(tls=False))["env"]


def _ping_server(crt, monkeypatch):
    """A gRPC server with one method (echo), made secure exactly as Ray makes its servers."""
    from ray._common.tls_utils import add_port_to_grpc_server

    monkeypatch.setenv("RAY_USE_TLS", "1")
    monkeypatch.setenv("RAY_TLS_SERVER_CERT", str(crt))
    monkeypatch.setenv("RAY_TLS_SERVER_KEY", str(crt.with_suffix(".key")))
    monkeypatch.setenv("RAY_TLS_CA_CERT", str(crt.parent.parent / "ca.crt"))
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Echo", {"Ping": handler})])
    port = add_port_to_grpc_server(server, "127.0.0.1:0")
    server.start()
    return server, port


def _ping(port: int, credentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) if credentials else \
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return ch.unary_unary("/t.Echo/Ping")(b"hello", timeout=5)


def test_only_a_client_with_the_fleets_certificate_gets_through(tmp_path, monkeypatch):
    fleet = _fleet()
    server, port = _ping_server(tls.ensure_node_cert(tmp_path / "a", fleet, fleet.head), monkeypatch)
    try:
        assert _ping(port, tls.client_credentials(tmp_path / "a", fleet.name)) == b"hello"
        with pytest.raises(grpc.RpcError):
            _ping(port, None)                                           # plain gRPC (RAY_USE_TLS unset)
        with pytest.raises(grpc.RpcError):
            _ping(port, tls.client_credentials(tmp_path / "other", fleet.name))   # another fleet's CA
        ca = (tmp_path / "a" / "tls" / "ca.crt").read_bytes()
        with pytest.raises(grpc.RpcError):
            _ping(port, grpc.ssl_channel_credentials(root_certificates=ca))       # the CA, no client certificate
    finally:
        server.stop(None)


def test_the_lan_probe_sees_a_tls_port_that_wants_a_certificate(tmp_path, monkeypatch):
    from rayfleet.testing.doors import probe

    fleet = _fleet()
    server, port = _ping_server(tls.ensure_node_cert(tmp_path, fleet, fleet.head), monkeypatch)
    try:
        assert probe("127.0.0.1", port) == ("TLS: client certificate required", False)
    finally:
        server.stop(None)
