"""Mutual TLS for Ray's gRPC on a fleet (Ray's ``RAY_USE_TLS``): every connection between Ray's
processes (GCS, raylets, object managers, workers, dashboard agents, Ray Client) is encrypted, and
both ends show a certificate of the fleet's own CA, so a process without one can't join or call the GCS.

Made here with ``cryptography``, kept under the fleet's state dir (``fleets/NAME/tls/``, 0700)::

    ca.crt  ca.key                the fleet's CA (10 years)
    nodes/ADDRESS.crt|.key        one certificate per node (~13 months): its address, its name in
                                  fleet.yaml, 127.0.0.1 and localhost (Ray's processes on a node
                                  also talk over loopback)
    client.crt client.key         this machine's, for Ray Client (``rayfleet.Cluster.init``)

``ship`` puts a node's three files in ``~/.rayfleet/NAME/tls/`` on it (0600, dir 0700), over the
fleet's checked SSH; ``node_env`` is what every Ray process there gets. A certificate is reused while
it names the same addresses, comes from the current CA and has more than ``RENEW_BEFORE_DAYS`` left;
``rayfleet certs --renew`` issues new ones (and ``--new-ca`` a new CA); Ray reads them when it starts.
"""

from __future__ import annotations

import base64
import datetime
import io
import ipaddress
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rayfleet.config.fleet import FleetSpec, NodeSpec

__all__ = ["CertInfo", "tls_dir", "node_sans", "ensure_node_cert", "client_credentials", "node_env",
           "remote_dir", "ship", "inventory", "RENEW_BEFORE_DAYS"]

CA_DAYS = 3650
CERT_DAYS = 397
RENEW_BEFORE_DAYS = 30
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertInfo:
    name: str            # node address, or "client" / "CA"
    not_after: datetime.datetime
    sans: tuple[str, ...]

    @property
    def days_left(self) -> int:
        return (self.not_after - _now()).days


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def tls_dir(fleet_dir: Path) -> Path:
    d = fleet_dir / "tls"
    (d / "nodes").mkdir(parents=True, exist_ok=True, mode=0o700)
    d.chmod(0o700)
    return d


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(d: Path, fleet_name: str, *, new: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = d / "ca.crt", d / "ca.key"
    if crt.exists() and key.exists() and not new:
        return (x509.load_pem_x509_certificate(crt.read_bytes()),
                serialization.load_pem_private_key(key.read_bytes(), password=None))   # type: ignore[return-value]
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rayfleet CA of fleet {fleet_name}")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(k, hashes.SHA256()))
    _write(key, _key_pem(k), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, k


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted({str(v) for v in ext.get_values_for_type(x509.IPAddress)}
                        | set(ext.get_values_for_type(x509.DNSName))))


def node_sans(node: NodeSpec) -> list[str]:
    """What a node's certificate names: the address Ray knows it by, its name in fleet.yaml, loopback."""
    return sorted({node.address, node.host, *LOOPBACK})


def _issue(d: Path, fleet_name: str, stem: Path, sans: list[str], *, renew: bool) -> Path:
    """``stem``.crt/.key signed by the fleet's CA for ``sans``: the existing one when still good."""
    ca_cert, ca_key = _ca(d, fleet_name)
    crt, key = Path(f"{stem}.crt"), Path(f"{stem}.key")   # not with_suffix: a stem may be "10.0.0.5"
    if crt.exists() and key.exists() and not renew:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        left = cert.not_valid_after_utc - _now()
        if (cert.issuer == ca_cert.subject and _sans_of(cert) == tuple(sorted(set(sans)))
                and left > datetime.timedelta(days=RENEW_BEFORE_DAYS)):
            try:
                cert.verify_directly_issued_by(ca_cert)
                return crt
            except (ValueError, TypeError, InvalidSignature):   # signed by an older CA of the same name
                pass
    k = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
            .issuer_name(ca_cert.subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key, _key_pem(k), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt


def ensure_node_cert(fleet_dir: Path, fleet: FleetSpec, node: NodeSpec, *, renew: bool = False) -> Path:
    """The node's certificate (``.crt``; its key beside it as ``.key``), issued when missing or due."""
    d = tls_dir(fleet_dir)
    sans = node_sans(node)
    return _issue(d, fleet.name, d / "nodes" / node.address, [node.address] + [s for s in sans if s != node.address],
                  renew=renew)


def client_credentials(fleet_dir: Path, fleet_name: str):
    """gRPC channel credentials for Ray Client from this machine: the fleet's CA and a client certificate."""
    import grpc

    d = tls_dir(fleet_dir)
    crt = _issue(d, fleet_name, d / "client", ["rayfleet-client"], renew=False)
    return grpc.ssl_channel_credentials(root_certificates=(d / "ca.crt").read_bytes(),
                                        private_key=crt.with_suffix(".key").read_bytes(),
                                        certificate_chain=crt.read_bytes())


def new_ca(fleet_dir: Path, fleet_name: str) -> None:
    _ca(tls_dir(fleet_dir), fleet_name, new=True)


def remote_dir(fleet: FleetSpec) -> str:
    return f"~/.rayfleet/{fleet.name}/tls"


def node_env(fleet: FleetSpec) -> dict[str, str]:
    """Ray's TLS variables for every Ray process on a node ("~/" expanded there: node_start.py)."""
    d = remote_dir(fleet)
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": f"{d}/node.crt", "RAY_TLS_SERVER_KEY": f"{d}/node.key",
            "RAY_TLS_CA_CERT": f"{d}/ca.crt"}


def _bundle(ca: bytes, crt: bytes, key: bytes) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("ca.crt", ca), ("node.crt", crt), ("node.key", key)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode() + "\n"


def ship(fleet: FleetSpec, nodes: list[NodeSpec], fleet_dir: Path, known_hosts: Path | None,
         *, renew: bool = False) -> dict[str, str]:
    """Each node's certificate, its key and the CA into ``remote_dir`` on it (0600), in parallel, over the
    fleet's checked SSH. Returns the errors by node label."""
    from rayfleet.cluster.preflight import runner_for
    from rayfleet.cluster.ssh import SSHError

    d = tls_dir(fleet_dir)
    bundles = {}
    for n in nodes:   # issued one by one: they share the CA's files
        crt = ensure_node_cert(fleet_dir, fleet, n, renew=renew)
        bundles[n.label] = _bundle((d / "ca.crt").read_bytes(), crt.read_bytes(), crt.with_suffix(".key").read_bytes())
    target = shlex.quote(remote_dir(fleet).removeprefix("~/"))
    command = (f"umask 077; cd && mkdir -p {target} && chmod 700 .rayfleet .rayfleet/{shlex.quote(fleet.name)} {target}"
               f" && base64 -d | tar -x -o --no-same-permissions -C {target} -f - && chmod 600 {target}/*")

    def one(n: NodeSpec) -> str | None:
        try:
            r = runner_for(fleet, n, known_hosts).run(command, input=bundles[n.label], timeout_s=60)
        except SSHError as e:
            return e.message
        return None if r.ok else (r.stderr or r.stdout).strip()[-300:]

    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        return {n.label: e for n, e in zip(nodes, pool.map(one, nodes)) if e}


def inventory(fleet_dir: Path, fleet: FleetSpec) -> list[CertInfo]:
    """The CA's and every node's certificate as kept here (what ``rayfleet certs`` lists)."""
    d = tls_dir(fleet_dir)
    out = []
    for name, path in [("CA", d / "ca.crt"), *((n.label, d / "nodes" / f"{n.address}.crt") for n in fleet.nodes),
                       ("client", d / "client.crt")]:
        if path.exists():
            c = x509.load_pem_x509_certificate(path.read_bytes())
            out.append(CertInfo(name, c.not_valid_after_utc, _sans_of(c)))
    return out
